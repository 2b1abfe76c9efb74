"""Calibration: the noise multiplier that makes a run end at a target epsilon.

A run's releases are known before it starts: the run plan (training/plan.py)
writes them as a function of sigma (and sigma_sel). `solve_sigma` bisects on
such a function so that epsilon_total <= target and >= 0.99 target;
`calibrate` first solves sigma_sel when --select-share gives selection its own
share of the target (docs/privacy.md). Imports no method and no plan: it
solves over whatever ledger function it is given.
"""

from __future__ import annotations

import math
from typing import Callable

from crepe.config import UsageError
from crepe.privacy.accounting import epsilon
from crepe.privacy.ledger import Ledger, parts

SIGMA_MAX = 200.0  # beyond this the model learns nothing: a target that needs more is "unreachable"
# The smallest sigma solve_sigma lets each accountant evaluate. Below it an accountant's domain can
# explode: Opacus' PRV discretises the privacy loss over a range that grows with epsilon and needs
# gigabytes (measured: sigma 0.3, q 0.0043, 50k steps: MemoryError at 5 GB; sigma 0.5 stays below
# 1.3 GB there and at q 0.001, 100k steps). RDP is closed form. dp-accounting's PLD grid grows as
# 1/sigma^2 (0.1: ~1e5 atoms a step, under a second). Others get the cautious default.
SIGMA_FLOOR = {"rdp": 1e-2, "prv": 0.5, "pld": 0.1}
DEFAULT_SIGMA_FLOOR = 0.5


class Unreachable(UsageError):
    """A target epsilon below what the schedule can reach; `floor` is the smallest reachable epsilon."""

    def __init__(self, message: str, *, floor: float):
        super().__init__(message)
        self.floor = floor


def solve_sigma(
    ledger_for: Callable[[float], Ledger], *, target: float, delta: float, accountant: str,
    kinds: tuple[str, ...] | None = None, levers: str = "fewer epochs",
    measure: Callable[[Ledger], float] | None = None,
) -> float:
    """The sigma whose ledger ends at epsilon in [0.99 target, target] (epsilon falls as sigma grows).

    First a bracket: sigma halved from SIGMA_MAX until epsilon exceeds the target, never below the
    accountant's SIGMA_FLOOR; a few probes inside it (`_probe`) then place evaluated sigmas just
    outside the window [0.99 target, target] on both sides. Then bisection in log sigma on
    [1e-2, SIGMA_MAX]: the one crepe always ran, the same mids and the same answer for every
    target it could solve, but a mid whose side monotonicity already gives (a sigma at or above it
    exceeds the target, or one at or below it is under 0.99 target) is not evaluated. So no
    accountant sees a sigma below the bracket's. A sigma at which the accountant fails counts as
    above every target. A target that needs less noise than the accountant can evaluate is a
    UsageError naming --sigma. `kinds`: the releases that count (default all); `levers`: what
    shortens the schedule, said when a target is unreachable. `measure`: the epsilon of a ledger
    (default: the accountant's, of `kinds`; e.g. the group-privacy epsilon per user).
    """
    known: dict[float, float] = {}  # sigma -> epsilon, every evaluation so far

    def eps(s: float) -> float:
        if s not in known:
            try:
                ledger = ledger_for(s)
                known[s] = (epsilon(ledger, delta=delta, accountant=accountant, kinds=kinds) if measure is None
                            else measure(ledger))
            except (MemoryError, OverflowError, ValueError):  # the accountant's domain exploded: far above any target
                known[s] = math.inf
        return known[s]

    floor = eps(SIGMA_MAX)
    if floor > target:
        raise Unreachable(
            f"--target-epsilon {target:g} is unreachable with this schedule: the smallest reachable epsilon is "
            f"{floor:.4g} (at sigma = {SIGMA_MAX:g}); raise the target, or shorten the schedule ({levers})",
            floor=floor,
        )
    smallest = SIGMA_FLOOR.get(accountant, DEFAULT_SIGMA_FLOOR)
    above = SIGMA_MAX / 2  # halved until epsilon exceeds the target there, hence at every smaller sigma
    while eps(above) <= target:
        if above <= smallest:  # a target so loose that the least noise evaluated reaches it
            raise UsageError(
                f"--target-epsilon {target:g} is reached even at sigma = {smallest:g}, the smallest sigma crepe "
                f"evaluates with the {accountant} accountant: give --sigma instead"
            )
        above = max(above / 2, smallest)
    _probe(eps, known, target=target)
    lo, hi = min(1e-2, above), SIGMA_MAX
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        if any(s >= mid and e > target for s, e in known.items()):
            lo = mid  # epsilon(mid) >= epsilon(s) > target
            continue
        if any(s <= mid and e < 0.99 * target for s, e in known.items()):
            hi = mid  # epsilon(mid) <= epsilon(s) < 0.99 target
            continue
        e = eps(mid)
        if e > target:
            lo = mid
        else:
            hi = mid
            if e >= 0.99 * target:
                return mid
    raise UsageError(  # only where the accountant failed below hi: epsilon jumps from < 0.99 target to "unreachable"
        f"--target-epsilon {target:g} needs a sigma below {hi:.4g}, where the {accountant} accountant cannot "
        "evaluate this schedule: give --sigma instead"
    )


