"""One epoch of (DP-)SGD over a small weighted training set.

The set S (m examples, CRAIG weights gamma, public size M: m itself, or for a
Poisson subset its expected size) is sampled in int(1/q) Poisson batches,
q = B/M. How weights enter (DESIGN.md section 3) is fixed per set, so
the step itself does not branch on DP or on the weighting:
- DP, clip-then-scale: factor clip(g_i) * w_i, w = gamma / max gamma; normaliser q sum(w);
- DP, weight-then-clip: the loss of i is gamma_i loss_i (clipping cancels large weights); normaliser q m;
- non-private: the loss of i is w_i loss_i; normaliser q sum(w).
Unweighted sets (full, random, --weights none) have w = 1 and normaliser q M = B:
public, so a Poisson subset's realised size never reaches the output.
Over the ranks of a distributed run (dp/distributed.py) each rank runs every step
on the positions its sampling blocks drew (possibly none); the epoch's figures are
summed over the ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from crepe.dp.distributed import SINGLE, World
from crepe.dp.optimizer import Optimizer
from crepe.dp.sampling import block_batches, sample_rate, steps_per_epoch
from crepe.smallsets.sets import Coreset


@dataclass(frozen=True)
class SetWeights:
    """How one small set's weights enter the steps."""

    sample_rate: float  # q = B / M
    loss_weights: torch.Tensor | None  # (m,) multiplies each example's loss
    factor_weights: torch.Tensor | None  # (m,) multiplies each example's clip factor (DP)
    normaliser: float  # the noisy sum is divided by it
    expected_examples: float  # q m


def set_weights(s: Coreset, *, batch_size: int, dp: bool, weighting: str, size: float) -> SetWeights:
    """`size`: the public size M of the set (m itself for any set but a Poisson subset)."""
    m = len(s.indices)
    gamma = torch.from_numpy(s.gamma).to(torch.float32)  # (m,)
    weighted = weighting != "none" and bool((gamma != 1).any())
    if weighted and size != m:
        raise ValueError(f"a weighted set has a public size equal to its own ({m}), got {size}")
    q = sample_rate(batch_size, size)
    if not weighted:
        return SetWeights(q, None, None, q * size, q * size)
    w = gamma / gamma.max()  # (m,) in (0, 1]
    if dp and weighting == "weight-then-clip":
        return SetWeights(q, gamma, None, q * m, q * m)
    if dp:
        return SetWeights(q, None, w, q * float(w.sum()), q * m)
    return SetWeights(q, w, None, q * float(w.sum()), q * m)


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0


def train_epoch(
    net: nn.Module,
    opt: Optimizer,
    x: torch.Tensor,  # (n, 1, 28, 28) the whole training split
    y: torch.Tensor,  # (n,)
    s: Coreset,
    sw: SetWeights,
    *,
    generators: dict[str, torch.Generator],
    world: World = SINGLE,
    progress: Callable[[int, int], None] = lambda i, total: None,
) -> EpochStats:
    """`generators`: the run's, holding its sampling blocks' (dp/sampling.py `block_names`)."""
    S = torch.from_numpy(s.indices)  # (m,)
    steps = steps_per_epoch(sw.sample_rate)
    opt.start_set(sample_rate=sw.sample_rate, normaliser=sw.normaliser, expected_examples=sw.expected_examples)
    st = EpochStats()
    batches = block_batches(len(S), sample_rate=sw.sample_rate, steps=steps, generators=generators,
                            blocks=world.blocks())
    for i, pos in enumerate(batches, 1):
        weights = None
        if len(pos) == 0:
            opt.empty_batch()  # still a (noisy) step: skipping it would change the mechanism
        else:
            idx = S[pos]
            out = net(x[idx])  # (b, classes)
            losses = nn.functional.cross_entropy(out, y[idx], reduction="none")  # (b,)
            weighted = losses if sw.loss_weights is None else losses * sw.loss_weights[pos]
            weighted.sum().backward()
            weights = None if sw.factor_weights is None else sw.factor_weights[pos]  # (b,) scale the clip factors
            st.loss_sum += float(losses.detach().sum())
            st.correct += int((out.detach().argmax(1) == y[idx]).sum())
            st.seen += len(idx)
        opt.step(sample_weights=weights)
        opt.zero_grad(set_to_none=True)
        st.steps += 1
        progress(i, steps)
    if world.size > 1:
        sums = torch.tensor([st.loss_sum, st.correct, st.seen], dtype=torch.float64)
        world.all_reduce_([sums])
        st.loss_sum, st.correct, st.seen = float(sums[0]), int(sums[1]), int(sums[2])
    return st
