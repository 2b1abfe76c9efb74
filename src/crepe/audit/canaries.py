"""White-box gradient canaries (DESIGN.md section 14), and the audit record of a run.

m canaries, drawn once per run from the run's secret "audit" generator (dp/secret_rng.py: the
same key as the noise, so as secret as the noise):
- canary i owns a coordinate j_i of the flattened trainable parameters (all distinct);
- it is included with probability 1/2 (S_i);
- at every DP-SGD step an included canary is Poisson-sampled at the step's own sample rate q
  (one draw per canary per step, included or not, so the generator's state says nothing of S)
  and, when sampled, adds exactly C e_{j_i} to the sum of clipped gradients BEFORE the noise
  (DPOptimizer.clip_and_accumulate: the real code path, so the noise, the normaliser and the
  release are those of the real examples). A canary is one more example of the mechanism: norm
  C, the sensitivity a clipped real example has, at the rate the ledger records.
- in a user-level run (--privacy-unit user) a canary is a canary user: sampled at the users'
  rate q_u, it adds sensitivity x C e_{j_i} (C for a user that is its own unit, 2C for a user
  of a virtual client of K > 1: what one user can move the noisy sum by, the sensitivity the
  ledger's multiplier sigma / sensitivity is computed for).

The score of canary i is the sum over steps of coordinate j_i of the released noisy sum
(p.grad right after Opacus adds the noise) minus the real examples' clipped sum at j_i in the
same step. The auditor is thus given everything but what DP must hide of the canary: its
inclusion, its own sampling and the noise (the DP guarantee holds for any fixed value of the
other examples' contributions, so knowing them is allowed; it makes the audit as strong as a
white-box one can be). What remains is C times the number of times the canary was sampled
plus Gaussian noise: an audit of the noise and the sampling as implemented. It does not test
clipping (a canary is C e_j by construction).

Accounting (docs/privacy.md section 12): the sample rate stays B/|S| from public sizes and the
normaliser q |S|: the canaries are extra examples of the mechanism, not part of the data, and
a real example's epsilon does not depend on what else is in the dataset. Their expected q m/2
extra rows per step change only the update (by C/(q|S|) at a sampled canary's coordinate).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from crepe.audit import fdp
from crepe.audit.bound import epsilon_lower_bound, guess
from crepe.audit.rules import check_parameters
from crepe.config import UsageError

CONFIDENCE = 0.95
MEANING = (
    "a lower bound on epsilon from this one run (Steinke, Nasr & Jagielski 2023): with 95% confidence the "
    "training steps are not (eps_lb, delta)-DP for any smaller eps_lb, if the canaries' inclusion stayed secret. "
    "eps_upper is the accountant's upper bound for the steps the canaries went through (the train part of "
    "epsilon); eps_lb <= eps_upper is expected, and eps_lb above it would mean the noise or the sampling is not "
    "what the ledger records"
)
MEANING_FDP = (
    "the f-DP conversion of the same count (Mahloujifar, Melis & Chaudhuri 2024): with 95% confidence the training "
    "steps are not mu_lb-GDP, and eps_lb_fdp is the epsilon of mu_lb-GDP at delta. It is tighter than eps_lb but "
    "bounds the steps' epsilon only if their tradeoff curve is Gaussian (close, not exact, for many noisy steps; "
    "docs/privacy.md section 12); eps_lb holds for any (eps, delta)-DP mechanism and stays the guard"
)
SUMMARY_KEYS = ("method", "canaries", "guesses", "correct", "confidence", "eps_lb", "eps_lb_fdp", "eps_upper")
SCORE = ("sum over steps of the released noisy gradient sum at the canary's coordinate minus the real examples' "
         "clipped sum there (white-box)")


class WhiteBox:
    """The canaries of one run: coordinates, inclusion, running scores (all secret)."""

    def __init__(self, coords: torch.Tensor, included: torch.Tensor, scores: torch.Tensor, steps: int,
                 generator: torch.Generator, sizes: list[int]) -> None:
        self.coords = coords  # (m,) int64 into the flattened trainable parameters
        self.included = included  # (m,) bool: S_i = +1
        self.scores = scores  # (m,) float64
        self.steps = steps
        self.generator = generator
        self.sizes = sizes  # numel of each trainable parameter, in the optimizer's order
        self._real = torch.zeros(len(coords), dtype=torch.float64)  # this step's real clipped sum at j_i
        self._groups = self._by_parameter()

    def _by_parameter(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """Per parameter holding canaries: (its index, their positions within it, their canary ids)."""
        groups = []
        offsets = np.cumsum([0, *self.sizes])
        for k in range(len(self.sizes)):
            ids = torch.nonzero((self.coords >= int(offsets[k])) & (self.coords < int(offsets[k + 1]))).reshape(-1)
            if len(ids):
                groups.append((k, self.coords[ids] - int(offsets[k]), ids))
        return groups

    @classmethod
    def draw(cls, m: int, params: list[torch.Tensor], generator: torch.Generator) -> WhiteBox:
        """m canaries on distinct coordinates of `params`; UsageError if they have fewer than m."""
        sizes = [p.numel() for p in params]
        d = sum(sizes)
        check_parameters(m, d)
        coords = torch.randperm(d, generator=generator)[:m].to(torch.int64)
        included = torch.rand(m, generator=generator, dtype=torch.float64) < 0.5
        return cls(coords, included, torch.zeros(m, dtype=torch.float64), 0, generator, sizes)

    def state(self) -> dict[str, Any]:
        """For the checkpoint (secret: it holds S)."""
        return {"method": "white-box", "coords": self.coords, "included": self.included, "scores": self.scores,
                "steps": self.steps}

    def load(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's canaries (those drawn at build time are replaced)."""
        if state is None or len(state["coords"]) != len(self.coords):
            raise UsageError("the checkpoint holds no canaries of this run's --audit-canaries: it cannot be resumed")
        self.coords, self.included = state["coords"], state["included"]
        self.scores, self.steps = state["scores"].clone(), int(state["steps"])
        self._groups = self._by_parameter()

    def _gather(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """(m,) float64: the canaries' coordinates of these per-parameter tensors."""
        out = torch.empty(len(self.coords), dtype=torch.float64)
        for k, local, ids in self._groups:
            out[ids] = tensors[k].reshape(-1)[local].to(torch.float64)
        return out

    def inject(self, params: list[torch.Tensor], *, max_grad_norm: float, sample_rate: float,
               sensitivity: float = 1.0) -> int:
        """Before the noise: note the real clipped sum at each j_i, then add sensitivity C e_{j_i} for each
        included canary that this step's Poisson draw (rate q, one uniform per canary) samples (a canary
        user of a user-level run: what one user can move the sum by, 2C in a virtual client of K > 1)."""
        self._real = self._gather([p.summed_grad for p in params])
        u = torch.rand(len(self.coords), generator=self.generator, dtype=torch.float64)
        hit = (u < sample_rate) & self.included  # (m,) this step's sampled canaries
        for k, local, ids in self._groups:
            summed = params[k].summed_grad
            add = hit[ids].to(summed.dtype) * (sensitivity * max_grad_norm)
            params[k].summed_grad = summed.reshape(-1).index_add(0, local, add).view_as(summed)
        return int(hit.sum())

    def observe(self, params: list[torch.Tensor]) -> None:
        """After the noise: each score gains the released noisy sum at j_i minus the real part noted."""
        self.scores += self._gather([p.grad for p in params]) - self._real
        self.steps += 1


def record(state: dict[str, Any], *, guesses: int, delta: float, eps_upper: float | None, epochs_done: int,
           complete: bool) -> dict[str, Any]:
    """audit.json: the guesses made from the scores, how many were right, and eps_lb. Nothing secret:
    no score, no coordinate, no inclusion bit."""
    scores = state["scores"].numpy()
    truth = np.where(state["included"].numpy(), 1, -1)
    t = guess(scores, guesses)
    m = len(scores)
    correct = int((t == truth)[t != 0].sum())
    beta = 1 - CONFIDENCE
    eps_lb = epsilon_lower_bound(m=m, r=guesses, v=correct, delta=delta, beta=beta)
    return with_fdp({
        "method": state["method"],
        "canaries": m,
        "guesses": guesses,
        "guesses_included": int((t == 1).sum()),
        "guesses_excluded": int((t == -1).sum()),
        "correct": correct,
        "confidence": CONFIDENCE,
        "delta": delta,
        "eps_lb": eps_lb,
        "ceiling": epsilon_lower_bound(m=m, r=guesses, v=guesses, delta=delta, beta=beta),
        "eps_upper": None if eps_upper is None or math.isinf(eps_upper) else eps_upper,
        "steps": int(state["steps"]),
        "epochs_done": epochs_done,
        "complete": complete,  # False: computed by crepe audit from an unfinished run's checkpoint
        "score": SCORE,
        "meaning": MEANING,
    })


def with_fdp(result: dict[str, Any]) -> dict[str, Any]:
    """An audit record with the f-DP conversion of its counts beside eps_lb (computed from the counts
    alone, so also for an audit.json written before the conversion existed)."""
    if "eps_lb_fdp" in result:
        return result
    m, r, v, delta = result["canaries"], result["guesses"], result["correct"], result["delta"]
    beta = 1 - result["confidence"]
    mu_lb = fdp.mu_lower_bound(m=m, r=r, v=v, beta=beta)
    extra = {"mu_lb": mu_lb, "eps_lb_fdp": fdp.gaussian_epsilon(mu_lb, delta),
             "ceiling_fdp": fdp.ceiling(m=m, r=r, delta=delta, beta=beta), "meaning_fdp": MEANING_FDP}
    at = list(result).index("ceiling") + 1  # beside eps_lb and its ceiling
    items = list(result.items())
    return dict(items[:at] + list(extra.items()) + items[at:])
