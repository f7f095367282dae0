"""A window's hash in Redis as the tests read it, by the contract in README.md rather than by
the code under test: field ``window`` holds ``count sum min max mean first last p50 p95 p99
start end`` joined by single spaces, field ``v`` its version."""

from __future__ import annotations

from typing import Any

ORDER = ("count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99", "start", "end")


def window_text(stored: Any) -> dict[str, str] | None:
    """The window's fields as stored text, from its hash as HGETALL returns it (bytes);
    None for no window (an absent key). Fails on a hash with other fields."""
    held = {bytes(k): bytes(v) for k, v in stored.items()}
    if not held:
        return None
    held.pop(b"v", None)
    assert set(held) == {b"window"}, held
    values = held[b"window"].decode().split(" ")
    assert len(values) == len(ORDER), values
    return dict(zip(ORDER, values, strict=True))
