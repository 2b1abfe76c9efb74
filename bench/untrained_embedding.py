"""The floor of issue 24's embedding metrics: an UNTRAINED backbone (no data seen, no epsilon).

    python bench/untrained_embedding.py --seeds 0 1 2 [--pretrain mnist] [--out baseline.json]

Builds the CNN exactly as `crepe train --seed S` does (`crepe.training.loop.seeds` gives the
model-initialisation seed), optionally pretrains it on the public dataset as `--pretrain` does
(crepe.training.pretrain, same seed), and evaluates the held-out classes' embeddings as every run
does (`crepe.training.loop.embedding_metrics` on Fashion-MNIST with classes 7-9 held out): exact
pair recall at FAR 1e-3 and 0.1 over all pairs of their 3,000 test examples, 1-NN with the first
test example of each class as the gallery. A private run that does not beat this row has learned
nothing its embeddings show; the pretrained row is what public data alone gives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from crepe.config import TrainConfig
from crepe.models import build_model
from crepe.training import loop
from crepe.training.inputs import load_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--pretrain", default=None, choices=(None, "mnist", "fashion-mnist"))
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    out: dict[str, list] = {"seeds": a.seeds, "pretrain": a.pretrain, "recall_1e-3": [], "recall_0.1": [], "nn1": []}
    for seed in a.seeds:
        cfg = TrainConfig(dataset="fashion-mnist", data_dir=a.data_dir, method="full", held_out_classes=3,
                          seed=seed, sigma=1.0, pretrain=a.pretrain).resolve()
        ds = load_data(cfg)
        model_seed, _ = loop.seeds(cfg)
        torch.manual_seed(model_seed)
        model = build_model(cfg.model, activation=cfg.activation)
        if a.pretrain:
            from crepe.training.pretrain import pretrain

            pretrain(model, cfg, seed=model_seed, say=print)
        r = type("R", (), {"ds": ds, "model": model})()  # what embedding_metrics reads
        emb = loop.embedding_metrics(r)["embedding"]  # type: ignore[arg-type]
        out["recall_1e-3"].append(emb["recall_at_far_1e-3"])
        out["recall_0.1"].append(emb["recall_at_far_0.1"])
        out["nn1"].append(emb["nn1_accuracy"])
        print(f"seed {seed}{' pretrained on ' + a.pretrain if a.pretrain else ' untrained'}: recall "
              f"{emb['recall_at_far_1e-3']:.4f} at FAR 1e-3, {emb['recall_at_far_0.1']:.4f} at FAR 0.1, "
              f"1-NN {emb['nn1_accuracy']:.4f}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
