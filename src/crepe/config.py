"""Every `crepe train` option, declared once, and the frozen configuration of a run.

Each field of `TrainConfig` carries its declaration (`Spec`: kind, choices,
bounds, help, whether it is a sweep grid axis). Which options a small-set
method reads is declared by the method (crepe.smallsets.methods: the
registry, which also holds the valid --method names). From
these declarations come `crepe train`'s parser (crepe.cli), the axes and fixed
settings of `crepe sweep` and the columns of `crepe report`. Adding an option
means adding one field here (plus its implementation and tests).

numpy-free and torch-free: bad input is reported before anything heavy is
imported or any file is written.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any

DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adam-bc": 1e-3}


USER = "user"  # config.json's dataset and model of a crepe.train run on a model and data of one's own


class UsageError(ValueError):
    """Bad input from a user: a flag, a value, a run folder that is not what it should be."""


def check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class Spec:
    """The declaration of one option."""

    help: str
    kind: str = "str"  # str | int | float | bool
    choices: tuple[str, ...] = ()
    low: float | None = None  # smallest allowed value
    low_open: bool = False  # True: low itself is not allowed
    high: float | None = None  # largest allowed value (inclusive)
    grid: bool = False  # a `crepe sweep` axis (several values, one run each)
    machine: bool = False  # not what it computes (where/how fast it runs, what it keeps): may change on resume
    flag: str = ""  # set by option(): --name-with-dashes
    no_flag: str = ""  # for booleans: the flag that turns the default off (e.g. --no-dp)
    dp_only: bool = False  # meaningless without DP: --no-dp refuses a non-default value
    solves: str = ""  # the option this one solves for (given together: refused)
    registry: bool = False  # its values are the names of a registry above config (the small-set methods)
    section: str = ""  # the --help group this option opens (the options declared after it belong to it)
    api: str = ""  # a value only crepe.train (Python) sets: a model or data of one's own; never parsed from text

    def describe_bounds(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        what = "an integer" if self.kind == "int" else "a finite number"
        return what + (" " + " and ".join(parts) if parts else "")

    def check(self, name: str, value: Any) -> None:
        """UsageError naming the option and the allowed values, or None."""
        flag = self.flag or name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise UsageError(f"{flag} must be true or false, got {value!r}")
            return
        if self.kind == "str":
            if self.choices and not (self.api and value == self.api):
                check_choice(name.lstrip("-").replace("_", " ").replace("-", " "), value, self.choices)
            elif not isinstance(value, str) or not value:
                raise UsageError(f"{flag} must be a non-empty string, got {value!r}")
            return
        ok = not isinstance(value, bool) and isinstance(value, int if self.kind == "int" else (int, float))
        ok = ok and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok:
            raise UsageError(f"{flag} must be {self.describe_bounds()}, got {value!r}")

    def parse(self, text: str) -> Any:
        """A value typed on a command line, converted and checked."""
        if self.kind == "int":
            try:
                value: Any = int(text)
            except ValueError:
                raise UsageError(f"{self.flag} must be an integer, got {text!r}") from None
        elif self.kind == "float":
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"{self.flag} must be a number, got {text!r}") from None
        else:
            value = text
            if self.api and value == self.api:
                raise UsageError(f"{self.flag} {value} is what crepe.train(...) in Python records for a model or data "
                                 f"of one's own; valid here: {', '.join(self.choices)}")
        self.check(self.flag, value)
        return value


def option(default: Any, help: str, **kw: Any) -> Any:
    """A TrainConfig field with its declaration."""
    return field(default=default, metadata={"spec": Spec(help=help, **kw)})


def spec(f: Field[Any]) -> Spec:
    s: Spec = f.metadata["spec"]
    flag = "--" + f.name.replace("_", "-")
    return replace(s, flag=s.no_flag or flag)


def options() -> dict[str, Spec]:
    """name -> declaration, in declaration order."""
    return {f.name: spec(f) for f in fields(TrainConfig)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Written to RUN_DIR/config.json.

    Fields given as None that depend on others are filled by `resolve()`
    (select_sigma, lr, sigma from target_epsilon); a config in a run folder is
    resolved, so a resumed run never re-solves anything.
    """

    # data
    dataset: str = option(
        "mnist", "dataset (its files in --data-dir, or torchvision's download); qmnist: MNIST's digits traced to their "
        "NIST writers, who are its users (k = 150 digits each); emnist-balanced: 47 classes, emnist-byclass: 62; "
        "cifar10: 3 x 32 x 32",
        choices=("mnist", "fashion-mnist", "qmnist", "kmnist", "emnist-balanced", "emnist-byclass", "cifar10"),
        grid=True, api=USER, section="data",
    )
    data_dir: str | None = option(
        None,
        "folder of the original IDX .gz files (or with a <dataset>/ subfolder); "
        "default: torchvision download into ~/.cache/crepe",
        machine=True,
    )
    train_subset: int | None = option(None, "use the first N training examples (default: all)", kind="int", low=1)
    test_subset: int | None = option(None, "use the first N test examples (default: all)", kind="int", low=1)
    # model
    model: str = option(
        "cnn", "classifier: the Opacus example CNN, a GroupNorm ResNet, the private-set paper's ConvNet, a linear "
        "model, Tramer & Boneh's small CNN for ScatterNet features or their CIFAR-10 CNN (all of them for any "
        "channels and image size)",
        choices=("cnn", "resnet", "convnet", "linear", "scatter-cnn", "cifar-cnn"), grid=True, api=USER, section="model",
    )
    features: str | None = option(
        None, "a fixed front end applied to every image before the model: scatternet (Kymatio's Scattering2D, J = 2, "
        "L = 8, as Tramer & Boneh 2021: 81 channels per image channel at 1/4 the size; no parameters, no data "
        "statistics, so no privacy cost)", choices=("scatternet",), grid=True,
    )
    norm_groups: int | None = option(
        None, "linear and scatter-cnn: normalise the input by GroupNorm with this many groups, no affine "
        "parameters (per example: no privacy cost; Tramer & Boneh: 27 for ScatterNet's 81 channels); default none",
        kind="int", low=1,
    )
    activation: str = option("relu", "activation of the model", choices=("relu", "tanh"), grid=True)
    # small training set
    method: str = option(
        "craig",
        "training set: a CRAIG coreset, a uniform random subset, all data, or synthetic images learned by DP "
        "gradient matching (private-set)",
        grid=True,
        registry=True,
        section="small training set (a flag the chosen --method does not read is refused)",
    )
    fraction: float = option(
        0.1, "coreset share of each class", kind="float", low=0, low_open=True, high=1, grid=True
    )
    proxy: str = option(
        "logits",
        "per-example gradient proxy for selection (last-layer: d = 330 for the CNN, slower selection)",
        choices=("logits", "last-layer"),
        grid=True,
    )
    weights: str = option(
        "clip-then-scale",
        "coreset weighting in DP-SGD",
        choices=("clip-then-scale", "weight-then-clip", "none"),
        grid=True,
    )
    selection_scope: str = option(
        "per-class",
        "per-class selection treats labels as public; global keeps them private",
        choices=("per-class", "global"),
        grid=True,
    )
    random_draw: str = option(
        "poisson",
        "random subsets: poisson (each example independently with probability --fraction, trained at "
        "q = B/(fraction n): epsilon amplified by the secret draw) or fixed (CRAIG's per-class budgets, "
        "q = B/|S|, no amplification)",
        choices=("poisson", "fixed"),
        grid=True,
    )
    select_every: int = option(
        20, "re-select the coreset (or redraw the random subset) every N epochs", kind="int", low=1, grid=True,
    )
    compute: str = option(
        "epochs",
        "budget of a small-set run: epochs (--epochs passes over the set) or steps (the optimiser steps of "
        "--epochs passes over all the data at the same batch size; --select-every scales with it)",
        choices=("epochs", "steps"),
        grid=True,
    )
    select_clip: float = option(
        1.0, "L2 clip of each proxy before noise (C_sel)", kind="float", low=0, low_open=True
    )
    select_sigma: float | None = option(
        None,
        "proxy noise multiplier sigma_sel (default: the training sigma; 0 = non-private selection, epsilon infinite)",
        kind="float",
        low=0,
    )
    select_share: float | None = option(
        None,
        "with --target-epsilon: the share of it that selection alone may spend (solves --select-sigma; "
        "the rest of the budget goes to training)",
        kind="float",
        low=0,
        low_open=True,
        high=0.99,
        grid=True,
        dp_only=True,
        solves="select_sigma",
    )
    images_per_class: int = option(
        10, "private-set: synthetic images per class (spc)", kind="int", low=1, grid=True
    )
    gen_iterations: int = option(30, "private-set: generation iterations (a fresh ConvNet each)", kind="int", low=1)
    gen_outer_loops: int = option(10, "private-set: outer loops per iteration (the ConvNet trains on the synthetic set between them)", kind="int", low=1)
    gen_batch_loops: int = option(
        1, "private-set: noisy real gradients per outer loop (the paper: 10); an iteration releases "
        "outer x batch loops of them", kind="int", low=1,
    )
    gen_lr_images: float = option(1.0, "private-set: SGD step size of the synthetic images", kind="float", low=0, low_open=True)
    gen_width: int = option(32, "private-set: channels of the matching ConvNet", kind="int", low=1)
    # schedule and optimiser
    epochs: int = option(50, "training epochs", kind="int", low=1, section="schedule and optimiser")
    batch_size: int = option(256, "expected (Poisson) batch size B; q = B/|S|", kind="int", low=1)
    optimizer: str = option("sgd", "base optimizer", choices=("sgd", "adam", "adam-bc"))
    lr: float | None = option(None, "learning rate (default: 0.1 for sgd, 1e-3 for adam and adam-bc)", kind="float", low=0, low_open=True)
    momentum: float = option(0.0, "SGD momentum", kind="float", low=0, high=0.999)
    # privacy
    dp: bool = option(True, "plain SGD, no clipping or noise (epsilon infinite)", kind="bool", grid=True, no_flag="--no-dp",
                      section="privacy")
    sigma: float | None = option(
        None,
        "DP-SGD noise multiplier (default 1.0 unless --target-epsilon solves it)",
        kind="float",
        low=0,
        grid=True,
        dp_only=True,
    )
    target_epsilon: float | None = option(
        None,
        "solve sigma (and sigma_sel, tied to it unless --select-sigma is given) so that the run ends at "
        "epsilon_total <= E, within 1%, per --target-unit",
        kind="float",
        low=0,
        low_open=True,
        grid=True,
        dp_only=True,
        solves="sigma",
    )
    target_unit: str | None = option(
        None, "what --target-epsilon is per: example, or user (an example-level run on data with users, calibrated "
        "to its group-privacy epsilon per user of at most --max-per-user examples: docs/privacy.md section 10); "
        "default: the run's --privacy-unit", choices=("example", "user"), grid=True, dp_only=True,
    )
    max_grad_norm: float = option(
        1.0, "per-example clip norm C (the initial C of adaptive clipping)", kind="float", low=0, low_open=True, dp_only=True
    )
    clipping: str = option(
        "flat",
        "clip rule: flat min(1, C/|g|); automatic C/(|g| + 0.01); adaptive: flat with C moved towards "
        "the --clip-quantile of gradient norms by a noisy, accounted count",
        choices=("flat", "automatic", "adaptive"),
        grid=True,
        dp_only=True,
    )
    clip_quantile: float = option(
        0.5, "adaptive clipping: target share of unclipped examples", kind="float", low=0, high=1, dp_only=True
    )
    clip_lr: float = option(0.2, "adaptive clipping: geometric step size of C", kind="float", low=0, low_open=True, dp_only=True)
    accountant: str = option(
        "pld",
        "privacy accountant: pld (privacy loss distributions, dp-accounting; tightest), rdp (Opacus RDP) or prv (Opacus PRV)",
        choices=("pld", "rdp", "prv"),
    )
    delta: float = option(1e-5, "delta of the reported epsilon", kind="float", low=0, low_open=True, high=0.5)
    noise: str = option(
        "secret",
        "where DP noise and sampling draw from: secret (an OS-drawn 256-bit key, never written; the generator "
        "states live only in an unfinished run's checkpoint) or reproducible (from --seed; epsilon then holds "
        "only if the seed stays secret)",
        choices=("secret", "reproducible"),
    )
    keep_secrets: bool = option(
        False,
        "keep checkpoint.pt whole when the run finishes (generator states, subset, label fingerprint) instead of "
        "reducing it to model, optimizer, config and ledger. Dangerous: anyone holding the file can replay all "
        "the DP noise, past and future, subtract it from the released updates and recover the clean gradients",
        kind="bool",
        machine=True,
    )
    # sparsity (DESIGN.md section 13)
    sparsity: float = option(
        0.0, "prune this fraction of the weights of every conv and linear layer by magnitude (0: dense); the pruned "
        "coordinates get no gradient and no noise and stay zero", kind="float", low=0, high=0.99, grid=True,
        section="sparsity (DESIGN.md section 13; docs/privacy.md section 13)",
    )
    prune_at: str = option(
        "init", "where the mask comes from: init (the initial weights: public), warmup (the DP-trained weights after "
        "--prune-warmup epochs: post-processing of the noisy releases) or iterative (from the DP-trained weights at "
        "the start of each epoch of a public cubic ramp from --prune-warmup to the sparsity, over half the epochs "
        "left; dp/pruning.py); no epsilon either way",
        choices=("init", "warmup", "iterative"), grid=True,
    )
    prune_warmup: int = option(1, "--prune-at warmup or iterative: dense DP epochs before the first mask is taken "
                               "(< --epochs)", kind="int", low=1)
    prune_scope: str = option("global", "one magnitude threshold over all prunable weights, or one per layer",
                              choices=("global", "layer"))
    # empirical audit (DESIGN.md section 14)
    audit_canaries: int | None = option(
        None, "audit this run in one go (Steinke, Nasr & Jagielski 2023): M canaries, each included with "
        "probability 1/2 from the secret generator, sampled at each step like an example; the run ends with a "
        "95% lower bound eps_lb on epsilon in audit.json, beside the accountant's epsilon (crepe audit RUN)",
        kind="int", low=1, dp_only=True, section="empirical audit (DESIGN.md section 14; docs/privacy.md section 12)",
    )
    audit: str = option(
        "white-box", "canaries: white-box (canary i adds C e_j to the clipped gradient sum before the noise, on its "
        "own coordinate j of the parameters; scored by the released noisy sums at j)", choices=("white-box",),
    )
    audit_guesses: int | None = option(
        None, "the auditor's guesses r <= M: 'included' for the ceil(r/2) highest scores, 'excluded' for the "
        "floor(r/2) lowest, no guess for the rest (default: M/2, at least 1)", kind="int", low=1,
    )
    # users (DESIGN.md section 11)
    privacy_unit: str = option(
        "example", "what epsilon protects: one example, or one user (everything a user contributes; needs users)",
        choices=("example", "user"), grid=True, section="users and user-level DP (DESIGN.md section 11)",
    )
    users: str | None = option(
        None, "where the users come from: synthetic writers of the training split (sizes, label skew and a style per "
        "user; --user-count, --user-alpha, --user-size-sigma, --user-seed); default: none (crepe.train takes user_ids)",
        choices=("synthetic",),
    )
    user_count: int = option(1000, "synthetic writers: the number of users U", kind="int", low=1, grid=True)
    user_alpha: float = option(10.0, "synthetic writers: Dirichlet concentration of label skew (smaller: more skewed)",
                               kind="float", low=0, low_open=True)
    user_size_sigma: float = option(0.5, "synthetic writers: log-normal sigma of user sizes (mean n/U)", kind="float", low=0)
    user_seed: int = option(0, "synthetic writers: seed of the split (a data simulation, public)", kind="int", low=0)
    max_per_user: int | None = option(
        None, "the public maximum k of examples per user (default for synthetic writers: 2 ceil(n/U)); example-level "
        "runs also report a user-level epsilon for it by group privacy", kind="int", low=1,
    )
    algorithm: str = option(
        "dp-sgd", "user-level trainer: dp-sgd (each sampled user's mean gradient clipped), dp-fedavg (McMahan et al. "
        "2018: local epochs, the model delta clipped) or dp-fedemb (Xu et al. 2022: virtual clients of "
        "--virtual-client-size users, a local head, only the backbone delta clipped)",
        choices=("dp-sgd", "dp-fedavg", "dp-fedemb"), grid=True,
    )
    users_per_round: int = option(100, "expected users per round (Poisson, q = users per round / U)", kind="int", low=1, grid=True)
    local_epochs: int = option(1, "dp-fedavg, dp-fedemb: local epochs per round", kind="int", low=1, grid=True)
    local_lr: float = option(0.05, "dp-fedavg, dp-fedemb: local SGD step size (the server's is --lr)", kind="float",
                             low=0, low_open=True)
    local_batch_size: int = option(16, "dp-fedavg, dp-fedemb: local minibatch size", kind="int", low=1)
    local_momentum: float = option(0.0, "dp-fedavg, dp-fedemb: local SGD momentum (heavy ball, as torch.optim.SGD; "
                                   "the published FedEmb run: 0.9); it starts at 0 every round", kind="float", low=0,
                                   high=0.999)
    max_local_steps: int | None = option(None, "dp-fedavg, dp-fedemb: at most this many local steps per round",
                                         kind="int", low=1)
    head_lr_scale: float = option(100.0, "dp-fedemb: the local head's step size over --local-lr (published: 100)",
                                  kind="float", low=0, low_open=True)
    head_warm_steps: int = option(0, "dp-fedemb: local steps at the start of each round that train the fresh head "
                                  "alone, the backbone frozen", kind="int", low=0)
    virtual_client_size: int = option(
        1, "dp-fedemb: users per virtual client K (K > 1 doubles the per-user sensitivity to 2C)", kind="int", low=1,
        grid=True,
    )
    pretrain: str | None = option(
        None, "pretrain the model without privacy on this dataset, declared public (its training split; never the "
        "private --dataset), before private training; its provenance is recorded beside epsilon",
        choices=("mnist", "fashion-mnist"), grid=True,
    )
    pretrain_epochs: int = option(1, "--pretrain: epochs of plain SGD on the public data", kind="int", low=1)
    pretrain_lr: float = option(0.05, "--pretrain: SGD step size (momentum 0.9, batches of 128)", kind="float",
                                low=0, low_open=True)
    held_out_classes: int = option(
        0, "hold the last N classes out of training and evaluate embeddings on their test examples (pair recall at "
        "FAR 1e-3 and 0.1, 1-NN)", kind="int", low=0, high=9,
    )
    seed: int = option(0, "seed of model initialisation (and, with --noise reproducible, of the noise)", kind="int", low=0, grid=True,
                       section="run")
    diagnostics: bool = option(
        False,
        "per-epoch clipping diagnostics on a fixed probe of training examples (analysis outputs, not covered by epsilon)",
        kind="bool",
        dp_only=True,
    )
    preset: str | None = option(None, "start from a named recipe (their settings are listed at the end of this help); flags given override it", choices=("seed-protocol", "dp-recipe", "scatternet-linear", "scatternet-cnn"))
    threads: int | None = option(None, "torch and selection threads (default: torch's)", kind="int", low=1, machine=True)
    eval_every: int = option(
        1, "test accuracy every N epochs and after the last (long runs on small sets: evaluation dominates)",
        kind="int", low=1, machine=True,
    )

    def __post_init__(self) -> None:
        for name, s in options().items():
            value = getattr(self, name)
            if value is not None or default(name) is not None:
                s.check(name, value)
        if self.dp and self.sigma == 0:
            raise UsageError("--sigma must be > 0 with DP on, got 0 (use --no-dp for non-private training)")
        if self.select_share is not None and self.target_epsilon is None:
            raise UsageError("--select-share is a share of --target-epsilon: give both")
        if self.target_unit is not None and self.target_epsilon is None:
            raise UsageError("--target-unit says what --target-epsilon is per: give both")
        if self.target_unit == "example" and self.privacy_unit == "user":
            raise UsageError("--target-unit example with --privacy-unit user: a user-level run's epsilon is per user; "
                             "allowed: --target-unit user (or leave it out)")
        adaptive_only = ("clip_quantile", "clip_lr")
        if self.clipping != "adaptive" and any(getattr(self, k) != default(k) for k in adaptive_only):
            raise UsageError("--clip-quantile and --clip-lr apply to --clipping adaptive only")
        self._check_users()
        self._check_sparsity()
        self._check_audit()
        if self.momentum and self.optimizer != "sgd":
            raise UsageError(f"--momentum applies to --optimizer sgd only, not {self.optimizer}")
        if not self.dp:
            for name, s in options().items():
                value = getattr(self, name)
                if s.dp_only and value != default(name) and not (name == "sigma" and value == 0.0):
                    shown = "" if isinstance(value, bool) else f" {value}"
                    raise UsageError(f"{s.flag}{shown} needs DP training (--no-dp adds no noise); drop one of them")

    def _check_users(self) -> None:
        """Options of users and user-level trainers only where they apply."""
        def given(names: tuple[str, ...]) -> list[str]:
            return [options()[k].flag for k in names if getattr(self, k) != default(k)]

        rules = (
            (self.users == "synthetic", SYNTHETIC_ONLY, "--users synthetic"),
            (self.privacy_unit == "user", USER_LEVEL_ONLY, "--privacy-unit user"),
            (self.algorithm in ("dp-fedavg", "dp-fedemb"), LOCAL_ONLY, "--algorithm dp-fedavg or dp-fedemb"),
            (self.algorithm == "dp-fedemb", FEDEMB_ONLY, "--algorithm dp-fedemb"),
            (self.pretrain is not None, PRETRAIN_ONLY, "--pretrain"),
        )
        if self.pretrain is not None and (self.pretrain == self.dataset or {self.pretrain, self.dataset} == {"mnist", "qmnist"}):
            raise UsageError(f"--pretrain {self.pretrain} holds the images of the private --dataset {self.dataset}: "
                             "public pretraining needs another dataset")
        if self.norm_groups is not None and self.model not in NORMALISED:
            raise UsageError(f"--norm-groups applies to --model {' or '.join(NORMALISED)} only, not {self.model}")
        if self.features is not None and (self.method == "private-set" or self.pretrain is not None):
            what = "--method private-set (its synthetic images)" if self.method == "private-set" else "--pretrain"
            raise UsageError(f"--features {self.features} with {what} is not supported: train on images without "
                             "--features, or drop it")
        if self.dataset == "qmnist" and self.users is not None:
            raise UsageError(f"--users {self.users} with --dataset qmnist: QMNIST's users are its writers already")
        for applies, names, where in rules:
            if not applies and given(names):
                flags = given(names)
                raise UsageError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} to {where} only")
        if self.privacy_unit == "user":
            if self.clipping != "flat" or self.diagnostics:
                raise UsageError("--privacy-unit user clips each user's update flat: --clipping and --diagnostics "
                                 "do not apply")

    def _check_sparsity(self) -> None:
        """Pruning options only with a sparsity, a warm-up inside the run, and only where masks are built."""
        if self.sparsity == 0:
            extra = [options()[k].flag for k in PRUNE_ONLY if getattr(self, k) != default(k)]
            if extra:
                raise UsageError(f"{', '.join(extra)} {'applies' if len(extra) == 1 else 'apply'} to --sparsity > 0 only")
            return
        if self.prune_at == "init" and self.prune_warmup != default("prune_warmup"):
            raise UsageError("--prune-warmup applies to --prune-at warmup or iterative only")
        if self.prune_at != "init" and self.prune_warmup >= self.epochs:
            raise UsageError(f"--prune-warmup {self.prune_warmup} is not shorter than the run's --epochs {self.epochs}: "
                             f"allowed 1..{self.epochs - 1}")
        for applies, what in ((self.privacy_unit == "user", "--privacy-unit user"),
                              (self.audit_canaries is not None, "--audit-canaries (a canary's coordinate may be pruned)"),
                              (self.method == "private-set", "--method private-set")):
            if applies:
                raise UsageError(f"--sparsity with {what} is not supported")

    def _check_audit(self) -> None:
        """The audit's options only with canaries, r <= M, and only where its game is defined."""
        m = self.audit_canaries
        if m is None:
            extra = [options()[k].flag for k in AUDIT_ONLY if getattr(self, k) != default(k)]
            if extra:
                raise UsageError(f"{', '.join(extra)} {'applies' if len(extra) == 1 else 'apply'} to "
                                 "--audit-canaries only")
            return
        if self.audit_guesses is not None and self.audit_guesses > m:
            raise UsageError(f"--audit-guesses {self.audit_guesses} is more than the {m} canaries of "
                             f"--audit-canaries: the auditor guesses about canaries, at most one guess each")

    @property
    def guesses(self) -> int:
        """The audit's r: --audit-guesses, or M/2 (at least 1)."""
        assert self.audit_canaries is not None
        return self.audit_guesses if self.audit_guesses is not None else max(1, self.audit_canaries // 2)

    def resolve(self) -> TrainConfig:
        """Fill the defaults that depend on other fields, except sigma from a target epsilon
        (crepe.privacy.calibration does that: it needs the data's class sizes)."""
        sigma = self.sigma
        if sigma is None:
            sigma = (1.0 if self.target_epsilon is None else None) if self.dp else 0.0
        sel = self.select_sigma
        if sel is None and sigma is not None:
            sel = float(sigma) if self.dp else 0.0
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        return replace(self, sigma=sigma, select_sigma=sel, lr=float(lr))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (machine fields removed)."""
        return {k: v for k, v in self.to_dict().items() if not options()[k].machine}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"config has unknown fields {unknown}; valid: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_flags(cls, given: dict[str, Any]) -> TrainConfig:
        """The config of the flags a user gave, on top of their --preset (if any)."""
        for name, s in options().items():
            if s.solves and given.get(name) is not None and given.get(s.solves) is not None:
                raise UsageError(f"{s.flag} solves --{s.solves.replace('_', '-')}: give one of them, not both")
        name = given.get("preset")
        base = dict(preset_values(name, given.get("dataset", default("dataset")))) if name else {}
        if not given.get("dp", True):  # a non-private run keeps none of the preset's DP settings
            base = {k: v for k, v in base.items() if not options()[k].dp_only}
        if given.get("optimizer", base.get("optimizer", "sgd")) != base.get("optimizer", "sgd"):
            for k in ("momentum", "lr"):  # the preset's step rule belongs to its optimizer
                base.pop(k, None)
        base.update(given)
        return cls(**base)


SYNTHETIC_ONLY = ("user_count", "user_alpha", "user_size_sigma", "user_seed")
USER_LEVEL_ONLY = ("algorithm", "users_per_round")
LOCAL_ONLY = ("local_epochs", "local_lr", "local_batch_size", "local_momentum", "max_local_steps")
FEDEMB_ONLY = ("head_lr_scale", "head_warm_steps", "virtual_client_size")
PRETRAIN_ONLY = ("pretrain_epochs", "pretrain_lr")
PRUNE_ONLY = ("prune_at", "prune_warmup", "prune_scope")
NORMALISED = ("linear", "scatter-cnn")  # the models that take --norm-groups
AUDIT_ONLY = ("audit", "audit_guesses")


def default(name: str) -> Any:
    """An option's declared default (None where it is resolved from others)."""
    f = TrainConfig.__dataclass_fields__[name]
    return None if f.default is MISSING else f.default


# Named starting points for `crepe train --preset`. Values that depend on the
# dataset are given per dataset.
PRESETS: dict[str, dict[str, Any]] = {
    # The seed's protocol (DESIGN.md section 3): 50 epochs, 10% re-selected every 20, C = 1, B = 256.
    "seed-protocol": {
        "activation": "relu", "epochs": 50, "select_every": 20, "fraction": 0.1, "max_grad_norm": 1.0,
        "batch_size": 256, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0,
    },
    # Tramer & Boneh (2021) small-CNN recipe (DESIGN.md section 7): tanh, momentum 0.9, C = 0.1, 40 epochs,
    # large batches. The published sigma comes from --target-epsilon (3 in the paper).
    "dp-recipe": {
        "activation": "tanh", "epochs": 40, "max_grad_norm": 0.1, "optimizer": "sgd", "momentum": 0.9,
        "by_dataset": {"mnist": {"batch_size": 512, "lr": 0.5}, "fashion-mnist": {"batch_size": 2048, "lr": 4.0},
                       # their CIFAR-10 end-to-end CNN (cnns.py --dataset=cifar10): B 1024, lr 1, 30 epochs
                       "cifar10": {"model": "cifar-cnn", "batch_size": 1024, "lr": 1.0, "epochs": 30}},
    },
    # Tramer & Boneh (2021), ScatterNet + linear (ftramer/Handcrafted-DP README, baselines.py): GroupNorm of 27
    # groups over the 81 ScatterNet channels, C = 0.1, momentum 0.9, 40 epochs. (Their MNIST row normalises by
    # noised data statistics, which crepe does not build: GroupNorm there too.)
    "scatternet-linear": {
        "features": "scatternet", "model": "linear", "norm_groups": 27, "epochs": 40, "max_grad_norm": 0.1,
        "optimizer": "sgd", "momentum": 0.9,
        "by_dataset": {"mnist": {"batch_size": 4096, "lr": 8.0}, "fashion-mnist": {"batch_size": 8192, "lr": 16.0}},
    },
    # Tramer & Boneh (2021), ScatterNet + CNN (their cnns.py --use_scattering): tanh, the same normalisation.
    "scatternet-cnn": {
        "features": "scatternet", "model": "scatter-cnn", "norm_groups": 27, "activation": "tanh", "epochs": 40,
        "max_grad_norm": 0.1, "optimizer": "sgd", "momentum": 0.9,
        "by_dataset": {"mnist": {"batch_size": 1024, "lr": 1.0}, "fashion-mnist": {"batch_size": 2048, "lr": 4.0}},
    },
}


def preset_values(name: str, dataset: str) -> dict[str, Any]:
    check_choice("preset", name, tuple(PRESETS))
    values = {k: v for k, v in PRESETS[name].items() if k != "by_dataset"}
    values.update(PRESETS[name].get("by_dataset", {}).get(dataset, {}))
    values["preset"] = name
    return values
