"""The frozen configuration of one `crepe train` run, with its closed option sets.

numpy-free and torch-free: the CLI validates a configuration (and reports bad
input) before anything heavy is imported or any file is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Closed option sets. Every name a user can type is listed here; an unknown one
# raises ValueError listing the valid names (no free-form strings).
DATASETS = ("mnist", "fashion-mnist")
MODELS = ("cnn", "resnet")
PROXIES = ("logits", "last-layer")
METHODS = ("craig", "random", "full")
OPTIMIZERS = ("sgd", "adam")
WEIGHTINGS = ("clip-then-scale", "weight-then-clip", "none")
ACCOUNTANTS = ("rdp", "prv")
SCOPES = ("per-class", "global")

DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}

# Fields that do not change what a run computes: they may differ on --resume
# and are ignored when deciding whether an existing --out folder is "the same run".
MACHINE_FIELDS = ("data_dir", "threads")


def check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _positive_int(name: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Written to RUN_DIR/config.json.

    `select_sigma` and `lr` may be given as None and are resolved by
    `resolve()` (select_sigma: the training sigma, or 0 under --no-dp;
    lr: 0.1 for sgd, 1e-3 for adam); a config in a run folder is resolved.
    """

    dataset: str = "mnist"
    data_dir: str | None = None  # folder of IDX .gz files; None: torchvision download cache
    train_subset: int | None = None  # first N training examples (None: all)
    test_subset: int | None = None  # first N test examples (None: all)
    model: str = "cnn"
    proxy: str = "logits"
    select_clip: float = 1.0  # C_sel: proxies clipped to this L2 norm before noise
    select_sigma: float | None = None  # sigma_sel: proxy noise std = sigma_sel * C_sel
    method: str = "craig"
    fraction: float = 0.1
    select_every: int = 20  # re-select at epochs 0, k, 2k, ...
    epochs: int = 50
    dp: bool = True  # False: plain SGD (--no-dp), epsilon infinite
    sigma: float = 1.0  # DP-SGD noise multiplier
    max_grad_norm: float = 1.0  # C
    batch_size: int = 256  # expected (Poisson) batch size B
    lr: float | None = None
    optimizer: str = "sgd"
    weights: str = "clip-then-scale"
    accountant: str = "rdp"
    delta: float = 1e-5
    selection_scope: str = "per-class"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, MODELS)
        check_choice("proxy", self.proxy, PROXIES)
        check_choice("method", self.method, METHODS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("weights", self.weights, WEIGHTINGS)
        check_choice("accountant", self.accountant, ACCOUNTANTS)
        check_choice("selection scope", self.selection_scope, SCOPES)
        _positive_int("train_subset", self.train_subset, optional=True)
        _positive_int("test_subset", self.test_subset, optional=True)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("threads", self.threads, optional=True)
        if isinstance(self.select_every, bool) or not isinstance(self.select_every, int) or self.select_every < 1:
            raise ValueError(f"--select-every must be an integer >= 1, got {self.select_every!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.fraction, (int, float)) or isinstance(self.fraction, bool) or not (
            0.0 < self.fraction <= 1.0
        ):
            raise ValueError(f"--fraction must lie in (0, 1], got {self.fraction!r}")
        _positive("max_grad_norm", self.max_grad_norm)
        _positive("select_clip", self.select_clip)
        if self.select_sigma is not None:
            _positive("select_sigma", self.select_sigma, allow_zero=True)
        if self.lr is not None:
            _positive("lr", self.lr)
        if not isinstance(self.delta, (int, float)) or not (0.0 < self.delta < 1.0):
            raise ValueError(f"--delta must lie in (0, 1), got {self.delta!r}")
        if not isinstance(self.dp, bool):
            raise ValueError(f"dp must be a bool, got {self.dp!r}")
        if self.dp:
            if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (
                math.isfinite(self.sigma) and self.sigma > 0
            ):
                raise ValueError(
                    f"--sigma must be a finite number > 0 with DP on, got {self.sigma!r} "
                    "(use --no-dp for non-private training)"
                )
        else:
            _positive("sigma", self.sigma, allow_zero=True)

    def resolve(self) -> TrainConfig:
        """Fill the defaults that depend on other fields."""
        sel = self.select_sigma
        if sel is None:
            sel = float(self.sigma) if self.dp else 0.0
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        return replace(self, select_sigma=float(sel), lr=float(lr))

    @property
    def private_selection(self) -> bool:
        """True when the selection round is a Gaussian mechanism (craig with sigma_sel > 0)."""
        return self.method != "craig" or bool(self.select_sigma and self.select_sigma > 0)

    @property
    def labels_public(self) -> bool:
        """Per-class selection reads the true labels and class sizes without noise."""
        return self.method != "full" and self.selection_scope == "per-class"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (machine fields removed)."""
        d = self.to_dict()
        for k in MACHINE_FIELDS:
            d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; valid: {sorted(names)}")
        return cls(**d)
