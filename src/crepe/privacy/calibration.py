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
) -> float:
    """The sigma whose ledger ends at epsilon in [0.99 target, target] (epsilon falls as sigma grows).

    First a bracket: sigma halved from SIGMA_MAX until epsilon exceeds the target, never below the
    accountant's SIGMA_FLOOR; then bisection in log sigma on [1e-2, SIGMA_MAX], where a sigma at or
    below the bracket's is known to exceed the target (epsilon is monotone) and is not evaluated. So
    no accountant sees a sigma much below the answer (the bisection is the one crepe always ran: the
    same sigma for every target it could solve). A sigma at which the accountant fails counts as
    above every target. A target that needs less noise than the accountant can evaluate is a
    UsageError naming --sigma. `kinds`: the releases that count (default all); `levers`: what
    shortens the schedule, said when a target is unreachable.
    """

    def eps(s: float) -> float:
        try:
            return epsilon(ledger_for(s), delta=delta, accountant=accountant, kinds=kinds)
        except (MemoryError, OverflowError, ValueError):  # the accountant's domain exploded: far above any target
            return math.inf

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
    lo, hi = min(1e-2, above), SIGMA_MAX
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        e = math.inf if mid <= above else eps(mid)
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


def calibrate(
    ledger_for: Callable[[float, float], Ledger], *, target: float, delta: float, accountant: str,
    select_sigma: float | None = None, select_share: float | None = None, levers: str = "fewer epochs",
) -> tuple[float, float]:
    """(sigma, sigma_sel) so that `ledger_for(sigma, sigma_sel)` ends at `target`. sigma_sel is the
    given `select_sigma`, or solved first so that the selection releases alone spend
    `select_share` of the target, or else tied to sigma."""
    if select_share is not None:
        select_sigma = solve_sigma(
            lambda s: ledger_for(1.0, s), target=select_share * target, delta=delta, accountant=accountant,
            kinds=parts()["select"], levers=levers,
        )
    fixed = select_sigma

    def tied(s: float) -> float:
        return fixed if fixed is not None else s

    sigma = solve_sigma(lambda s: ledger_for(s, tied(s)), target=target, delta=delta, accountant=accountant,
                        levers=levers)
    return sigma, tied(sigma)
