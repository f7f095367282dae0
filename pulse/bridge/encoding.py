"""The bridge's round encoding: in C (pulse/bridge/_encode.c) when it is built and
``PULSE_NO_EXTENSIONS`` is not ``1`` (or ``all``), else the Python definitions
(pulse/bridge/_encode_py.py), which give the same bytes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from pulse.bridge import _encode_py
from pulse.bridge._encode_py import DONE, FULL, HEADER_SIZE, SLOW, batch, seal

__all__ = [
    "DONE",
    "FULL",
    "HEADER_SIZE",
    "IN_C",
    "SLOW",
    "append_record",
    "batch",
    "encode_entries",
    "seal",
]


def _extension() -> Any:
    if os.environ.get("PULSE_NO_EXTENSIONS", "").strip().lower() in ("1", "all"):
        return None
    try:
        from pulse.bridge import _encode  # type: ignore[attr-defined]
    except ImportError:
        warnings.warn(
            "pulse.bridge._encode is not built: the bridge encodes on its Python definitions",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _encode


_c = _extension()
IN_C = _c is not None
encode_entries: Callable[..., tuple[int, int]] = (
    _c.encode_entries if _c is not None else _encode_py.encode_entries
)
append_record: Callable[..., bool] = (
    _c.append_record if _c is not None else _encode_py.append_record
)
