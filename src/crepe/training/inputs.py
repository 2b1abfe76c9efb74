"""What a run trains and evaluates on: the dataset, the classes held out of training, the users.

- --held-out-classes N: the N largest class labels leave the training split
  and the test split; their test examples are kept apart (`x_held`) for the
  embedding metrics (DESIGN.md section 11). Held out before users are formed;
  a dataset with users of its own (qmnist) keeps them, renumbered over the
  writers left.
- --users synthetic: the training split becomes synthetic writers
  (users/synthetic.py: sizes, label skew and one style per user, seeded by
  --user-seed; examples no user receives are dropped); the test split stays
  as it is. crepe.train passes user ids of its own (`with_user_ids`).
- --features scatternet: every image (train, test, held out) becomes its
  ScatterNet features (crepe/features.py), after the users are formed; crepe's
  datasets are mapped back to pixels in [0, 1] first, as the features' paper
  feeds them. No parameters, no data statistics: no privacy cost.
The user ids enter the data fingerprint, so a run resumes only on the same users.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import sys

import numpy as np
import torch

from crepe import data as data_mod
from crepe.config import TrainConfig, UsageError


def load_data(cfg: TrainConfig) -> data_mod.LoadedData:
    """The dataset of `cfg`, with its held-out classes, users and features."""
    return prepare(load_dataset(cfg), cfg)


def load_dataset(cfg: TrainConfig) -> data_mod.LoadedData:
    """The dataset as it is stored (qmnist with its writers), before anything `prepare` does."""
    if cfg.dataset == "qmnist":
        return qmnist(cfg)
    return data_mod.load(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset, test_subset=cfg.test_subset)


def qmnist(cfg: TrainConfig, *, cache: Path = data_mod.DEFAULT_CACHE) -> data_mod.LoadedData:
    """QMNIST's training digits with their NIST writers as users (the positions of the writers present,
    after --train-subset), k = 150 digits per writer as the dataset documents it, and its first 10,000
    test digits (MNIST's test set) as the test split."""
    from crepe.users.partition import renumber
    from crepe.users.qmnist import MAX_PER_WRITER, load_qmnist

    src = data_mod.resolve_source("qmnist", cfg.data_dir)
    train_subset, test_subset = cfg.train_subset, cfg.test_subset
    data_mod.check_subsets(src, train_subset=train_subset, test_subset=test_subset)  # before the images are read
    train = load_qmnist(split="train", folder=src.folder, cache=cache)
    test = load_qmnist(split="test10k", folder=src.folder, cache=cache, max_per_user=data_mod.QMNIST_TEST)  # its users unused
    x, y, ids = train.x, train.y, train.partition.user_ids
    x_te, y_te = test.x, test.y
    if train_subset is not None:
        x, y, ids = x[:train_subset], y[:train_subset], renumber(ids[:train_subset])
    if test_subset is not None:
        x_te, y_te = x_te[:test_subset], y_te[:test_subset]
    users = torch.from_numpy(ids.astype(np.int64))  # a writable copy (a partition's ids are read-only)
    source = f"{train.source}: {len(y)} train digits of {int(users.max()) + 1} NIST writers (the users) / {len(y_te)} test"
    return data_mod.LoadedData(x, y, x_te, y_te, split=src.split, source=source, user_ids=users,
                               fingerprint=data_mod.fingerprint(x, y, x_te, y_te, users), max_per_user=MAX_PER_WRITER)


def prepare(ds: data_mod.LoadedData, cfg: TrainConfig, *, user_ids: Any = None) -> data_mod.LoadedData:
    """Classes held out, then the users (synthetic writers, or `user_ids` for the training examples),
    then the features."""
    ds = with_users(hold_out(ds, cfg.held_out_classes), cfg, user_ids)
    return ds if cfg.features is None else featurise(ds, cfg)


def featurise(ds: data_mod.LoadedData, cfg: TrainConfig) -> data_mod.LoadedData:
    """Every image as its features (--features); crepe's datasets back in [0, 1] first."""
    from crepe import features

    mean, std = data_mod.channel_stats(cfg.dataset)  # data of one's own: as given
    say = (lambda line: print(line, file=sys.stderr, flush=True))

    def f(x: torch.Tensor | None, show: bool = False) -> torch.Tensor | None:
        return None if x is None else features.apply(cfg.features, x * std + mean, say=say if show else None)

    ds = replace(ds, x_train=f(ds.x_train, True), x_test=f(ds.x_test), x_held=f(ds.x_held),
                 source=f"{ds.source}, as {cfg.features} features")
    return _with(ds, ds.user_ids, ds.max_per_user, public=ds.max_per_user_public)


def with_users(ds: data_mod.LoadedData, cfg: TrainConfig, user_ids: Any) -> data_mod.LoadedData:
    """The users: synthetic writers, the dataset's own (qmnist), or `user_ids` of the caller."""
    if cfg.users == "synthetic":
        from crepe.users.synthetic import synthetic_writers

        w = synthetic_writers(ds.x_train, ds.y_train, users=cfg.user_count, size_sigma=cfg.user_size_sigma,
                              max_per_user=cfg.max_per_user, alpha=cfg.user_alpha, seed=cfg.user_seed)
        ds = replace(ds, x_train=w.x, y_train=torch.as_tensor(w.y, dtype=torch.int64),
                     source=f"{ds.source}, as {cfg.user_count} synthetic writers (--user-seed {cfg.user_seed}; "
                     f"{w.stats['dropped']} examples no user received dropped)")
        return _with(ds, torch.tensor(w.partition.user_ids), w.partition.max_per_user, public=True)
    if ds.user_ids is not None:  # the dataset's own users (qmnist's writers): k declared by --max-per-user or the dataset
        from crepe.users.partition import Partition

        k = ds.max_per_user if cfg.max_per_user is None else cfg.max_per_user
        p = Partition(ds.user_ids.numpy(), int(ds.user_ids.max()) + 1, k)
        return _with(ds, torch.tensor(p.user_ids), p.max_per_user, public=True)
    if user_ids is not None:
        from crepe.users.partition import Partition

        if cfg.held_out_classes:
            raise UsageError("held_out_classes with user_ids of your own: hold the classes out of your data yourself, "
                             "so that the ids stay one per training example")
        p = Partition.from_ids(np.asarray(user_ids), len(ds.y_train), max_per_user=cfg.max_per_user)
        return _with(ds, torch.tensor(p.user_ids), p.max_per_user, public=p.k_source == "declared")
    if cfg.max_per_user is not None:
        raise UsageError("--max-per-user is the most examples one user holds: it needs users (--users synthetic, "
                         "--dataset qmnist, or user_ids with crepe.train)")
    return ds


def hold_out(ds: data_mod.LoadedData, n: int) -> data_mod.LoadedData:
    if n == 0:
        return ds
    from crepe.users.embedding import held_out_split

    classes = torch.unique(torch.cat([ds.y_train, ds.y_test]))
    if n >= len(classes):
        raise UsageError(f"--held-out-classes {n} leaves no class to train on: allowed 0..{len(classes) - 1}")
    held = classes[-n:].tolist()
    train = torch.from_numpy(held_out_split(ds.y_train, held)[0])
    test = torch.from_numpy(held_out_split(ds.y_test, held)[0])
    ds = replace(ds, x_train=ds.x_train[train], y_train=ds.y_train[train], x_test=ds.x_test[test],
                 y_test=ds.y_test[test], x_held=ds.x_test[~test], y_held=ds.y_test[~test])
    if ds.user_ids is None:
        return _with(ds, None, None, public=True)
    from crepe.users.partition import renumber

    users = torch.from_numpy(renumber(ds.user_ids[train].numpy()))
    return _with(ds, users, ds.max_per_user, public=ds.max_per_user_public)


def _with(ds: data_mod.LoadedData, user_ids: torch.Tensor | None, k: int | None, *, public: bool) -> data_mod.LoadedData:
    ids = None if user_ids is None else user_ids.to(torch.int64)
    return replace(ds, user_ids=ids, max_per_user=k, max_per_user_public=public,
                   fingerprint=data_mod.fingerprint(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ids))
