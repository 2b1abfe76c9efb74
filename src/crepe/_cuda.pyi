import numpy as np

DEFAULT_BATCH: int

def select_per_class(
    X: int,
    f64: bool,
    n: int,
    d: int,
    cls: np.ndarray,
    budgets: np.ndarray,
    method: int,
    batch: int,
    device: int,
    stream: int,
    out_idx: np.ndarray,
    out_weight: np.ndarray,
    out_gain: np.ndarray,
    out_obj: np.ndarray,
    out_stats: np.ndarray,
) -> None: ...
def device_count() -> int: ...
def runtime_status() -> str: ...
