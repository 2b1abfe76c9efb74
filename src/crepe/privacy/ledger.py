"""The privacy ledger: every release a run makes, as frozen typed `Release`s.

A release is (kind, noise multiplier, sample rate, steps, unit): `steps`
Poisson-subsampled Gaussian mechanisms of sensitivity 1 in noise units, at
sample rate q, protecting one privacy `unit` (UNITS: "example", or "user":
everything one user contributes). Kinds are registered (`KINDS`) with the part
of epsilon they belong to:
- "select": a private selection round, a Gaussian mechanism on all n proxies
  (noise multiplier sigma_sel, sample rate 1); part "select";
- "generate": a noisy real gradient of private set generation (sigma, q = B/n);
  part "select" (it chooses the training set);
- "train": a DP-SGD step (sigma, q = B/|S|); under adaptive clipping the
  step's noisy count of unclipped examples comes from the same batch and is
  part of the same release: noise multiplier (sigma^-2 + sigma_b^-2)^(-1/2)
  (dp/clipping.py `joint_noise`); part "train", and it may be amplified by a
  secret Poisson subset (it reads only the subset).
A release without noise (noise multiplier 0: non-private selection or --no-dp
training) is recorded too and makes every epsilon that includes it infinite.

One kind is a MARKER, not a release: "subset" (noise 0, one step, q = p) says
that the releases after it, up to the next marker, are computed on a subset S
drawn by secret Poisson selection (each example independently with
probability p), at a sample rate and normaliser fixed from public quantities,
and that S is never released. The accountant may then amplify the releases of
an amplifiable kind in that phase (docs/privacy.md, "Random subsets"). A
marker costs nothing and is never merged with its neighbours.

Checkpoints and summary.json hold the ledger as primitives (`Ledger.to_list`:
dicts of the five fields); `Ledger.from_list` reads them back and refuses
anything malformed. Entries of crepe versions before the unit existed have
four fields and meant unit "example". Older versions also wrote a kind
"clip-count" (adaptive clipping's count as a release apart from its step's
gradient, which under-reported epsilon: RETIRED): a ledger holding one is
refused, never re-accounted or resumed.

Imports nothing of crepe but config: the optimizer (dp/) and the small-set
methods write releases, the accountants read them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterable, Iterator

from crepe.config import UsageError, check_choice

UNITS = ("example", "user")  # what one release protects; every release of a ledger protects the same unit


@dataclass(frozen=True)
class Kind:
    """A registered release kind: the part of epsilon it belongs to, and whether the releases of a
    phase on a secret Poisson subset may be amplified by that draw (they read only the subset)."""

    part: str  # "select" | "train"
    amplified: bool = False


KINDS: dict[str, Kind] = {
    "select": Kind(part="select"),
    "generate": Kind(part="select"),
    "train": Kind(part="train", amplified=True),
}
MARKER = "subset"  # the one marker kind: the releases up to the next marker run on a secret Poisson subset
# Kinds older versions wrote whose epsilon was wrong: why a ledger holding one cannot be trusted.
RETIRED = {
    "clip-count": (
        "adaptive clipping's count was accounted as a release apart from its step's gradient, but both "
        "come from the same Poisson batch, so the epsilon recorded for this run was under-reported"
    ),
}


def parts() -> dict[str, tuple[str, ...]]:
    """The parts of epsilon a run reports, each a set of kinds composed on its own: "total" (every
    kind) and one per registered part ("select", "train")."""
    out: dict[str, tuple[str, ...]] = {"total": tuple(KINDS)}
    for name, kind in KINDS.items():
        out[kind.part] = out.get(kind.part, ()) + (name,)
    return out


@dataclass(frozen=True)
class Release:
    """`steps` releases of one kind at (noise multiplier, sample rate), protecting one `unit`."""

    kind: str
    noise_multiplier: float
    sample_rate: float
    steps: int = 1
    unit: str = "example"

    def __post_init__(self) -> None:
        if self.kind in RETIRED:
            raise ValueError(
                f"the privacy ledger holds a {self.kind!r} entry, written by an older crepe: {RETIRED[self.kind]}; "
                "this run cannot be resumed: start a new run with another --out"
            )
        check_choice("ledger kind", self.kind, (*KINDS, MARKER))
        check_choice("privacy unit", self.unit, UNITS)
        numbers = (self.noise_multiplier, self.sample_rate)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
            raise ValueError(f"bad ledger entry {self}: noise multiplier and sample rate must be finite numbers")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"bad ledger entry {self}: steps must be an integer >= 1")
        if not (0.0 < self.sample_rate <= 1.0):
            raise ValueError(f"sample_rate must lie in (0, 1], got {self.sample_rate}")
        if self.noise_multiplier < 0:
            raise ValueError(f"bad ledger entry {self}: the noise multiplier must be >= 0")
        if self.marker and (self.noise_multiplier != 0 or self.steps != 1):
            raise ValueError(f"bad ledger entry {self}: a marker carries only its p (noise 0, one step)")

    @property
    def marker(self) -> bool:
        return self.kind == MARKER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset(inclusion_probability: float, *, unit: str = "example") -> Release:
    """The marker of a phase on a subset drawn by secret Poisson selection (0 < p <= 1)."""
    if not (0.0 < inclusion_probability <= 1.0):
        raise ValueError(f"inclusion_probability must lie in (0, 1], got {inclusion_probability}")
    return Release(MARKER, 0.0, float(inclusion_probability), 1, unit)


_FIELDS = frozenset(f.name for f in fields(Release))
_LEGACY_FIELDS = _FIELDS - {"unit"}  # before the unit existed: every release protected one example


class Ledger:
    """The releases of a run in order; consecutive identical releases are merged (same composition),
    markers never are. Every release protects the same unit."""

    def __init__(self, releases: Iterable[Release] = ()) -> None:
        self._entries: list[Release] = []
        for r in releases:
            self.record(r)

    def record(self, release: Release) -> None:
        if self._entries and release.unit != self._entries[0].unit:
            raise ValueError(f"a ledger protects one unit: {self._entries[0].unit}, not also {release.unit}")
        last = self._entries[-1] if self._entries else None
        same = last is not None and (last.kind, last.noise_multiplier, last.sample_rate, last.unit) == (
            release.kind, release.noise_multiplier, release.sample_rate, release.unit)
        if same and last is not None and not release.marker:
            self._entries[-1] = replace(last, steps=last.steps + release.steps)
        else:
            self._entries.append(release)

    def extend(self, releases: Iterable[Release]) -> None:
        for r in releases:
            self.record(r)

    @property
    def unit(self) -> str:
        """The privacy unit its epsilons protect ("example" for an empty ledger)."""
        return self._entries[0].unit if self._entries else "example"

    def __iter__(self) -> Iterator[Release]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> Release:
        return self._entries[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ledger) and self._entries == other._entries

    def __repr__(self) -> str:
        return f"Ledger({self._entries!r})"

    def to_list(self) -> list[dict[str, Any]]:
        """Primitives for checkpoints and summary.json."""
        return [r.to_dict() for r in self._entries]

    @classmethod
    def from_list(cls, entries: Any) -> Ledger:
        """A ledger read back from primitives; ValueError if anything is malformed (never trusted)."""
        if not isinstance(entries, list):
            raise ValueError("the privacy ledger is not a list")
        out = cls()
        for e in entries:
            if not isinstance(e, dict) or set(e) not in (_FIELDS, _LEGACY_FIELDS):
                raise ValueError(f"malformed ledger entry {e!r}")
            try:
                out._entries.append(Release(**e))  # as written: never re-merged
            except (ValueError, UsageError) as err:
                raise ValueError(f"malformed ledger entry {e!r}: {err}") from None
        if len({r.unit for r in out}) > 1:
            raise ValueError("malformed ledger: its releases protect different units")
        return out


def as_ledger(ledger: Ledger | Iterable[Release | dict[str, Any]]) -> Ledger:
    """A Ledger as is; releases recorded into a new one; primitives read by `Ledger.from_list`."""
    if isinstance(ledger, Ledger):
        return ledger
    items = list(ledger)
    if all(isinstance(e, Release) for e in items):
        return Ledger(items)
    return Ledger.from_list(items)
