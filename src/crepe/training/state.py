"""The checkpointed state of a run, and its checksummed file.

While a run is unfinished its checkpoint (`save`) holds the model, the
optimizer, the generator states of the DP noise, sampling and selection noise
(all past and future noise: MT19937's step is invertible, so a state replays
the draws before it too; as sensitive as the data, never publish it), the
current small set, a label fingerprint and the privacy ledger. When the run
finishes, `save_finished` replaces it by what may be published: model,
optimizer, config, ledger, metrics and the summary (unless --keep-secrets).
The file is a magic line, the SHA-256 of the payload, and the payload
(torch.save): a damaged file is refused, never trusted. On resume the ledger
is also checked against the append-only metrics.jsonl (see
`verify_against_metrics`) and against the ledger its configuration writes in
the epochs done (`verify_ledger`): the checksum is not a signature.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crepe.config import TrainConfig, UsageError
from crepe.dp.sampling import block_names
from crepe.privacy.accounting import epsilon
from crepe.privacy.ledger import Ledger
from crepe.smallsets.sets import Coreset
from crepe.training.rundir import atomic_write_bytes

MAGIC = b"crepe-checkpoint-3\n"
# Format 2 seeded its generators with Generator.manual_seed, which keeps 32 bits of a seed.
WEAK_SEEDS_MAGIC = b"crepe-checkpoint-2\n"
# the sampling blocks' generators draw DP-SGD's Poisson batches (dp/sampling.py); "sampler" user rounds and generation's
GENERATORS = ("sampler", "noise", "select", *block_names())


@dataclass
class RunState:
    """What changes as a run goes on (besides model and optimizer)."""

    epoch: int = 0
    coreset: Coreset | None = None
    ledger: Ledger = field(default_factory=Ledger)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    select_time_s: float = 0.0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    total_time_s: float = 0.0
    examples_seen: int = 0
    progress: dict[str, Any] | None = None  # a selection round saved part way (private-set: its generation state)
    synthetic: dict[str, Any] | None = None  # private-set: {"images", "labels"} once generated
    canaries: dict[str, Any] | None = None  # --audit-canaries: coordinates, inclusion, scores (secret)
    masks: dict[str, torch.Tensor] | None = None  # --sparsity: kept weights once the mask is taken (not secret)

    def to_dict(self) -> dict[str, Any]:
        """Primitives and tensors for the checkpoint (the coreset is saved apart)."""
        d = {k: v for k, v in vars(self).items() if k != "coreset"}
        d["ledger"] = self.ledger.to_list()
        d["generation"] = d.pop("progress")  # the key checkpoint format 3 has always used
        return d


def save(
    path: Path,
    *,
    config: dict[str, Any],
    fingerprint: str,
    model: torch.nn.Module,
    optimizer: Any,
    generators: dict[str, torch.Generator],
    state: RunState,
) -> None:
    """The checkpoint of an unfinished run: everything needed to continue it exactly (secret)."""
    c = state.coreset
    _write(path, {
        "config": config,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {k: g.get_state() for k, g in generators.items()},
        "coreset": None if c is None else {"indices": torch.from_numpy(c.indices), "gamma": torch.from_numpy(c.gamma)},
        "state": state.to_dict(),
        "summary": None,
    })


def save_finished(
    path: Path, *, config: dict[str, Any], model: torch.nn.Module, optimizer: Any, state: RunState, summary: dict[str, Any]
) -> None:
    """The checkpoint of a finished run, reduced to what may be published: the model and the
    optimizer state (post-processing of the noisy releases), config, ledger, metrics and summary.
    No generator state, no subset (indices, gamma), no realised sizes (examples_seen), no
    generation state, no label fingerprint: nothing to resume from, nothing to replay the noise."""
    _write(path, {
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": {"epoch": state.epoch, "ledger": state.ledger.to_list(), "metrics": state.metrics},
        "summary": summary,
    })


def _write(path: Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def load(path: Path, *, cfg: TrainConfig, fingerprint: str | None) -> dict[str, Any]:
    """The verified payload of `path`; UsageError (nothing changed) if it is damaged or foreign.
    A finished run's checkpoint has a summary (not None) and none of the secret parts.
    `fingerprint` None: the data is not checked (a reader of the model only)."""
    raw = path.read_bytes()
    if raw.startswith(WEAK_SEEDS_MAGIC):
        raise UsageError(
            f"{path} was written by crepe before checkpoint format 3: its noise, sampling and selection generators "
            "were seeded with only 32 bits of entropy (torch's manual_seed keeps the low 32 bits of a seed: 2^32 "
            "guesses replay its noise); it is not resumed: start a new run with another --out"
        )
    if not raw.startswith(MAGIC):
        raise UsageError(
            f"{path} is not a checkpoint of this crepe version (written by an older crepe, or damaged); "
            "it cannot be resumed: start a new run with another --out"
        )
    digest, body = raw[len(MAGIC) : len(MAGIC) + 64], raw[len(MAGIC) + 65 :]
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise UsageError(f"{path} is damaged (checksum mismatch): refusing to resume from it; the folder is left as it was")
    try:
        ck = torch.load(io.BytesIO(body), weights_only=True)
    except Exception as e:  # a checksummed payload that torch cannot read: still damaged
        raise UsageError(f"{path} cannot be read ({e}); the folder is left as it was") from None
    if ck["summary"] is None and fingerprint is not None and ck["fingerprint"] != fingerprint:
        raise UsageError(
            f"{path} was written for different data (fingerprint {ck['fingerprint']}, now {fingerprint}): check --data-dir"
        )
    if TrainConfig.from_dict(ck["config"]).identity() != cfg.identity():
        raise UsageError(f"{path} belongs to a different configuration than the run folder's config.json")
    try:
        Ledger.from_list(ck["state"]["ledger"])
    except (ValueError, KeyError) as e:
        raise UsageError(f"{path}: {e}; the folder is left as it was") from None
    return ck


def restore_state(ck: dict[str, Any]) -> RunState:
    c = ck["coreset"]
    coreset = None if c is None else Coreset(c["indices"].numpy(), c["gamma"].numpy())
    state = dict(ck["state"])
    state["ledger"] = Ledger.from_list(state["ledger"])
    state["progress"] = state.pop("generation", None)
    return RunState(coreset=coreset, **state)


def verify_ledger(state: RunState, expected: Ledger, *, where: Path) -> None:
    """The checkpoint's ledger must be, entry for entry, the ledger its plan writes in the epochs
    it has done, or in the part of a selection round it saved (`Plan.ledger`).
    The checksum only shows the file is intact, not that its ledger is the run's: a ledger edited
    to under-report (steps or rounds removed, sigma raised, q lowered, markers added) and re-signed,
    with metrics.jsonl edited to agree (or with no epoch recorded yet), is refused here."""
    if state.ledger != expected:
        done = f"{state.epoch} epochs" if state.progress is None else "the selection round it saved part way"
        raise UsageError(
            f"{where}: the checkpoint's privacy ledger is not the one its configuration writes in {done}: "
            "the ledger is damaged; the folder is left as it was"
        )


def verify_against_metrics(state: RunState, rows: list[dict[str, Any]], *, delta: float, accountant: str, where: Path) -> None:
    """The checkpoint and metrics.jsonl must tell the same story: metrics.jsonl is written after
    each checkpoint, so it holds the checkpoint's rows, or all but the last; and epsilon of the
    checkpoint's ledger must equal the epsilon its last epoch printed."""
    mine = state.metrics
    if len(rows) > len(mine) or len(rows) < len(mine) - 1 or rows != mine[: len(rows)]:
        raise UsageError(
            f"{where}: metrics.jsonl ({len(rows)} epochs) does not match the checkpoint ({len(mine)} epochs); "
            "the run folder cannot be trusted and is left as it was"
        )
    if mine:
        eps = epsilon(state.ledger, delta=delta, accountant=accountant)
        logged = mine[-1]["eps_total"]
        same = (math.isinf(eps) and logged is None) or (logged is not None and np.isclose(eps, logged, rtol=1e-9))
        if not same or state.epoch != len(mine):
            raise UsageError(
                f"{where}: the checkpoint's privacy ledger gives epsilon {eps}, but its epoch {state.epoch} "
                f"recorded {logged}: the ledger is damaged; the folder is left as it was"
            )
