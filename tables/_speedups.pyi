"""The C extension (tables/_speedups.c); its functions are defined in tables/_speedups_py.py."""

from collections.abc import Callable, Iterable
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
    /,
) -> None: ...
def summary_initialize(t_us: int, value: float, tags: dict[str, str] | None, /) -> list[Any]: ...
def summary_add(
    state: list[Any], t_us: int, value: float, tags: dict[str, str] | None, /
) -> None: ...
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
    /,
) -> list[tuple[Any, int]] | None: ...
def summary_text(state: list[Any], /) -> tuple[str, ...]: ...
def seconds_text(t_us: int, /) -> str: ...
def window_write(
    key: str,
    version: str,
    names: tuple[str, ...],
    values: tuple[str, ...],
    /,
) -> tuple[bytes, bytes, int]: ...
def open_view_writes(
    views: Iterable[tuple[Any, ...]],
    key_prefix: str,
    ttl_set: dict[str, tuple[int, float]],
    now: float,
    ttl: int,
    field: str,
    /,
) -> list[tuple[bytes, bytes, int]]: ...
def latest_writes(
    latest: Iterable[tuple[str, str, int, float, int]],
    key_prefix: str,
    ttl_set: dict[str, float],
    now: float,
    ttl: int,
    /,
) -> list[tuple[bytes, bytes, int]]: ...
def closed_window_writes(
    closed: Iterable[tuple[Any, ...]],
    closed_prefix: str,
    top_prefix: str,
    field: str,
    /,
) -> list[tuple[bytes, bytes, int]]: ...
def aggregate_records(
    closed: Iterable[Any], closed_window_json: Callable[[Any], bytes], /
) -> list[tuple[bytes, bytes]]: ...
def line_protocol_lines(
    closed: Iterable[Any], line_protocol: Callable[[Any], str], /
) -> list[str]: ...
def aggregates_entry(value: bytes, series: dict[bytes, Any], entry_type: type, /) -> Any: ...
def aggregates_line(value: bytes, heads: dict[bytes, Any], /) -> str | None: ...
def history_calls(
    entries: list[Any] | tuple[Any, ...],
    per_call: int,
    sha: str,
    first_key: str | None,
    tail: tuple[int, ...],
    /,
) -> list[bytes]: ...
def batch_records(
    batch: Iterable[Any], first_offset: int, topic: str, partition: int, record_type: type, /
) -> list[Any]: ...
def close_windows(
    keys: list[tuple[str, str, int, int]],
    end: int,
    windows: dict[tuple[str, str, int, int], list[Any]],
    closed: list[Any],
    changed: set[tuple[str, str, int, int]],
    removed: set[tuple[str, str, int, int]],
    newest: dict[tuple[str, str, int], int],
    views_changed: set[tuple[str, str, int]],
    open_per_key: dict[tuple[str, str], int],
    labels: tuple[str, ...],
    closed_type: type[tuple[Any, ...]],
    /,
) -> list[tuple[str, str]]: ...
def open_views(
    views_changed: set[tuple[str, str, int]],
    changed: set[tuple[str, str, int, int]],
    newest: dict[tuple[str, str, int], int],
    windows: dict[tuple[str, str, int, int], list[Any]],
    labels: tuple[str, ...],
    sizes: tuple[int, ...],
    closed: list[Any],
    view_type: type[tuple[Any, ...]],
    /,
) -> list[Any]: ...
def delta_rows(
    keys: Iterable[tuple[str, str, int, int]],
    windows: dict[tuple[str, str, int, int], list[Any]] | None,
    labels: tuple[str, ...],
    /,
) -> list[list[Any]]: ...
def update_latest(
    latest: dict[tuple[str, str], tuple[int, float]],
    changed: set[tuple[str, str]],
    device: str,
    metric: str,
    t_us: int,
    value: float,
    /,
) -> None: ...
def apply_common(
    records: list[Any],
    begin: int,
    max_bytes: int,
    max_future_us: int,
    valid_names: dict[str, str],
    loads: Callable[[bytes], Any],
    specs: tuple[tuple[int, int, int], ...],
    grace_us: int,
    position: list[int],
    windows: dict[Any, list[Any]],
    changed: set[Any],
    by_end: dict[int, list[Any]],
    ends: list[int],
    newest: dict[Any, int],
    views_changed: set[Any],
    open_per_key: dict[tuple[str, str], int],
    latest: dict[tuple[str, str], tuple[int, float]],
    latest_changed: set[tuple[str, str]],
    stops: dict[tuple[str, str], bool],
    admitted: dict[str, Any] | None,
    /,
) -> int: ...
