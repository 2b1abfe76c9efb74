"""The run plan: a new run's resolved configuration (sigma solved from a target epsilon)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crepe.config import TrainConfig


def resolved_threads(cfg: TrainConfig) -> TrainConfig:
    from dataclasses import replace

    import torch

    return cfg if cfg.threads is not None else replace(cfg, threads=torch.get_num_threads())


def new_run_config(given: dict[str, Any]) -> TrainConfig:
    """The resolved config of a new run: flags over preset over defaults; sigma solved from a target epsilon."""
    from crepe import data

    cfg = TrainConfig.from_flags(given).resolve()
    src = data.resolve_source(cfg.dataset, cfg.data_dir)  # fail before anything is written or torch loads
    data.check_subsets(src, train_subset=cfg.train_subset, test_subset=cfg.test_subset)
    if cfg.data_dir is not None:
        from dataclasses import replace

        cfg = replace(cfg, data_dir=str(Path(cfg.data_dir).resolve()))  # resume works from any folder
    if cfg.sigma is None:  # --target-epsilon: solve sigma on the planned ledger
        from crepe.privacy.calibration import calibrate
        from crepe.smallsets.sets import set_size

        ds = data.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset, test_subset=cfg.test_subset)
        y = ds.y_train.numpy()
        cfg = calibrate(cfg, n=len(y), set_size=set_size(y, cfg))
    return cfg
