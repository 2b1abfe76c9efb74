"""A sweep's plan: its grid and fixed settings expanded into named runs, and the plan's record.

The options come from their declarations (crepe.config, via crepe.study.grid):
every grid option is an axis (several values), every other option a fixed
setting (one value). make_plan expands a grid, over DEFAULT_GRID or a preset,
into one RunSpec per combination (its run directory name and `crepe train`
flags), checking each as `crepe train` would. A sweep directory records its plan
in SWEEP_DIR/sweep.json (the manifest, written by crepe.study.runner): the
manifest fixes the grid, and --extend merges a new grid into it (merge_plans),
adding runs only. torch-free.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crepe.config import UsageError, check_choice
from crepe.study import grid as opts
from crepe.study.grid import PRIVACY, REPLICATE, SOLVES, fmt
from crepe.training import rundir

MANIFEST = "sweep.json"
TARGET = "target_epsilon"  # the option that calibrates a run's sigma: such a run may be unreachable

# The axes every run name shows, in this order; other axes appear only when the
# sweep gives them more than one value (and the run uses them).
NAME_AXES = ("dataset", "model", "method", PRIVACY, REPLICATE)

DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "dataset": ("mnist",),
    "model": ("cnn",),
    "method": ("full", "random", "craig"),
    PRIVACY: ("dp",),
    "sigma": (1.0,),
    REPLICATE: (0,),
}

PRESETS: dict[str, dict[str, Any]] = {
    # The seed's protocol (DESIGN.md section 3).
    "paper": {
        "about": "the seed's protocol: MNIST; cnn and resnet; full, random, craig; DP at sigma 1, 3, 5 and "
        "non-DP; 3 seeds; 50 epochs, a 10% coreset re-selected every 20. Hours on 2 cores (its CNN half "
        "with 2 seeds took 19 min with --jobs 2 on the offline 8,000-image MNIST split; ResNet runs cost ~4x)",
        "grid": {
            "dataset": ("mnist",),
            "model": ("cnn", "resnet"),
            "method": ("full", "random", "craig"),
            PRIVACY: ("dp", "nodp"),
            "sigma": (1.0, 3.0, 5.0),
            REPLICATE: (0, 1, 2),
        },
        "fixed": {"epochs": 50, "max-grad-norm": 1.0, "delta": 1e-5},
        "grid_fixed": {"fraction": (0.1,), "select-every": (20,)},
    },
    # The same study scaled to about 15 minutes on 2 idle CPU cores (measured in
    # docs/results.md).
    "quick": {
        "about": "the paper's study made small: full Fashion-MNIST (60,000 / 10,000), cnn; full, random, "
        "craig; DP at sigma 1 and 3 and non-DP; 2 seeds; 4 epochs, a 10% coreset re-selected every 2. "
        "About 12-15 min on 2 cores with --jobs 2 (docs/results.md)",
        "grid": {
            "dataset": ("fashion-mnist",),
            "model": ("cnn",),
            "method": ("full", "random", "craig"),
            PRIVACY: ("dp", "nodp"),
            "sigma": (1.0, 3.0),
            REPLICATE: (0, 1),
        },
        "fixed": {"epochs": 4, "max-grad-norm": 1.0, "delta": 1e-5},
        "grid_fixed": {"fraction": (0.1,), "select-every": (2,)},
    },
}


# ---------------------------------------------------------------------------
# The plan: grid -> named run specifications.


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the sweep: its directory name and `crepe train` flags."""

    name: str
    settings: tuple[tuple[str, Any], ...]  # (key, value): grid axes then fixed settings

    def train_args(self) -> list[str]:
        """The `crepe train` flags of this run (without --out, --data-dir, --threads)."""
        known = opts.settings()
        return [a for key, value in self.settings for a in opts.train_args(known[key], value)]

    def given(self) -> dict[str, Any]:
        """This run's options as `crepe train` receives them: TrainConfig field -> value."""
        known = opts.settings()
        return {known[k].name: (v == "dp" if k == PRIVACY else v) for k, v in self.settings}

    @property
    def target(self) -> float | None:
        """The target epsilon this run is calibrated to, if any."""
        value: float | None = self.given().get(TARGET)
        return value

    def cost(self) -> float:
        """A rough relative cost, to start the longest runs first."""
        v = dict(self.settings)
        per_example = 4.0 if v.get("model") == "resnet" else 1.0
        method = v.get("method")
        # --compute steps: a small set trains the optimiser steps of the full run (its share of the data is 1)
        trained = 1.0 if v.get("compute") == "steps" else float(v.get("fraction", 0.1))
        # private-set: generation (per-example gradients of a ConvNet on Poisson batches) ~ a full epoch or two
        share = 1.0 if method == "full" else 2.0 if method == "private-set" else trained + 0.05
        dp = 1.5 if v.get(PRIVACY) == "dp" else 1.0
        return per_example * share * dp


