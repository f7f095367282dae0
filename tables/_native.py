"""Where Pulse's hottest pure steps come from: the C extension, or their Python definitions.

Every caller imports these functions from here, never from ``tables._speedups`` (the C
extension, tables/_speedups.c) or ``tables._speedups_py`` (the Python definitions) directly.
Both have the same functions with the same results, so the choice changes speed only.

``PULSE_NO_EXTENSIONS`` (listed with the other variables in pulse/settings.py), read from the
environment once, when this module is first imported (before any Settings exist: set it in
the process's environment):

* unset, empty or ``0``: every function in C;
* ``1`` or ``all``: every function from the Python definitions, and the extension is not
  imported at all;
* a comma-separated list of function names (:data:`FUNCTIONS`), such as
  ``summary_text,window_write``: those from the Python definitions, the others in C (to measure
  what each one saves: bench/native.py).

Any other value raises ValueError naming the variable. When the extension is not built (a
package installed without a C compiler: its build is optional), Pulse warns once and runs
on the Python definitions.

:data:`PYTHON_ONLY` are the Python definitions of steps that the C functions also take
internally, with no C entry point from Python: called from Python they saved less than 5 %
of the worker's CPU (bench/README.md, "What each C speedup saves"), so only their Python
definitions are callable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from tables import _speedups_py
from tables._speedups_py import (
    Write,
    aggregate_records,
    aggregates_entry,
    aggregates_line,
    apply_common,
    apply_windows,
    batch_records,
    close_windows,
    closed_window_writes,
    delta_rows,
    history_calls,
    latest_writes,
    line_protocol_lines,
    open_view_writes,
    open_views,
    parse_common,
    seconds_text,
    sketch_add,
    sketch_key,
    summary_add,
    summary_initialize,
    summary_text,
    update_latest,
    window_write,
)

__all__ = [
    "FUNCTIONS",
    "IN_C",
    "PYTHON_ONLY",
    "Write",
    "aggregate_records",
    "aggregates_entry",
    "aggregates_line",
    "apply_common",
    "apply_windows",
    "batch_records",
    "close_windows",
    "closed_window_writes",
    "configure",
    "delta_rows",
    "history_calls",
    "latest_writes",
    "line_protocol_lines",
    "open_view_writes",
    "open_views",
    "parse_common",
    "seconds_text",
    "sketch_add",
    "sketch_key",
    "summary_add",
    "summary_initialize",
    "summary_text",
    "update_latest",
    "window_write",
]

VARIABLE = "PULSE_NO_EXTENSIONS"

FUNCTIONS = (
    "summary_initialize",
    "summary_add",
    "apply_windows",
    "summary_text",
    "seconds_text",
    "window_write",
    "open_view_writes",
    "latest_writes",
    "closed_window_writes",
    "history_calls",
    "aggregate_records",
    "line_protocol_lines",
    "aggregates_entry",
    "aggregates_line",
    "close_windows",
    "open_views",
    "delta_rows",
    "update_latest",
    "apply_common",
    "batch_records",
)
"""The functions the switch chooses (the extension's ``configure`` is not one: it configures
whichever side is in use)."""

PYTHON_ONLY = ("sketch_key", "sketch_add", "parse_common")
"""Steps the C functions take internally, callable from Python only as their Python
definitions (see the module's docstring)."""


def left_out(text: str) -> frozenset[str]:
    """The functions a value of ``PULSE_NO_EXTENSIONS`` takes from the Python definitions."""
    text = text.strip()
    if text in ("", "0"):
        return frozenset()
    if text.lower() in ("1", "all"):
        return frozenset(FUNCTIONS)
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names.difference(FUNCTIONS))
    if unknown:
        raise ValueError(
            f"{VARIABLE}={text!r}: no function {', '.join(unknown)}; use 1 (all of them) or "
            f"names among {', '.join(FUNCTIONS)}"
        )
    return frozenset(names)


def _extension(wanted: bool) -> ModuleType | None:
    """The C extension, or None when no function is wanted from it or it is not built."""
    if not wanted:
        return None
    try:
        from tables import _speedups
    except ImportError as exc:
        warnings.warn(
            f"Pulse runs without its C speedups ({exc}): every step runs on its Python "
            "definition, with the same results, more slowly. Install Pulse with a C compiler "
            "and the Python headers to build them.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _speedups


_LEFT_OUT = left_out(os.environ.get(VARIABLE, ""))
_extension_module = _extension(len(_LEFT_OUT) < len(FUNCTIONS))

IN_C: frozenset[str] = (
    frozenset() if _extension_module is None else frozenset(FUNCTIONS) - _LEFT_OUT
)
"""The functions running in C in this process."""

if _extension_module is not None:
    _chosen: dict[str, Any] = {name: getattr(_extension_module, name) for name in IN_C}
    globals().update(_chosen)


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
) -> None:
    """QuantileSketch's constants, for both sides: a function from the Python definitions may
    run next to others in C."""
    constants = (gamma, inv_log_gamma, min_magnitude, zero_key, negative_key, last_positive)
    _speedups_py.configure(*constants, max_buckets, collapse)
    if _extension_module is not None:
        _extension_module.configure(*constants, max_buckets, collapse)
