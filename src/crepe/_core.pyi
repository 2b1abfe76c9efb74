import numpy as np

BLOCK: int
LIST_BUDGET: int
OPENMP: bool

def select_per_class(
    X: np.ndarray,
    cls: np.ndarray,
    budgets: np.ndarray,
    method: int,
    threads: int,
    out_idx: np.ndarray,
    out_weight: np.ndarray,
    out_gain: np.ndarray,
    out_obj: np.ndarray,
    list_bytes: int = ...,
) -> None: ...
def resolve_threads(threads: int) -> int: ...