PROBE_MARGIN = 0.002  # probes aim this far (relative epsilon) outside the window [0.99 target, target]


def _probe(eps: Callable[[float], float], known: dict[float, float], *, target: float, probes: int = 4) -> None:
    """Evaluate a few sigmas inside the bracket where epsilon should lie just outside the window
    [0.99 target, target], above it and below it, so that the bisection's mids near the answer are
    decided without an evaluation. Each probe is an inverse quadratic interpolation (log sigma as a
    function of log epsilon through the three known points nearest the goal, as in Brent's method),
    kept strictly inside the tightest bracket (a, b): no probe is below a sigma already evaluated.
    They only save evaluations: the bisection's answer does not depend on where they land."""
    goals = (target * (1 + PROBE_MARGIN), 0.99 * target * (1 - PROBE_MARGIN))
    for _ in range(probes):
        a = max(s for s, e in known.items() if e > target)  # epsilon(a) > target
        b = min((s for s, e in known.items() if e < 0.99 * target and s > a), default=None)
        if b is None:
            return
        tight = (known[a] <= target * (1 + 2 * PROBE_MARGIN), known[b] >= 0.99 * target * (1 - 2 * PROBE_MARGIN))
        if all(tight):
            return
        goal = math.log(goals[0] if not tight[0] else goals[1])
        pts = sorted(((math.log(e), math.log(s)) for s, e in known.items() if 0 < e < math.inf),
                     key=lambda p: abs(p[0] - goal))[:3]
        x = math.log(a * b) / 2
        if len(pts) == 3 and len({y for y, _ in pts}) == 3:
            x = sum(xi * math.prod((goal - yj) / (yi - yj) for yj, _ in pts if yj != yi) for yi, xi in pts)
        lo, hi = math.log(a), math.log(b)
        eps(math.exp(min(max(x, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))))


def calibrate(
    ledger_for: Callable[[float, float], Ledger], *, target: float, delta: float, accountant: str,
    select_sigma: float | None = None, select_share: float | None = None, levers: str = "fewer epochs",
    measure: Callable[[Ledger], float] | None = None,
) -> tuple[float, float]:
    """(sigma, sigma_sel) so that `ledger_for(sigma, sigma_sel)` ends at `target`. sigma_sel is the
    given `select_sigma`, or solved first so that the selection releases alone spend
    `select_share` of the target, or else tied to sigma. `measure`: as solve_sigma's, for the whole ledger."""
    if select_share is not None:
        select_sigma = solve_sigma(
            lambda s: ledger_for(1.0, s), target=select_share * target, delta=delta, accountant=accountant,
            kinds=parts()["select"], levers=levers,
        )
    fixed = select_sigma

    def tied(s: float) -> float:
        return fixed if fixed is not None else s

    sigma = solve_sigma(lambda s: ledger_for(s, tied(s)), target=target, delta=delta, accountant=accountant,
                        levers=levers, measure=measure)
    return sigma, tied(sigma)
