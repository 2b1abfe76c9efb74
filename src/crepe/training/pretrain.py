"""--pretrain: the model trained without privacy on a dataset declared public, before private training.

The public dataset is another one than the private --dataset (MNIST digits for
Fashion-MNIST users, or the reverse), read from the same --data-dir; its
training split only (offline MNIST: the 8,000-image training part of t10k).
Plain SGD (momentum 0.9, batches of 128, shuffled by a generator seeded from
--seed: public data, so nothing here is secret or enters the ledger) for
--pretrain-epochs at --pretrain-lr. The provenance (dataset, split, source,
examples, epochs, step size, and the sha256 of the pretrained weights) goes
into summary.json and model.json and is printed beside epsilon: epsilon covers
the private data only, and the pretrained weights are public by declaration.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crepe import data as data_mod
from crepe.config import TrainConfig

BATCH = 128


def pretrain(model: nn.Module, cfg: TrainConfig, *, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Train `model` in place on cfg.pretrain's training split; returns its provenance."""
    assert cfg.pretrain is not None
    public = data_mod.load(cfg.pretrain, data_dir=cfg.data_dir)
    x, y = public.x_train, public.y_train
    opt = torch.optim.SGD(model.parameters(), lr=cfg.pretrain_lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.pretrain_epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), BATCH):
            idx = perm[s : s + BATCH]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    out = {"dataset": cfg.pretrain, "split": public.split, "source": public.source, "examples": len(y),
           "epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr, "momentum": 0.9, "batch_size": BATCH,
           "weights_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
           "note": "without privacy, on data declared public; epsilon covers the private data only"}
    say(line(out))
    return out


def line(p: dict[str, Any]) -> str:
    return (f"crepe train: pretrained without privacy on public {p['dataset']} ({p['examples']} examples, "
            f"{p['epochs']} epoch{'s' * (p['epochs'] != 1)}; weights sha256 {p['weights_sha256'][:16]})")
