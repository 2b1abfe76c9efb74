"""The study's view of `crepe train`'s options, derived from their declarations in crepe.config.

- grid axes: the options declared `grid=True` (several values in a sweep, one
  run each; rows and columns of a report), with `dp` replaced by the sweep's
  `privacy` axis (dp and/or nodp);
- fixed settings: every other option that is not a machine setting (one value
  for a whole sweep; must agree across the runs of a report);
- unused settings: a method ignores the options of other methods' groups
  (crepe.smallsets.methods: each method declares the options it reads), and
  a non-private run ignores the DP-only ones (NODP_UNUSED).

Nothing here names an ordinary option: adding one to TrainConfig adds it to the
sweep and the report. Computed on each call (options() is cheap), so that the
declarations are read where they live. torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from crepe import config
from crepe.config import Spec, UsageError
from crepe.smallsets import methods

REPLICATE = "seed"  # the grid option a report averages over (spelled --seeds in a sweep)
PRIVACY = "privacy"  # the sweep's axis in place of the boolean `dp`: dp and/or nodp
# DP-only options (declared `dp_only`): `crepe train --no-dp` refuses them, so a
# non-private run drops them and a report ignores them for non-private runs.
NODP_UNUSED = tuple(n for n, s in config.options().items() if s.dp_only)
# An option that solves another (declared `solves`; both given are refused): a sweep uses one axis or the other.
SOLVES = {n: s.solves for n, s in config.options().items() if s.solves}
# Flags of `crepe sweep` itself; an option of the same name gets the flag --train-NAME.
SWEEP_FLAGS = ("out", "preset", "data-dir", "jobs", "threads", "executor", "scheduler", "extend", "dry-run")

PRIVACY_SPEC = Spec(
    help="dp (DP-SGD) and/or nodp (non-private reference: one run per other setting, no sigma/target-epsilon/clipping)",
    choices=("dp", "nodp"),
    grid=True,
)


@dataclass(frozen=True)
class Setting:
    """One option as `crepe sweep` sees it."""

    key: str  # name in sweep.json and run names: the train flag without "--" (or "privacy")
    name: str  # TrainConfig field ("dp" for privacy)
    spec: Spec  # its declaration, with .flag set to the sweep's flag

    @property
    def train_flag(self) -> str:
        return config.options()[self.name].flag


def _setting(name: str, s: Spec) -> Setting:
    key = name.replace("_", "-")
    if name == "dp":
        return Setting(PRIVACY, name, replace(PRIVACY_SPEC, flag="--" + PRIVACY))
    if s.grid:
        flag = "--seeds" if name == REPLICATE else "--" + key
    else:
        key = "train-" + key if key in SWEEP_FLAGS else key
        flag = s.no_flag or "--" + key
    return Setting(key, name, replace(s, flag=flag))


def axes() -> dict[str, Setting]:
    """The sweep's grid axes, key -> Setting, in declaration order."""
    return {st.key: st for st in (_setting(n, s) for n, s in methods.declared().items() if s.grid)}


def fixed() -> dict[str, Setting]:
    """The sweep's fixed settings (non-grid, non-machine options), key -> Setting."""
    return {st.key: st for st in (_setting(n, s) for n, s in methods.declared().items() if not s.grid and not s.machine)}


def settings() -> dict[str, Setting]:
    """Every option a sweep sets, key -> Setting: the grid axes, then the fixed settings."""
    return {**axes(), **fixed()}


def report_axes() -> tuple[str, ...]:
    """Option names that make rows of a report: the grid options but the replicate."""
    return tuple(n for n, s in config.options().items() if s.grid and n != REPLICATE)


def machine() -> tuple[str, ...]:
    return tuple(n for n, s in config.options().items() if s.machine)


def unused(name: str, *, method: Any, dp: Any) -> bool:
    """True when a run of this method and privacy does not depend on option `name`."""
    ignored = method in methods.names() and name in config.options() and methods.ignores(method, name)
    return ignored or (not dp and name in NODP_UNUSED)


def _user_rules(c: dict[str, Any]) -> tuple[tuple[tuple[str, ...], bool], ...]:
    """(options, whether a run with config c uses them): TrainConfig._check_users' rules (it refuses
    those options changed where they do not apply, so a run that does not use one has its default),
    plus the minibatch size B, which a user-level run does not read (it samples users: users_per_round),
    and --users, which QMNIST refuses (its writers are its users)."""
    user, algorithm = c.get("privacy_unit") == "user", c.get("algorithm")
    return (
        (config.SYNTHETIC_ONLY, c.get("users") == "synthetic"),
        (config.USER_LEVEL_ONLY, user),
        (config.LOCAL_ONLY, user and algorithm in ("dp-fedavg", "dp-fedemb")),
        (config.FEDEMB_ONLY, user and algorithm == "dp-fedemb"),
        (config.PRETRAIN_ONLY, c.get("pretrain") is not None),
        (("batch_size",), not user),
        (("users",), c.get("dataset") != "qmnist"),
    )


def user_unused(name: str, c: dict[str, Any]) -> bool:
    """True when a run with config c does not depend on option `name` by its users, privacy unit,
    algorithm or pretraining (_user_rules). A user-level report reads this beside `unused`."""
    return any(name in names and not applies for names, applies in _user_rules(c))


default = config.default


def parse(st: Setting, value: Any) -> Any:
    """A value for a setting, given as text (command line) or typed (sweep.json), checked; UsageError if bad."""
    s = st.spec
    if isinstance(value, str):
        if s.kind != "bool":
            return s.parse(value)
        value = {"true": True, "false": False}.get(value.lower(), value)
    elif s.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    s.check(s.flag, value)
    return value


def train_args(st: Setting, value: Any) -> list[str]:
    """The `crepe train` flags that set this option to `value`."""
    if st.name == "dp":
        return [] if value == "dp" else [config.options()["dp"].flag]
    if st.spec.kind == "bool":  # a switch: its flag turns the default over
        return [st.train_flag] if value != default(st.name) else []
    return [st.train_flag, fmt(value)]


def fmt(value: Any) -> str:
    """A value as text: short for floats, never rounded."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def run_config(given: dict[str, Any], where: str) -> config.TrainConfig:
    """The TrainConfig `crepe train` would build from these options: refuses what it would refuse."""
    try:
        return config.TrainConfig.from_flags(given)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
