"""DP-SGD steps over torch.distributed ranks, traced: run by tests/test_distributed.py under torchrun
(`python -m torch.distributed.run --nproc-per-node 2 tests/distributed_steps.py OUT`), and in one
process by the test itself (`steps(...)` with the single World).

Three cases, each one epoch of train_epoch with the DP optimizer on a small linear model and fixed data:
- "plain": sigma 0 over 300 examples (the 2-rank result must equal the 1-rank one);
- "noise": sigma 2 (the noise on the released sum, seen by each rank, must be sigma C and one draw);
- "empty": a set of 1 example, which only rank 0's blocks hold (rank 1 steps on empty batches).
Each rank writes OUT/<case>.rank<r>.pt: final parameters, its local batches, and per step the summed
clipped gradient and the released noisy sum (before division by the normaliser).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from crepe.dp import distributed
from crepe.dp.clipping import make_clip_rule
from crepe.dp.optimizer import DPOptimizer
from crepe.dp.sampling import block_names
from crepe.smallsets.sets import Coreset
from crepe.training import epoch

CASES = {"plain": (0.0, 300), "noise": (2.0, 300), "empty": (1.0, 1)}
C = 0.5


def steps(case: str, world: distributed.World) -> dict[str, Any]:
    sigma, m = CASES[case]
    data = torch.Generator().manual_seed(7)
    x, y = torch.randn(300, 12, generator=data), torch.randint(0, 3, (300,), generator=data)
    torch.manual_seed(3)
    model = nn.Linear(12, 3)
    gens = {n: torch.Generator().manual_seed(100 + i) for i, n in enumerate(block_names())}
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), noise_multiplier=sigma,
                      clip_rule=make_clip_rule("flat", max_grad_norm=C), generator=torch.Generator().manual_seed(11),
                      on_release=lambda r: None, world=world)
    trace: dict[str, list[Any]] = {"batches": [], "summed": [], "released": []}
    add_noise = opt.add_noise

    def traced_add_noise() -> None:
        trace["summed"].append(torch.cat([p.summed_grad.reshape(-1).clone() for p in opt.params]))
        add_noise()
        trace["released"].append(torch.cat([p.grad.reshape(-1).clone() for p in opt.params]))

    opt.add_noise = traced_add_noise  # type: ignore[method-assign]
    batches = epoch.block_batches

    def traced_batches(*a: Any, **k: Any) -> Any:
        for b in batches(*a, **k):
            trace["batches"].append(b.clone())
            yield b

    epoch.block_batches = traced_batches  # type: ignore[assignment]
    try:
        s = Coreset(np.arange(m), np.ones(m, dtype=np.int64))
        sw = epoch.set_weights(s, batch_size=30 if m > 1 else 1, dp=True, weighting="none", size=m)
        st = epoch.train_epoch(GradSampleModule(model), opt, x, y, s, sw, generators=gens, world=world)
    finally:
        epoch.block_batches = batches  # type: ignore[assignment]
    return {"params": [p.detach().clone() for p in model.parameters()], "steps": st.steps, "seen": st.seen, **trace}


if __name__ == "__main__":
    world = distributed.current()
    out = Path(sys.argv[1])
    for case in CASES:
        torch.save(steps(case, world), out / f"{case}.rank{world.rank}.pt")
