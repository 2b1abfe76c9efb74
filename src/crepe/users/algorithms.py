"""The user-level trainers' privacy facts, torch-free (the plan reads them; users/rounds.py trains).

Each round Poisson-samples users at q_u = users_per_round / U (ids and secret
randomness only), computes one update per unit, clips it to C, sums, adds
N(0, (sigma C)^2) and divides by the expected number of units (public):
- dp-sgd: a unit is a user; its update is the gradient of the mean loss over
  its examples. Sensitivity C.
- dp-fedavg: a unit is a user; its update is minus the model delta of
  local_epochs of local SGD from the global model. Sensitivity C.
- dp-fedemb: the sampled users, in an order drawn by a secret permutation,
  form virtual clients of K; each trains a freshly initialised head (never
  shared) and the backbone locally; the unit's update is minus the backbone
  delta. A null user changes its virtual client's clipped delta from one
  point of the C-ball to another: sensitivity 2C when K > 1, C when K = 1.
The ledger's noise multiplier is sigma C / sensitivity (docs/privacy.md, "User-level DP").
"""

from __future__ import annotations

from crepe.config import TrainConfig, UsageError


def sensitivity(cfg: TrainConfig) -> float:
    """One user's sensitivity, in units of the clip norm C."""
    return 2.0 if cfg.algorithm == "dp-fedemb" and cfg.virtual_client_size > 1 else 1.0


def check(cfg: TrainConfig) -> None:
    """UsageError for a user-level run this version cannot honour."""
    if cfg.privacy_unit != "user":
        return
    if cfg.method != "full":
        raise UsageError(f"--privacy-unit user trains on every sampled user's examples: --method full only "
                         f"(--method {cfg.method} has no user-level derivation here)")
    if cfg.virtual_client_size > cfg.users_per_round:
        raise UsageError(f"--virtual-client-size {cfg.virtual_client_size} exceeds --users-per-round "
                         f"{cfg.users_per_round}: allowed 1..{cfg.users_per_round}")
