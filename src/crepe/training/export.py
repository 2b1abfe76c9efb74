"""The publishable model of a finished run: RUN_DIR/model.pt and RUN_DIR/model.json.

model.pt is the trained model's state_dict, written by torch.save: it loads with
plain torch (`torch.load(path, weights_only=True)`) into the architecture that
model.json names (`crepe.models.build_model(json["model"], activation=...)`;
for a crepe.train run, the class of one's own it names, constructed as for
training). model.json says what the weights are and
what protects them: architecture, input, ε and its parts at δ, the privacy
unit, the adjacency, the accountant, σ and the caveats. Nothing secret: the
weights are post-processing of the noisy releases; no generator state,
subset, realised size or label fingerprint goes into either file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from crepe.config import USER, TrainConfig, UsageError
from crepe.training import rundir

MODEL = "model.pt"
MODEL_CARD = "model.json"
FORMAT = "crepe-model-1"
# What model.json copies from summary.json: what the weights are worth and what protects them.
FROM_SUMMARY = ("test_acc", "eps_total", "eps_select", "eps_train", "eps_infinite", "delta", "accountant", "unit",
                "adjacency", "noise", "labels_public", "caveat", "noise_caveat", "sigma", "select_sigma", "epochs",
                "pretrain")


BUILT_IN = {"cnn": "crepe.models.CNN", "resnet": "crepe.models.ResNet", "convnet": "crepe.models.ConvNet",
            "linear": "crepe.models.Linear", "scatter-cnn": "crepe.models.ScatterCNN", "cifar-cnn": "crepe.models.CifarCNN"}


def architecture(model: Any, x: Any) -> dict[str, Any]:
    """What summary.json and model.json say the weights are: the model's class, its input and classes."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        classes = int(model(x[:1]).shape[1])
    model.train(was_training)
    cls = type(model)
    return {"model_class": f"{cls.__module__}.{cls.__qualname__}", "input_shape": list(x.shape[1:]), "classes": classes}


def card(cfg: TrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    from crepe.data import NORMALISATION

    own = cfg.model == USER
    mean_std = NORMALISATION.get(cfg.dataset)
    model_class = summary.get("model_class", BUILT_IN.get(cfg.model))
    shape = summary.get("input_shape", [1, 28, 28])
    classes = summary.get("classes", 10)
    built = f"{cfg.model!r}, activation={cfg.activation!r}" + ("" if shape == [1, 28, 28] else f", shape={tuple(shape)}") + (
        "" if classes == 10 else f", classes={classes}") + ("" if cfg.norm_groups is None else f", norm_groups={cfg.norm_groups}")
    load = (f"construct {model_class} as for training, then model.load_state_dict(torch.load('{MODEL}', weights_only=True))"
            if own else f"torch.load('{MODEL}', weights_only=True) is a state_dict for crepe.models.build_model({built})")
    if cfg.features is not None:  # the model's input is the front end's output
        unit = "x as given to crepe.train" if own else "images x = pixel / 255, (n, C, H, W)"
        features = {"name": cfg.features, "input": f"crepe.features.apply({cfg.features!r}, x) of {unit}"}
        mean_std = None
    return {
        "format": FORMAT,
        "model": cfg.model,
        "model_class": model_class,
        "activation": None if own else cfg.activation,
        "classes": classes,
        "input_shape": summary.get("input_shape", [1, 28, 28]),
        "dataset": cfg.dataset,
        # x = (pixel / 255 - mean) / std; a run on data of one's own was given its input normalised
        "normalisation": None if mean_std is None else {"mean": mean_std[0], "std": mean_std[1]},
        "features": None if cfg.features is None else features,
        "method": cfg.method,
        **{k: summary.get(k, "example" if k == "unit" else None) for k in FROM_SUMMARY},
        "how_to_load": load,
    }


def write(run_dir: Path, state_dict: dict[str, Any], cfg: TrainConfig, summary: dict[str, Any]) -> None:
    """model.pt and model.json, each written atomically."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    rundir.atomic_write_bytes(run_dir / MODEL, buf.getvalue())
    rundir.atomic_write_json(run_dir / MODEL_CARD, card(cfg, summary))


def export(run_dir: Path) -> Path:
    """model.pt/model.json of a complete run folder from its checkpoint (runs of older crepe
    versions wrote none); UsageError if the run is not complete or its checkpoint is not its own."""
    from crepe.training import state

    summary = rundir.read_summary(run_dir)
    if not rundir.is_complete(run_dir) or summary is None:
        raise UsageError(f"{run_dir} holds no complete run (summary.json with status complete): nothing to export")
    cfg = rundir.read_config(run_dir)
    ck = state.load(run_dir / rundir.CHECKPOINT, cfg=cfg, fingerprint=None)
    if ck["summary"] is not None and json.dumps(ck["summary"], sort_keys=True) != json.dumps(summary, sort_keys=True):
        raise UsageError(f"{run_dir}: the checkpoint's summary is not summary.json's: the folder is not one run")
    write(run_dir, ck["model"], cfg, summary)
    return run_dir / MODEL