@dataclass(frozen=True)
class Plan:
    """A validated sweep: the grid, the fixed settings, and the runs they make."""

    grid: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any]
    preset: str | None = None
    runs: tuple[RunSpec, ...] = field(default=())

    def identity(self) -> dict[str, Any]:
        """What must match between two invocations on one sweep directory."""
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "fixed": dict(self.fixed)}


def _solving_axes() -> list[tuple[str, str]]:
    """(solver, solved) sweep keys where one grid option solves another grid option (target
    epsilon -> sigma): a sweep has one axis or the other. A solver whose solved option is a fixed
    setting (select share -> select sigma) is an ordinary axis; `crepe train` refuses both given."""
    keys = {st.name: k for k, st in opts.axes().items()}
    return [(keys[a], keys[b]) for a, b in SOLVES.items() if a in keys and b in keys]


def _name(values: dict[str, Any], grid: dict[str, tuple[Any, ...]], unused: set[str]) -> str:
    parts = [str(values[k]) for k in NAME_AXES[:3]]
    (target, sigma), = _solving_axes()  # shown as the privacy part
    if values[PRIVACY] == "nodp":
        parts.append("nodp")
    elif target in values:
        parts.append(f"eps{fmt(values[target])}")
    else:
        parts.append(f"sigma{fmt(values[sigma])}" if sigma in values else "dp")
    for key in grid:
        if key in NAME_AXES or key in (target, sigma) or len(grid[key]) < 2 or key in unused:
            continue
        parts.append(f"{key}{fmt(values[key])}")
    # seed last reads better: dataset_model_method_sigma1_[extras_]seed0
    return "_".join(parts + [f"seed{values[REPLICATE]}"])


