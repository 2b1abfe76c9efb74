"""A user partition: the user of every training example, and the public maximum k per user.

Rules a caller can trip on (each breach is a UsageError naming it):
- user ids are a 1-D integer array with one id per example (length n);
- users are 0..U-1 and every one of them holds at least one example: an id in 0..U-1 with no
  example is refused, not silently dropped. Arbitrary ids (names, NIST writer numbers) are
  remapped by the caller to the positions of their sorted unique values,
  `renumber(ids)` (`np.unique(ids, return_inverse=True)[1]`), as qmnist.py does;
- no user holds more than k examples. k is public only when it is fixed without looking at
  the data (`k_source="declared"`). `from_ids` without `max_per_user` takes k as the largest
  user's size (`k_source="data"`): a fact about the data, public only if the ids themselves
  are, so a user-level accounting should declare k instead.

`stats()` describes a partition by counts only (never an example, never a user's labels). It
is still computed from the data without noise: it is for the experimenter's log, not a DP
release.

Imports nothing of crepe but config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crepe.config import UsageError, check_choice

K_SOURCES = ("declared", "data")


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def int_array(what: str, values: Any) -> np.ndarray:
    """`values` as a fresh (n,) int64 array, refused unless it is 1-D, non-empty and of integers."""
    a = np.asarray(values)
    if a.ndim != 1 or a.dtype.kind not in "iu" or a.size == 0:
        raise UsageError(
            f"{what} must be a non-empty 1-D array of integers; got shape {a.shape} of dtype {a.dtype}"
        )
    return a.astype(np.int64)


def renumber(ids: Any) -> np.ndarray:
    """Arbitrary user ids (NIST writer numbers, the ids left after a subset) as 0..U-1: the
    positions of their sorted unique values."""
    return np.unique(int_array("user ids", ids), return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True, eq=False)
class Partition:
    """User ids of n examples (read-only int64), U users (0..U-1, each with >= 1 example) and k."""

    user_ids: np.ndarray  # (n,) int64
    users: int  # U
    max_per_user: int  # k: no user holds more than k examples
    k_source: str = "declared"  # "declared": fixed by the caller; "data": the largest user's size

    def __post_init__(self) -> None:
        ids = int_array("user ids", self.user_ids)
        if ids.min() < 0:
            i = int(np.argmin(ids))
            raise UsageError(f"user ids must be >= 0 (users are 0..U-1); example {i} has id {ids[i]}")
        if not is_int(self.users) or self.users < 1:
            raise UsageError(f"users (U) must be an integer >= 1; got {self.users!r}")
        if ids.max() >= self.users:
            raise UsageError(f"user ids must be in 0..{self.users - 1} for U = {self.users}; found id {ids.max()}")
        sizes = np.bincount(ids, minlength=self.users)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            raise UsageError(
                f"users must be 0..U-1 with every user holding at least one example: {empty.size} of "
                f"0..{self.users - 1} hold none (first: user {empty[0]}); remap arbitrary ids to "
                "np.unique(ids, return_inverse=True)[1]"
            )
        if not is_int(self.max_per_user) or self.max_per_user < 1:
            raise UsageError(f"max_per_user (k) must be an integer >= 1; got {self.max_per_user!r}")
        if sizes.max() > self.max_per_user:
            u = int(np.argmax(sizes))
            raise UsageError(
                f"user {u} holds {sizes[u]} examples, more than max_per_user k = {self.max_per_user}: "
                f"every user must hold 1..{self.max_per_user} examples"
            )
        check_choice("k_source", self.k_source, K_SOURCES)
        ids.flags.writeable = False
        object.__setattr__(self, "user_ids", ids)
        object.__setattr__(self, "users", int(self.users))
        object.__setattr__(self, "max_per_user", int(self.max_per_user))

    @classmethod
    def from_ids(cls, ids: Any, n: int, *, max_per_user: int | None = None) -> Partition:
        """The partition of n examples by the user ids a caller brings (users 0..max id).

        `max_per_user` None takes k from the data (the largest user's size, `k_source="data"`)."""
        a = int_array("user ids", ids)
        if not is_int(n) or n < 1:
            raise UsageError(f"n (the number of examples) must be an integer >= 1; got {n!r}")
        if len(a) != n:
            raise UsageError(f"user ids hold {len(a)} entries for n = {n} examples: one id per example")
        if a.min() < 0:  # before U = max id + 1 is read from them
            i = int(np.argmin(a))
            raise UsageError(f"user ids must be >= 0 (users are 0..U-1); example {i} has id {a[i]}")
        if max_per_user is None:
            return cls(a, int(a.max()) + 1, int(np.bincount(a).max()), "data")
        return cls(a, int(a.max()) + 1, max_per_user, "declared")

    @property
    def n(self) -> int:
        return len(self.user_ids)

    def sizes(self) -> np.ndarray:
        """(U,) int64: examples per user."""
        return np.bincount(self.user_ids, minlength=self.users)

    def stats(self, labels: Any = None) -> dict[str, Any]:
        """Counts only, JSON-able: U, n, k and where k comes from, a summary of examples per user,
        a histogram of user sizes (bins [1, 2), [2, 4), [4, 8), ... up to k), and, given the n
        labels, a summary of the number of distinct labels per user."""
        sizes = self.sizes()
        edges = [1 << i for i in range(self.max_per_user.bit_length())] + [self.max_per_user + 1]
        counts, _ = np.histogram(sizes, bins=edges)
        out: dict[str, Any] = {
            "users": self.users,
            "examples": self.n,
            "max_per_user": self.max_per_user,
            "max_per_user_source": self.k_source,
            "examples_per_user": _summary(sizes),
            "user_size_histogram": {"edges": edges, "counts": [int(c) for c in counts]},
        }
        if labels is not None:
            y = int_array("labels", labels)
            if len(y) != self.n or y.min() < 0:
                raise UsageError(f"labels must be {self.n} integers >= 0, one per example; got {len(y)}")
            classes = int(y.max()) + 1
            distinct = np.bincount(np.unique(self.user_ids * classes + y) // classes, minlength=self.users)
            out["labels_per_user"] = _summary(distinct)
        return out


def _summary(a: np.ndarray) -> dict[str, int | float]:
    return {"min": int(a.min()), "median": float(np.median(a)), "mean": float(a.mean()), "max": int(a.max())}
