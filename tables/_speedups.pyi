from collections.abc import Callable
from typing import Any

def configure(
    gamma: float,
    inv_log_gamma: float,
    min_magnitude: float,
    zero_key: int,
    negative_key: int,
    last_positive: int,
    max_buckets: int,
    collapse: Callable[[dict[int, int]], None],
) -> None: ...
def sketch_key(value: float) -> int: ...
def sketch_add(sketch: dict[int, int], value: float) -> None: ...
def summary_initialize(t_us: int, value: float, tags: dict[str, str] | None) -> list[Any]: ...
def summary_add(state: list[Any], t_us: int, value: float, tags: dict[str, str] | None) -> None: ...
def apply_windows(
    windows: dict[Any, list[Any]],
    changed: set[Any],
    specs: tuple[tuple[int, int, int], ...],
    device: str,
    metric: str,
    value: float,
    t_us: int,
    tags: dict[str, str] | None,
    watermark: int,
) -> list[tuple[Any, int]] | None: ...
def summary_text(state: list[Any]) -> tuple[str, ...]: ...
def hset(key: str, names: tuple[str, ...], values: tuple[str, ...]) -> bytes: ...