def parse_values(key: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """Parse and validate the values of one grid axis; UsageError names the flag."""
    axes = opts.axes()
    if key not in axes:
        raise UsageError(f"unknown grid key {key!r}; valid grid keys: {', '.join(axes)}")
    if not values:
        raise UsageError(f"{axes[key].spec.flag} needs at least one value")
    out: list[Any] = []
    for v in values:
        value = opts.parse(axes[key], v)
        if value not in out:  # keep the user's order, drop repeats
            out.append(value)
    return tuple(out)


def parse_fixed(key: str, value: Any) -> Any:
    settings = opts.fixed()
    if key not in settings:
        raise UsageError(f"unknown setting {key!r}; valid settings: {', '.join(settings)}")
    return opts.parse(settings[key], value)


def make_plan(
    *,
    grid: Mapping[str, Sequence[Any]],
    fixed: dict[str, Any] | None = None,
    preset: str | None = None,
) -> Plan:
    """Validate a grid (values as text or already typed) and expand it into runs.

    Axes not given take DEFAULT_GRID (or the preset's) values; settings not given
    are left to `crepe train`'s defaults. nodp runs drop the DP-only axes
    (sigma, target epsilon, clipping); a target-epsilon axis replaces the sigma
    axis. Every run's options are checked as `crepe train` would check them, so
    a bad combination is refused before anything runs. UsageError if bad.
    """
    if preset is not None:
        check_choice("preset", preset, tuple(PRESETS))
    axes, settings = opts.axes(), opts.fixed()
    base_grid: dict[str, tuple[Any, ...]] = dict(DEFAULT_GRID)
    base_fixed: dict[str, Any] = {}
    if preset is not None:
        base_grid.update(PRESETS[preset]["grid"])
        base_grid.update(PRESETS[preset].get("grid_fixed", {}))
        base_fixed.update({k: parse_fixed(k, v) for k, v in PRESETS[preset]["fixed"].items()})  # an option turned axis fails here
    asked = {key: parse_values(key, values) for key, values in grid.items()}
    for a, b in _solving_axes():  # one of the two axes: what the user asked for wins
        if a in asked and b in asked:
            raise UsageError(f"{axes[a].spec.flag} solves {axes[b].name}: give {axes[b].spec.flag} or {axes[a].spec.flag}, not both")
        base_grid.pop(b if a in asked else a if b in asked else "", None)
        if a in base_grid:
            base_grid.pop(b, None)
    base_grid.update(asked)
    for key, value in (fixed or {}).items():
        base_fixed[key] = parse_fixed(key, value)
    g = {k: parse_values(k, base_grid[k]) for k in axes if k in base_grid}  # canonical key order
    f = {k: base_fixed[k] for k in settings if k in base_fixed}

    runs: dict[str, RunSpec] = {}
    keys = list(g)
    for combo in itertools.product(*(g[k] for k in keys)):
        values = dict(zip(keys, combo))
        method, dp = values.get("method", opts.default("method")), values.get(PRIVACY, "dp") == "dp"
        unused = {k for k in keys if opts.unused(axes[k].name, method=method, dp=dp)}
        name = _name(values, g, unused)
        if name in runs:  # e.g. nodp runs repeat once per sigma: keep the first
            continue
        # Settings a run does not use (its method ignores them, or a non-private run the
        # DP-only ones) are left out of its flags: crepe train refuses them.
        known = opts.settings()
        chosen = {k: values[k] for k in keys if k not in unused}
        chosen |= {k: v for k, v in f.items() if not opts.unused(known[k].name, method=method, dp=dp)}
        spec = RunSpec(name=name, settings=tuple(chosen.items()))
        opts.run_config(spec.given(), f"run {name}")
        runs[name] = spec
    return Plan(grid=g, fixed=f, preset=preset, runs=tuple(runs.values()))


# ---------------------------------------------------------------------------
# The manifest (sweep.json): the plan a sweep directory holds.


def load_manifest(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = rundir.read_json(path)
    if not isinstance(manifest, dict) or "grid" not in manifest or "fixed" not in manifest:
        raise UsageError(f"{path} is not a crepe sweep manifest (no 'grid'/'fixed'); fix or remove it")
    return manifest


def plan_from_manifest(manifest: dict[str, Any]) -> Plan:
    axes = opts.axes()
    grid = dict(manifest["grid"])
    fixed = {}
    for key, value in manifest["fixed"].items():
        if key in axes and key not in grid:  # an option declared a grid axis since (select-every): one value
            grid[key] = [value]
        else:
            fixed[key] = value
    return make_plan(grid=grid, fixed=fixed, preset=None)


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """A line per grid axis or fixed setting in which two plans' identities differ."""
    lines = []
    for part in ("grid", "fixed"):
        for key in sorted(set(old[part]) | set(new[part])):
            a, b = old[part].get(key), new[part].get(key)
            if a != b:
                lines.append(f"  {part} {key}: existing {a!r}, requested {b!r}")
    return lines


def merge_plans(old: Plan, new: Plan) -> Plan:
    """--extend: the union of both grids; the fixed settings must agree."""
    if old.fixed != new.fixed:
        raise UsageError(
            "--extend can add grid values but not change fixed settings (runs would "
            "differ in settings their names do not show):\n"
            + "\n".join(diff({"grid": {}, "fixed": old.fixed}, {"grid": {}, "fixed": new.fixed}))
        )
    grid = {k: tuple(dict.fromkeys(old.grid.get(k, ()) + new.grid.get(k, ()))) for k in opts.axes()
            if k in old.grid or k in new.grid}
    merged = make_plan(grid=grid, fixed=old.fixed)
    # Names depend on which axes have several values: an extension must not rename existing runs.
    renamed = {r.name for r in make_plan(grid=old.grid, fixed=old.fixed).runs} - {r.name for r in merged.runs}
    if renamed:
        raise UsageError(
            "--extend would rename existing runs (a new axis got a second value): "
            + ", ".join(sorted(renamed)[:5])
            + "; use a new sweep directory"
        )
    return merged

