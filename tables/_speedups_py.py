"""The Python definitions of the C extension ``tables._speedups``, one function for each,
and of the steps its functions take internally that Python calls too (sketch_key,
sketch_add, parse_common: tables._native.PYTHON_ONLY).

Every function here has the name, the positional-only signature and the results of its C
counterpart: the same float operations in the same order (a C double is a Python float),
floats written by ``repr``, the same objects built in the same containers in the same order,
and the same exception types for the bad arguments the callers could pass. The C module is
an optimisation of this one and nothing else: tests/tables/test_speedups.py holds the two
equal on generated inputs, and ``PULSE_NO_EXTENSIONS`` (see tables/_native.py) runs Pulse on
these instead. Callers import the functions from tables._native, never from here or from
the extension.

The state the functions build is the plain lists, dicts and tuples tables/ documents
(tables/aggregators.py: the Summary state; tables/partition_state.py: the window indexes),
so recovery, snapshots and the rest of tables/ work on it whichever side built it. The C
side takes the objects that live on in the state off the cyclic collector; that is not
visible in any result.
"""

from __future__ import annotations

import heapq
import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

from models.outputs import AGGREGATES

# The Summary state's layout (tables/aggregators.py).
_COUNT, _SUM, _MIN, _MAX, _FIRST_T, _FIRST_V, _LAST_T, _LAST_V, _LAST_TAGS, _SKETCH = range(10)

_NO_WATERMARK = -(2**63)
"""PartitionState's watermark before any reading (tables/partition_state.NO_WATERMARK)."""

_KEY_BYTES = 1024
"""The longest Redis key, in UTF-8 bytes, the write builders write."""
_NAME_BYTES = 128
"""The longest metric name, in UTF-8 bytes, of a latest value's field."""
_VERSION_BYTES = 128
"""The longest version of a Redis write, in bytes."""
_MAX_FIELDS = 64
_MAX_SPECS = 64
_MAX_REALISTIC_VALUE = 1e290
"""models.reading.MAX_ABS_VALUE: readings beyond it are not the common reading."""
_MAX_COMMON_T_US = 4_000_000_000_000_000
"""The latest event time of the common reading (year 2096); later ones go to parse_reading."""

# QuantileSketch's constants, handed over by configure() so they are defined once.
_gamma = 0.0
_inv_log_gamma = 0.0
_min_magnitude = 0.0
_zero_key = 0
_negative_key = 0
_last_positive = 0
_max_buckets = 0
_collapse: Callable[[dict[int, int]], None] | None = None


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
    """Take QuantileSketch's constants (tables/aggregators.py), once, before any other call."""
    global _gamma, _inv_log_gamma, _min_magnitude, _zero_key, _negative_key, _last_positive
    global _max_buckets, _collapse
    _gamma, _inv_log_gamma, _min_magnitude = gamma, inv_log_gamma, min_magnitude
    _zero_key, _negative_key, _last_positive = zero_key, negative_key, last_positive
    _max_buckets = max_buckets
    _collapse = collapse


# -- the quantile sketch and the Summary state --------------------------------------------------


def sketch_key(value: float, /) -> int:
    """QuantileSketch.key: the bucket of a value::

    ceil(log(value) / log(GAMMA))                 value > MIN_MAGNITUDE
    ceil(log(-value) / log(GAMMA)) + NEGATIVE     value < -MIN_MAGNITUDE
    ZERO                                          otherwise
    """
    value = float(value)
    if value > _min_magnitude:
        return math.ceil(math.log(value) * _inv_log_gamma)
    if value < -_min_magnitude:
        return math.ceil(math.log(-value) * _inv_log_gamma) + _negative_key
    return _zero_key


def sketch_add(sketch: dict[int, int], value: float, /) -> None:
    """QuantileSketch.add: count a value in its bucket; beyond MAX_BUCKETS buckets the lowest
    two are merged (QuantileSketch._collapse)."""
    if not isinstance(sketch, dict):
        raise TypeError("sketch_add(sketch: dict, value: float)")
    key = sketch_key(value)
    sketch[key] = sketch.get(key, 0) + 1
    if len(sketch) > _max_buckets:
        assert _collapse is not None, "configure() first"
        _collapse(sketch)


def summary_initialize(t_us: int, value: float, tags: dict[str, str] | None, /) -> list[Any]:
    """Summary.initialize: the state of a window holding one reading."""
    sketch: dict[int, int] = {}
    sketch_add(sketch, value)
    return [1, value, value, value, t_us, value, t_us, value, tags, sketch]


def summary_add(state: list[Any], t_us: int, value: float, tags: dict[str, str] | None, /) -> None:
    """Summary.add: one more reading in a window's state. The sum adds in processing order;
    ``first`` moves only to an earlier event time, ``last`` (with its tags) to an equal or
    later one."""
    if not isinstance(state, list) or len(state) < 10:
        raise TypeError("a Summary state (list) is expected")
    v = float(value)
    state[_COUNT] += 1
    state[_SUM] = float(state[_SUM]) + v
    if v < state[_MIN]:
        state[_MIN] = value
    if v > state[_MAX]:
        state[_MAX] = value
    if t_us < state[_FIRST_T]:
        state[_FIRST_T] = t_us
        state[_FIRST_V] = value
    if t_us >= state[_LAST_T]:
        state[_LAST_T] = t_us
        state[_LAST_V] = value
        state[_LAST_TAGS] = tags
    sketch = state[_SKETCH]
    if not isinstance(sketch, dict):
        raise TypeError("the sketch must be a dict")
    sketch_add(sketch, v)


def _window_math(specs: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
    """The (index, size, step) of the tumbling and hopping specs, checked."""
    if not isinstance(specs, tuple) or len(specs) > _MAX_SPECS:
        raise TypeError("specs: a tuple of at most 64 (index, size, step)")
    for _, size, step in specs:
        if size <= 0 or step <= 0:
            raise ValueError("a window's size and step must be positive")
    return specs


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
) -> list[tuple[Any, int]] | None:
    """PartitionState.apply's tumbling and hopping windows: the reading at event time t_us
    into every window of the specs ((index, size, step) each) that contains it and is still
    open (its end after the watermark), opening the ones not open yet (Summary.initialize)
    and adding to the others (Summary.add); every window it went into joins ``changed``.

    None if it went into no window (late for all of them), else the (key, end) of the
    windows it opened, in order: key = (device, metric, index, start).
    """
    if not isinstance(windows, dict) or not isinstance(changed, set):
        raise TypeError(
            "apply_windows(windows: dict, changed: set, specs, device, metric, value, t, tags, "
            "watermark)"
        )
    opened: list[tuple[Any, int]] | None = None
    applied = 0
    for index, size, step in _window_math(specs):
        last = t_us // step * step
        start = last if step == size else (t_us - size) // step * step + step
        while start <= last:
            end = start + size
            if end > watermark:
                key = (device, metric, index, start)
                state = windows.get(key)
                if state is None:
                    windows[key] = summary_initialize(t_us, value, tags)
                    if opened is None:
                        opened = []
                    opened.append((key, end))
                else:
                    summary_add(state, t_us, value, tags)
                changed.add(key)
                applied += 1
            start += step
    if not applied:
        return None
    return opened if opened is not None else []


def _representative(key: int) -> float:
    """QuantileSketch.value: the representative value of a bucket (infinite past the floats,
    for a bucket of a magnitude above about 1.78e308 / 1.01)."""
    if key == _zero_key:
        return 0.0
    try:
        if key > _last_positive:
            return -2 * _gamma ** (key - _negative_key) / (_gamma + 1)
        return 2 * _gamma**key / (_gamma + 1)
    except OverflowError:
        return -math.inf if key > _last_positive else math.inf


def _order(key: int) -> int:
    """QuantileSketch._order: sorts bucket keys in the order of their values."""
    if key <= _last_positive:
        return key
    if key == _zero_key:
        return -(1 << 20)
    return -(1 << 21) - (key - _negative_key)


def _quantiles(sketch: dict[int, int], count: int) -> tuple[float, float, float]:
    """QuantileSketch.quantiles for (0.50, 0.95, 0.99): of the value of rank
    floor(q * (count - 1)), the representative of its bucket."""
    if not isinstance(sketch, dict):
        raise TypeError("the sketch must be a dict")
    if len(sketch) == 1:
        for key in sketch:
            value = _representative(key)
            return value, value, value
    if not sketch:
        raise ValueError("empty sketch")
    ordered = sorted(sketch)
    if ordered[-1] > _last_positive:  # negative values or zero: keys do not sort as values
        ordered.sort(key=_order)
    out = []
    last = len(ordered) - 1
    for level in (0.50, 0.95, 0.99):
        rank = level * float(count - 1)
        seen = 0
        at = 0
        for at, key in enumerate(ordered):  # noqa: B007 - the bucket where the rank falls
            seen += sketch[key]
            if seen > rank:
                break
        else:
            at = last
        out.append(_representative(ordered[at]))
    return out[0], out[1], out[2]


# -- the aggregates' text -----------------------------------------------------------------------


def summary_text(state: list[Any], /) -> tuple[str, ...]:
    """Summary.text: the aggregates in the order of models.outputs.AGGREGATES as every output
    writes them: the count in decimal, the rest the repr of Summary.values. Every one is a
    finite number: the readings are (models.reading.MAX_ABS_VALUE bounds them so that no sum
    overflows), and so are the sum, the mean and the percentiles (kept within min and max)."""
    if not isinstance(state, list) or len(state) < 10:
        raise TypeError("a Summary state (list) is expected")
    count = state[_COUNT]
    total = float(state[_SUM])
    low = float(state[_MIN])
    high = float(state[_MAX])
    first = float(state[_FIRST_V])
    last = float(state[_LAST_V])
    if count < 1:
        raise ValueError("a window state counts at least one reading")
    if count == 1 and total != 0.0:
        # Every aggregate is the one value (but for -0.0: the zero bucket gives 0.0).
        one = repr(total)
        return ("1", one, one, one, one, one, one, one, one, one)
    p50, p95, p99 = _quantiles(state[_SKETCH], count)
    mean = total / count
    return (
        str(count),
        repr(total),
        repr(low),
        repr(high),
        repr(mean),
        repr(first),
        repr(last),
        repr(low if p50 < low else high if p50 > high else p50),
        repr(low if p95 < low else high if p95 > high else p95),
        repr(low if p99 < low else high if p99 > high else p99),
    )


def seconds_text(t_us: int, /) -> str:
    """models.outputs' event time as text: epoch microseconds as epoch seconds, an integer
    when whole, else the repr of the nearest float (1795315444250000 -> 1795315444.25)."""
    whole, rest = divmod(t_us, 1_000_000)
    return str(whole) if rest == 0 else repr(t_us / 1_000_000)


# -- Redis writes -------------------------------------------------------------------------------
#
# Every Redis write is fenced by Pulse's fence script (pulse/sinks/redis.py, FENCE_SCRIPT,
# which says what it guarantees). The functions here build the writes of single keys; the
# sink packs consecutive ones into EVALSHA calls of many keys each (fenced_calls):
#
#     EVALSHA {script} {2K} {key1} {{key1}}:v ... {keyK} {{keyK}}:v {ttl} {write1} ... {writeK}
#
# ``{key}:v`` in braces is the hash kept beside the key, in the key's Redis Cluster slot (a
# top key's versions, an open window's tombstone; a window's and a metric's versions are
# fields of their own hash: the script decides). A key's write is ``{kind} {refresh} {n}``
# and its n arguments; refresh is 1 to set the key's TTL. Per kind, the arguments:
#
# * ``w`` (a window's hash): its version, then its fields and values; none: remove the key;
# * ``f`` (a device's hash): per metric its version, metric, value, ``{metric}:ts``, time;
# * ``z`` (a top sorted set): per member its version, score, member.
#
# A version is decimal integers joined by ":" (``inf`` above every integer), compared in order.
#
# A write is the tuple ``(keys, args, argc)``: ``keys`` the RESP bulk strings of the key and
# ``{key}:v``, ``args`` those of ``kind refresh n arg...``, ``argc`` how many bulk strings
# ``args`` holds (3 + n). Bulk strings are packed as hiredis.pack_command packs them:
# ``$<len>\r\n<bytes>\r\n``.

Write = tuple[bytes, bytes, int]
"""A key's fenced write: (keys, args, argc), see above."""

_LONG_LONG = 2**63


def _bulks(parts: Iterable[bytes]) -> bytes:
    """Bulk strings in RESP: ``$<len>``, CRLF, the part, CRLF, for each part."""
    return b"".join([b"$%d\r\n%s\r\n" % (len(part), part) for part in parts])


def _write(key: bytes, kind: bytes, refresh: bool, args: list[bytes]) -> Write:
    """The fenced write of ``key``: its keys (key, ``{key}:v``) and ``kind refresh n args``."""
    head = [kind, b"1" if refresh else b"0", b"%d" % len(args)]
    return _bulks([key, b"{" + key + b"}:v"]), _bulks([*head, *args]), 3 + len(args)


def _long_long(n: Any) -> int:
    """An int argument as C reads it (PyLong_AsLongLong): TypeError unless it is an integer
    (``__index__``), OverflowError beyond a signed 64-bit integer."""
    value = operator.index(n)
    if not -_LONG_LONG <= value < _LONG_LONG:
        raise OverflowError("Python int too large to convert to C long long")
    return value


def _future(max_future_us: Any) -> int:
    """PULSE_MAX_FUTURE in microseconds as C reads it: a long long, at least 0."""
    value = _long_long(max_future_us)
    if value < 0:
        raise ValueError("max_future_us must be at least 0")
    return value


def _double(x: Any) -> float:
    """A float argument as C reads it (PyFloat_AsDouble): a float, or what ``__float__`` or
    ``__index__`` makes of it; TypeError for anything else (float() would also read text)."""
    if isinstance(x, float):
        return float(x)
    kind = type(x)
    if hasattr(kind, "__float__"):
        return float(x)
    if hasattr(kind, "__index__"):
        return float(operator.index(x))
    raise TypeError(f"must be real number, not {kind.__name__}")


def _fields(names: tuple[str, ...], values: Iterable[str]) -> list[bytes]:
    """``name value ...`` from str names and values."""
    if len(names) > _MAX_FIELDS:
        raise ValueError("at most 64 fields")
    parts = []
    for name, value in zip(names, values):  # noqa: B905 - as many values as names
        if name.__class__ is not str and not isinstance(name, str):
            raise TypeError("window_write takes str names and values")
        if value.__class__ is not str and not isinstance(value, str):
            raise TypeError("window_write takes str names and values")
        parts.append(name.encode())
        parts.append(value.encode())
    return parts


def _window_field(field: Any, values: tuple[str, ...]) -> list[bytes]:
    """``field`` and the window's 12 values (the 10 aggregates' text, start, end) joined by
    single spaces: the one field a window's hash holds beside its version."""
    if not isinstance(field, str):
        raise TypeError("the window's field must be a str")
    for value in values:
        if not isinstance(value, str):
            raise TypeError("a window's values are str")
    return [field.encode(), " ".join(values).encode()]


def _version(first: Any, second: Any) -> bytes:
    """The version ``{first}:{second}`` (each as str() writes it), at most 128 bytes."""
    version = f"{first}:{second}".encode()
    if len(version) > _VERSION_BYTES:
        raise ValueError("a version longer than 128 bytes")
    return version


def window_write(
    key: str,
    version: str,
    names: tuple[str, ...],
    values: tuple[str, ...],
    /,
) -> Write:
    """The fenced write of a window's hash (kind ``w``, refresh 1): ``version name value
    ...`` (``HSET key name value ... v version`` unless the key's stored version is newer,
    with its TTL set)."""
    if not isinstance(key, str) or not isinstance(version, str):
        raise TypeError("window_write() arguments 1 and 2 must be str")
    if not isinstance(names, tuple) or not isinstance(values, tuple):
        raise TypeError("window_write() arguments 3 and 4 must be tuples")
    if len(names) != len(values):
        raise ValueError("names and values differ in length")
    key_bytes = key.encode()
    if len(key_bytes) > _KEY_BYTES:
        raise ValueError("a key longer than 1024 bytes")
    version_bytes = version.encode()
    if len(version_bytes) > _VERSION_BYTES:
        raise ValueError("a version longer than 128 bytes")
    return _write(key_bytes, b"w", True, [version_bytes, *_fields(names, values)])


def _series_key(prefix: str, window: tuple[Any, ...]) -> str:
    """``{prefix}{window}:{device}:{metric}`` of an OpenView or ClosedWindow."""
    key = f"{prefix}{window[2]}:{window[0]}:{window[1]}"
    if len(key) > _KEY_BYTES // 4 and len(key.encode()) > _KEY_BYTES:
        raise ValueError("a key longer than 1024 bytes")
    return key


def _text_of(window: tuple[Any, ...]) -> tuple[str, ...]:
    """The aggregates' text of a view or closed window: the drain's, or made now."""
    text = window[6]
    if text is None:
        text = summary_text(window[5])
    if not isinstance(text, tuple) or len(text) != 10:
        raise TypeError("an aggregate text of 10 str is expected")
    return text


def open_view_writes(
    views: Iterable[tuple[Any, ...]],
    key_prefix: str,
    ttl_set: dict[str, tuple[int, float]],
    now: float,
    ttl: int,
    field: str,
    /,
) -> list[Write]:
    """RedisSink's writes of open views, one fenced write (kind ``w``) each, in order. Per
    view, with key = ``{key_prefix}{window}:{device}:{metric}``:

    * no open window (state None): the key's removal, version ``{start}:inf`` (the view's
      start is the one of the window whose close left the series without one), refresh 1;
      the key leaves ``ttl_set``;
    * otherwise its hash, version ``{start}:{count}``, with ``field`` = the 10 aggregates'
      text, start and end joined by single spaces; refresh is 1 unless ``ttl_set`` holds
      (start, time) for the key with this window's start and a time at most ttl / 2 before
      ``now``, and when it is 1 ``ttl_set[key]`` becomes (start, now).
    """
    if not isinstance(key_prefix, str) or not isinstance(ttl_set, dict):
        raise TypeError(
            "open_view_writes(views, key_prefix: str, ttl_set: dict, now: float, ttl: int, "
            "field: str)"
        )
    if not isinstance(field, str):
        raise TypeError(
            "open_view_writes(views, key_prefix: str, ttl_set: dict, now: float, ttl: int, "
            "field: str)"
        )
    now = _double(now)
    ttl = _long_long(ttl)
    half = ttl / 2
    out: list[Write] = []
    for view in views:
        if not isinstance(view, tuple) or len(view) < 7:
            raise TypeError("an OpenView is expected")
        key = _series_key(key_prefix, view)
        key_bytes = key.encode()
        state = view[5]
        start = view[3]
        if state is None:
            out.append(_write(key_bytes, b"w", True, [_version(start, "inf")]))
            ttl_set.pop(key, None)
            continue
        text = _text_of(view)
        values = (*text, seconds_text(start), seconds_text(view[4]))
        known = ttl_set.get(key)
        refresh = (
            known is None
            or not isinstance(known, tuple)
            or len(known) != 2
            or known[0] != start
            or now - _double(known[1]) > half
        )
        version = _version(start, text[0])
        out.append(_write(key_bytes, b"w", refresh, [version, *_window_field(field, values)]))
        if refresh:
            ttl_set[key] = (start, now)
    return out


def latest_writes(
    latest: Iterable[tuple[str, str, int, float, int]],
    key_prefix: str,
    ttl_set: dict[str, float],
    now: float,
    ttl: int,
    /,
) -> list[Write]:
    """RedisSink's writes of latest values (models.outputs.Latest: device, metric, t_us,
    value, offset). One fenced write (kind ``f``) per device, in the order its first value
    comes, to key ``{key_prefix}{device}``: per metric, in the order each first comes, with
    its newest (last) value: version ``{t_us}:{offset}``, the metric, the value,
    ``{metric}:ts``, the time in seconds. Refresh is 1 if ``ttl_set`` has no time for the
    device or one more than ttl / 2 before ``now``, and ``ttl_set[device]`` then becomes
    ``now``."""
    if not isinstance(key_prefix, str) or not isinstance(ttl_set, dict):
        raise TypeError(
            "latest_writes(latest, key_prefix: str, ttl_set: dict, now: float, ttl: int)"
        )
    now = _double(now)
    half = _long_long(ttl) / 2
    by_device: dict[str, dict[str, tuple[str, str, int, float, int]]] = {}
    for entry in latest:
        if not isinstance(entry, tuple) or len(entry) != 5:
            raise TypeError("a Latest (device, metric, t_us, value, offset) is expected")
        metrics = by_device.get(entry[0])
        if metrics is None:
            metrics = by_device[entry[0]] = {}
        metrics[entry[1]] = entry
    out: list[Write] = []
    for device, metrics in by_device.items():
        key = (key_prefix + device).encode()
        if len(key) > _KEY_BYTES:
            raise ValueError("a device key longer than 1024 bytes")
        set_at = ttl_set.get(device)
        refresh = set_at is None or now - _double(set_at) > half
        parts: list[bytes] = []
        for metric, entry in metrics.items():
            value = entry[3]
            if not isinstance(value, float):
                raise TypeError("a latest value is a float")
            name = metric.encode()
            if len(name) > _NAME_BYTES:
                raise ValueError("a metric name longer than 128 bytes")
            parts += (_version(entry[2], entry[4]), name, float.__repr__(value).encode())
            parts += (name + b":ts", seconds_text(entry[2]).encode())
        out.append(_write(key, b"f", refresh, parts))
        if refresh:
            ttl_set[device] = now
    return out


def closed_window_writes(
    closed: Iterable[tuple[Any, ...]],
    closed_prefix: str,
    top_prefix: str,
    field: str,
    /,
) -> list[Write]:
    """RedisSink's writes of closed windows. Of the windows of a series (window, device,
    metric), the one with the latest start; per series, in the order it first comes, with
    key = ``{closed_prefix}{window}:{device}:{metric}``: its fenced hash (kind ``w``,
    refresh 1), version ``{start}:{count}``, with ``field`` = the aggregates' text, start and
    end joined by single spaces; and
    (version, mean, device) joins the members of ``{top_prefix}{window}:{metric}``. Then per
    top key, in the order it first comes, its fenced members (kind ``z``, refresh 1)."""
    if (
        not isinstance(closed_prefix, str)
        or not isinstance(top_prefix, str)
        or not isinstance(field, str)
    ):
        raise TypeError(
            "closed_window_writes(closed, closed_prefix: str, top_prefix: str, field: str)"
        )
    newest: dict[tuple[Any, Any, Any], tuple[Any, ...]] = {}
    for window in closed:
        if not isinstance(window, tuple) or len(window) < 7:
            raise TypeError("a ClosedWindow is expected")
        series = (window[2], window[0], window[1])
        seen = newest.get(series)
        if seen is None or seen[3] < window[3]:
            newest[series] = window
    out: list[Write] = []
    tops: dict[tuple[Any, Any], list[bytes]] = {}
    for window in newest.values():
        key = _series_key(closed_prefix, window).encode()
        text = _text_of(window)
        values = (*text, seconds_text(window[3]), seconds_text(window[4]))
        version = _version(window[3], text[0])
        out.append(_write(key, b"w", True, [version, *_window_field(field, values)]))
        members = tops.get((window[2], window[1]))
        if members is None:
            members = tops[(window[2], window[1])] = []
        members += (version, text[4].encode(), window[0].encode())
    for (label, metric), members in tops.items():
        key = f"{top_prefix}{label}:{metric}".encode()
        if len(key) > _KEY_BYTES:
            raise ValueError("a top key longer than 1024 bytes")
        out.append(_write(key, b"z", True, members))
    return out


def _resp_array(parts: list[bytes]) -> bytes:
    """A RESP array of bulk strings: ``*<n>``, CRLF, then :func:`_bulks` of the parts."""
    return b"*%d\r\n" % len(parts) + _bulks(parts)


def history_calls(
    entries: list[Any] | tuple[Any, ...],
    per_call: int,
    sha: str,
    first_key: str | None,
    tail: tuple[int, ...],
    /,
) -> list[bytes]:
    """The history script's calls (pulse/sinks/history.py) writing ``entries``, each a
    ``(key: str, start: float, readings: int, member: bytes, event: bytes)``, in order,
    ``per_call`` at most per call: each call the RESP of ``EVALSHA sha numkeys first-key
    key... tail... position start readings member event ...``, where the keys are the calls'
    distinct entry keys in order of first use, numkeys one more than they are, ``first-key``
    is ``first_key`` (None: the call's first entry's key), an entry's position is its key's
    index in the script's KEYS (1-based after first-key: the call's first distinct key is
    2), and ``start`` is ``repr`` of the float: the bytes hiredis.pack_command packs of the
    same arguments."""
    if (
        not isinstance(entries, (list, tuple))
        or type(per_call) is not int
        or type(sha) is not str
        or not (first_key is None or type(first_key) is str)
        or not isinstance(tail, tuple)
    ):
        raise TypeError(
            "history_calls(entries: list | tuple, per_call: int, sha: str, "
            "first_key: str | None, tail: tuple of ints)"
        )
    if not 1 <= per_call <= 100_000:
        raise ValueError("history_calls: per_call is from 1 to 100000")
    if len(tail) > 8:
        raise ValueError("history_calls: at most 8 tail numbers")
    if any(type(n) is not int for n in tail):
        raise TypeError("history_calls: the tail holds ints")
    tail_texts = [b"%d" % _long_long(n) for n in tail]
    head = [b"EVALSHA", sha.encode()]
    first = None if first_key is None else first_key.encode()
    out = []
    for begin in range(0, len(entries), per_call):
        index: dict[str, int] = {}
        keys: list[bytes] = []
        rest: list[bytes] = []
        call_first = first
        for entry in entries[begin : begin + per_call]:
            if not (
                isinstance(entry, tuple)
                and len(entry) == 5
                and type(entry[0]) is str
                and type(entry[1]) is float
                and type(entry[2]) is int
                and type(entry[3]) is bytes
                and type(entry[4]) is bytes
            ):
                raise TypeError(
                    "history_calls: an entry is (key: str, start: float, readings: int, "
                    "member: bytes, event: bytes)"
                )
            key, start, readings, member, event = entry
            key_text = key.encode()
            readings = _long_long(readings)
            if key not in index:
                index[key] = len(index) + 2
                keys.append(key_text)
            if call_first is None:
                call_first = key_text
            rest += [b"%d" % index[key], repr(start).encode(), b"%d" % readings, member, event]
        assert call_first is not None
        numkeys = b"%d" % (len(index) + 1)
        out.append(_resp_array([*head, numkeys, call_first, *keys, *tail_texts, *rest]))
    return out


# -- the other sinks' records -------------------------------------------------------------------


def _check_closed(window: Any) -> None:
    state = window[5] if isinstance(window, tuple) and len(window) >= 7 else None
    if not isinstance(state, list) or len(state) < 10:
        raise TypeError("a ClosedWindow with a Summary state is expected")


def aggregate_records(
    closed: Iterable[Any], closed_window_json: Callable[[Any], bytes], /
) -> list[tuple[bytes, bytes]]:
    """The (key, value) of the ``aggregates`` record of each closed window, in order:
    ``(window.device.encode(), closed_window_json(window))`` (pulse/sinks/kafka.py)."""
    out = []
    for window in closed:
        _check_closed(window)
        out.append((window[0].encode(), closed_window_json(window)))
    return out


def line_protocol_lines(closed: Iterable[Any], line_protocol: Callable[[Any], str], /) -> list[str]:
    """The line-protocol line of each closed window, in order: ``line_protocol(window)``
    (pulse/sinks/influx.py)."""
    out = []
    for window in closed:
        _check_closed(window)
        out.append(line_protocol(window))
    return out


# -- reading aggregates records back ------------------------------------------------------------

_START = b',"start":'
_PLAIN = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?"
"""A JSON number without an exponent (Python's ``repr`` and orjson write those alike)."""
_NUMBER = _PLAIN + rb"(?:[eE][+-]?[0-9]+)?"
"""Any JSON number."""
_COUNT_TEXT = rb"([1-9][0-9]{0,17})"
_ENTRY_REST = re.compile(
    rb',"start":(' + _PLAIN + rb'),"end":(' + _PLAIN + rb'),("count":' + _COUNT_TEXT
    + b"".join(b',"%s":' % name.encode() + _PLAIN for name in AGGREGATES[1:])
    + rb'),"tags":\{\}\}'
)  # fmt: skip
_LINE_REST = re.compile(
    rb',"start":(-?[1-9][0-9]{0,17}),"end":' + _NUMBER + rb',"count":' + _COUNT_TEXT
    + b"".join(b',"%s":(' % name.encode() + _NUMBER + b")" for name in AGGREGATES[1:])
    + rb',"tags":\{\}\}'
)  # fmt: skip


_LINE_FIELDS = ("count=%si" + "".join(f",{name}=%s" for name in AGGREGATES[1:]) + " %s000").encode()
"""A line's fields and time: the aggregates' texts, then the start's text in seconds."""


def aggregates_entry(value: bytes, series: dict[bytes, Any], entry_type: type, /) -> Any:
    """The history entry of an ``aggregates`` record (pulse/sinks/history.py) in the form
    closed_window_json writes (pulse/sinks/kafka.py: keys in order, no whitespace), with no
    tags and no number with an exponent, of a series in ``series``: the record's text before
    ``,"start":`` maps to its history key. ``entry_type(key, float(start), count, member,
    value)``, the member ``{"count":..,"sum":..,...,"p99":..,"start":..,"end":..}`` cut from
    the record's text; None for any other value, which the caller parses."""
    if not isinstance(value, bytes) or not isinstance(series, dict):
        raise TypeError("aggregates_entry(value: bytes, series: dict, entry_type: type)")
    if not isinstance(entry_type, type) or not issubclass(entry_type, tuple):
        raise TypeError("aggregates_entry: entry_type is a tuple subclass of 5 fields")
    at = value.find(_START)
    key = series.get(value[:at]) if at >= 0 else None
    match = None if key is None else _ENTRY_REST.fullmatch(value, at)
    if match is None:
        return None
    start, end, aggregates, count = match.groups()
    member = b'{%s,"start":%s,"end":%s}' % (aggregates, start, end)
    make: Any = entry_type  # a NamedTuple's type, called with its fields
    return make(key, float(start), int(count), member, value)


def aggregates_line(value: bytes, heads: dict[bytes, Any], /) -> str | None:
    """The line-protocol line of an ``aggregates`` record (pulse/sinks/influx.py,
    record_line) in the form closed_window_json writes, with no tags and a start of a whole
    number of seconds other than 0, of a series in ``heads``: the record's text before
    ``,"start":`` maps to the line's head (measurement, tags and a space, ASCII). The head,
    ``count={count}i,sum={sum},...`` with the numbers' texts as the record has them, a space
    and the start's text followed by ``000`` (milliseconds); None for any other value."""
    if not isinstance(value, bytes) or not isinstance(heads, dict):
        raise TypeError("aggregates_line(value: bytes, heads: dict)")
    at = value.find(_START)
    head = heads.get(value[:at]) if at >= 0 else None
    if not isinstance(head, str) or not head.isascii():
        return None
    match = _LINE_REST.fullmatch(value, at)
    if match is None:
        return None
    start, *numbers = match.groups()
    return head + (_LINE_FIELDS % (*numbers, start)).decode()


# -- the records of a fetch ---------------------------------------------------------------------


def _serialized_size(data: Any) -> int:
    return -1 if data is None else len(data)


def batch_records(
    batch: Iterable[Any], first_offset: int, topic: str, partition: int, record_type: type, /
) -> list[Any]:
    """The consumer records of one Kafka record batch (aiokafka's decoded records: ``offset``,
    ``timestamp``, ``timestamp_type``, ``key``, ``value``, ``checksum``, ``headers``) from
    ``first_offset`` on, in order, each ``record_type(topic, partition, offset, timestamp,
    timestamp_type, key, value, checksum, serialized_key_size, serialized_value_size,
    headers)``: aiokafka's ConsumerRecord fields, the sizes -1 for None, else the length, and
    the headers as a tuple (pulse/kafka_records.py)."""
    if (
        not isinstance(first_offset, int)
        or not isinstance(topic, str)
        or not isinstance(partition, int)
        or not isinstance(record_type, type)
        or not issubclass(record_type, tuple)
    ):
        raise TypeError(
            "batch_records(batch, first_offset: int, topic: str, partition: int, "
            "record_type: a tuple subclass of 11 fields)"
        )
    _long_long(first_offset)
    out = []
    new = tuple.__new__
    for record in batch:
        offset = record.offset
        if _long_long(offset) < first_offset:
            continue  # before the fetch position
        timestamp, timestamp_type = record.timestamp, record.timestamp_type
        key, value, checksum = record.key, record.value, record.checksum
        key_size, value_size = _serialized_size(key), _serialized_size(value)
        headers = tuple(record.headers)
        fields = (topic, partition, offset, timestamp, timestamp_type, key, value, checksum)
        out.append(new(record_type, (*fields, key_size, value_size, headers)))
    return out


# -- parsing the common reading -----------------------------------------------------------------


def _common_reading(
    key: Any,
    value: Any,
    timestamp: Any,
    max_bytes: int,
    max_future_us: int,
    valid_names: dict[str, str],
    loads: Callable[[bytes], Any],
) -> tuple[str, str, float, int] | None:
    """(device, metric, value, t_us) of the common reading, else None (see parse_common)."""
    if (
        key.__class__ is not bytes
        or value.__class__ is not bytes
        or len(value) > max_bytes
        or timestamp.__class__ is not int
        or timestamp < 0
    ):
        return None
    try:
        doc = loads(value)
    except Exception:  # not JSON: parse_reading says why
        return None
    # As many ':' as members: no nested object, no ':' in a string, no member name repeated
    # (parse_reading rejects a repeated one; a record with the others it parses itself).
    if doc.__class__ is not dict or "tags" in doc or value.count(b":") != len(doc):
        return None
    device = doc.get("device")
    metric = doc.get("metric")
    number = doc.get("value")
    ts = doc.get("ts")
    if (
        device.__class__ is not str
        or metric.__class__ is not str
        or number.__class__ is not float
        or ts.__class__ is not float
    ):
        return None
    device = valid_names.get(device)
    metric = valid_names.get(metric) if device is not None else None
    if metric is None or device.__class__ is not str or metric.__class__ is not str:
        return None
    assert device is not None
    try:
        if device.encode() != key:
            return None
    except UnicodeEncodeError:
        return None
    if not -_MAX_REALISTIC_VALUE <= number <= _MAX_REALISTIC_VALUE:
        return None
    scaled = ts * 1e6
    if not -1.0 < scaled < 4e15 + 1.0:  # NaN and infinities too
        return None
    t_us = round(scaled)  # half to even, as Python rounds a float
    if not 0 <= t_us <= _MAX_COMMON_T_US or t_us - timestamp * 1000 > max_future_us:
        return None
    return device, metric, number, t_us


def parse_common(
    key: bytes | None,
    value: bytes | None,
    timestamp: int | None,
    max_bytes: int,
    max_future_us: int,
    valid_names: dict[str, str],
    loads: Callable[[bytes], Any],
    reading_type: type[Any],
    /,
) -> Any:
    """models.reading.parse_reading for the common record, else None (parse_reading then
    parses, accepts or rejects it with its reason): a record with a timestamp (an int, at
    least 0, in milliseconds) and a value of at most ``max_bytes`` that ``loads``
    (orjson.loads) reads as an object with a str device and metric, both keys of
    ``valid_names`` (validated before), the device equal to the key, a float value within
    +-1e290, a float ts with t_us = round(ts * 1e6) from 0 to 4e15 (year 2096) and at most
    ``max_future_us`` after the timestamp, no tags member, and as many ':' in the text as
    members (so none repeated). Returns reading_type(device, metric, value, t_us, None) with
    the names as ``valid_names`` holds them, which is what parse_reading returns for it."""
    if not isinstance(valid_names, dict) or not isinstance(reading_type, type):
        raise TypeError(
            "parse_common(key, value, timestamp, max_bytes: int, max_future_us: int, "
            "valid_names: dict, loads, reading_type)"
        )
    max_future_us = _future(max_future_us)
    common = _common_reading(key, value, timestamp, max_bytes, max_future_us, valid_names, loads)
    if common is None:
        return None
    return tuple.__new__(reading_type, (*common, None))


# -- the partition state ------------------------------------------------------------------------


def _spec_index(labels: tuple[str, ...], index: int) -> int:
    """A key's spec index, checked against ``labels`` (one per spec): IndexError for a key
    that names no configured spec (a corrupt key), never another spec's label."""
    if not 0 <= index < len(labels):
        raise IndexError("a key's spec index is out of range")
    return index


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
) -> list[tuple[str, str]]:
    """One step of PartitionState.close_ready: closes ``keys``, the windows (device, metric,
    index, start) that end at ``end``. For each key in order: its state leaves ``windows``
    and ``closed`` gets closed_type(device, metric, label, start, end, state, its text); the
    key leaves ``changed`` and joins ``removed``; if it was its series' newest window, the
    series leaves ``newest`` and joins ``views_changed``; the count of open windows of
    (device, metric) goes down by one. Returns the (device, metric) pairs whose count
    reached 0 (and were deleted), in that order."""
    if (
        not isinstance(keys, list)
        or not isinstance(windows, dict)
        or not isinstance(closed, list)
        or not isinstance(changed, set)
        or not isinstance(removed, set)
        or not isinstance(newest, dict)
        or not isinstance(views_changed, set)
        or not isinstance(open_per_key, dict)
        or not isinstance(labels, tuple)
        or not isinstance(closed_type, type)
        or not issubclass(closed_type, tuple)
    ):
        raise TypeError(
            "close_windows(keys: list, end, windows: dict, closed: list, changed: set, "
            "removed: set, newest: dict, views_changed: set, open_per_key: dict, "
            "labels: tuple, closed_type: a tuple subclass)"
        )
    emptied: list[tuple[str, str]] = []
    make = tuple.__new__
    for key in keys:
        if not isinstance(key, tuple) or len(key) != 4:
            raise TypeError("a window key (device, metric, index, start)")
        device, metric, index, start = key
        label = labels[_spec_index(labels, index)]
        state = windows.pop(key)
        closed.append(
            make(closed_type, (device, metric, label, start, end, state, summary_text(state)))
        )
        changed.discard(key)
        removed.add(key)
        series = (device, metric, index)
        newest_start = newest.get(series)
        if newest_start is not None and newest_start == start:
            del newest[series]
            views_changed.add(series)
        pair = (device, metric)
        remaining = open_per_key[pair] - 1
        if remaining > 0:
            open_per_key[pair] = remaining
        else:
            del open_per_key[pair]
            emptied.append(pair)
    return emptied


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
) -> list[Any]:
    """PartitionState.drain's open views: one per series in ``views_changed`` (its newest
    window opened or closed) or with a key in ``changed`` whose start is the series' newest,
    in the order of that set. With start = newest.get(series): none (no window open any
    more), view_type(device, metric, label, start, end, None, None) with the start and end
    of the series' last window in ``closed`` (the drain's closed windows: the one whose
    close left the series without an open window; 0 and 0 if there is none); else
    view_type(device, metric, label, start, start + size, state, its text) with the state of
    (device, metric, index, start)."""
    if (
        not isinstance(views_changed, set)
        or not isinstance(changed, set)
        or not isinstance(newest, dict)
        or not isinstance(windows, dict)
        or not isinstance(labels, tuple)
        or not isinstance(sizes, tuple)
        or not isinstance(closed, list)
        or not isinstance(view_type, type)
        or not issubclass(view_type, tuple)
        or len(labels) != len(sizes)
    ):
        raise TypeError(
            "open_views(views_changed: set, changed: set, newest: dict, windows: dict, "
            "labels: tuple, sizes: tuple, closed: list, view_type: a tuple subclass)"
        )
    series_changed = set(views_changed)
    for key in changed:
        if not isinstance(key, tuple) or len(key) != 4:
            raise TypeError("a window key (device, metric, index, start)")
        series = key[:3]
        newest_start = newest.get(series)
        if newest_start is not None and newest_start == key[3]:
            series_changed.add(series)
    make = tuple.__new__
    out = []
    last_closed: dict[tuple[Any, Any, Any], Any] | None = None
    for series in series_changed:
        if not isinstance(series, tuple) or len(series) != 3:
            raise TypeError("a series key (device, metric, index)")
        device, metric, index = series
        i = _spec_index(labels, index)
        start = newest.get(series)
        if start is None:
            if last_closed is None:
                last_closed = {}
                for window in closed:
                    if not isinstance(window, tuple) or len(window) < 5:
                        raise TypeError("a ClosedWindow is expected")
                    last_closed[(window[0], window[1], window[2])] = window
            window = last_closed.get((device, metric, labels[i]))
            first, last = (0, 0) if window is None else (window[3], window[4])
            out.append(make(view_type, (device, metric, labels[i], first, last, None, None)))
            continue
        state = windows[(device, metric, index, start)]
        end = start + sizes[i]
        out.append(
            make(view_type, (device, metric, labels[i], start, end, state, summary_text(state)))
        )
    return out


def delta_rows(
    keys: Iterable[tuple[str, str, int, int]],
    windows: dict[tuple[str, str, int, int], list[Any]] | None,
    labels: tuple[str, ...],
    /,
) -> list[list[Any]]:
    """The changelog rows of window keys, in order: ``[device, metric, label, start]``, and
    with ``windows`` the key's state appended (KeyError for a key not in it)."""
    if not (windows is None or isinstance(windows, dict)) or not isinstance(labels, tuple):
        raise TypeError("delta_rows(keys: iterable, windows: dict | None, labels: tuple)")
    out = []
    for key in keys:
        if not isinstance(key, tuple) or len(key) != 4:
            raise TypeError("a window key (device, metric, index, start)")
        device, metric, index, start = key
        label = labels[_spec_index(labels, index)]
        if windows is None:
            out.append([device, metric, label, start])
        else:
            out.append([device, metric, label, start, windows[key]])
    return out


def _set_latest(
    latest: dict[tuple[str, str], tuple[int, float]],
    changed: set[tuple[str, str]],
    key: tuple[str, str],
    t_us: int,
    value: float,
) -> None:
    previous = latest.get(key)
    if previous is not None:
        if not isinstance(previous, tuple) or len(previous) != 2:
            raise TypeError("a latest value (t_us, value)")
        if not t_us >= previous[0]:
            return
    latest[key] = (t_us, value)
    changed.add(key)


def update_latest(
    latest: dict[tuple[str, str], tuple[int, float]],
    changed: set[tuple[str, str]],
    device: str,
    metric: str,
    t_us: int,
    value: float,
    /,
) -> None:
    """PartitionState.apply's latest value: with key = (device, metric), unless ``latest``
    holds a value of the key at a later event time, latest[key] = (t_us, value) and the key
    joins ``changed`` (an equal event time replaces: the later offset wins)."""
    if not isinstance(latest, dict) or not isinstance(changed, set):
        raise TypeError("update_latest(latest: dict, changed: set, device, metric, t_us, value)")
    _set_latest(latest, changed, (device, metric), t_us, value)


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
) -> int:
    """PartitionState.apply_records without sliding windows: applies the common readings of
    ``records[begin:]`` (Kafka records: offset, key, value, timestamp) in order, and stops at
    the first record that is not one (see parse_common: at most ``max_future_us`` ahead of its
    timestamp), is late for every window, is of a device that ``admitted`` (when not None)
    lacks, or of a (device, metric) that ``stops`` maps to True, leaving it to the caller.
    Returns its index, len(records) if none. It also stops right after a record that raises
    the watermark to ``stop_watermark`` or beyond, returning the index after it.

    ``position`` is [next_offset, max_t, watermark, stop_watermark] of the partition, the
    first three updated in place as each record is applied (kept also when an error stops
    the loop); records below next_offset are skipped. A record applied goes into its windows
    as apply_windows puts it (those it opens are registered in ``by_end``, the heap ``ends``,
    ``newest``, ``views_changed`` and ``open_per_key`` as PartitionState._open does), its
    latest value as update_latest sets it, and raises max_t and the watermark (max_t -
    grace_us).
    """
    if (
        not isinstance(records, list)
        or not isinstance(valid_names, dict)
        or not isinstance(position, list)
        or len(position) != 4
        or not isinstance(windows, dict)
        or not isinstance(changed, set)
        or not isinstance(by_end, dict)
        or not isinstance(ends, list)
        or not isinstance(newest, dict)
        or not isinstance(views_changed, set)
        or not isinstance(open_per_key, dict)
        or not isinstance(latest, dict)
        or not isinstance(latest_changed, set)
        or not isinstance(stops, dict)
        or not (admitted is None or isinstance(admitted, dict))
    ):
        raise TypeError(
            "apply_common(records: list, begin, max_bytes, max_future_us, valid_names: dict, "
            "loads, specs, grace_us, position: [next_offset, max_t, watermark, "
            "stop_watermark], windows: dict, changed: set, by_end: dict, ends: list, "
            "newest: dict, views_changed: set, open_per_key: dict, latest: dict, "
            "latest_changed: set, stops: dict, admitted: dict | None)"
        )
    specs = _window_math(specs)
    max_future_us = _future(max_future_us)
    next_offset, max_t, watermark, stop_watermark = (int(x) for x in position)
    grace_us = int(grace_us)
    i = max(begin, 0)
    count = len(records)
    try:
        while i < count:
            record = records[i]
            offset = record.offset
            if offset < next_offset:  # already in the recovered state
                i += 1
                continue
            common = _common_reading(
                record.key,
                record.value,
                record.timestamp,
                max_bytes,
                max_future_us,
                valid_names,
                loads,
            )
            if common is None:
                break
            device, metric, number, t_us = common
            if admitted is not None and device not in admitted:
                break  # an unknown device: left to the caller
            pair = (device, metric)
            if stops and stops.get(pair):
                break  # watched by an alert rule: left to the caller
            opened = apply_windows(
                windows, changed, specs, device, metric, number, t_us, None, watermark
            )
            if opened is None:  # late for every window: nothing changed, left to the caller
                break
            for key, end in opened:
                _register_open(by_end, ends, newest, views_changed, open_per_key, pair, key, end)
            _set_latest(latest, latest_changed, pair, t_us, number)
            next_offset = offset + 1
            if t_us > max_t:
                max_t = t_us
                if t_us - grace_us > watermark:
                    watermark = t_us - grace_us
            i += 1
            if watermark >= stop_watermark:
                break
    finally:
        position[:3] = (next_offset, max_t, watermark)
    return i


def _register_open(
    by_end: dict[int, list[Any]],
    ends: list[int],
    newest: dict[Any, int],
    views_changed: set[Any],
    open_per_key: dict[tuple[str, str], int],
    pair: tuple[str, str],
    key: tuple[str, str, int, int],
    end: int,
) -> None:
    """PartitionState._open: a window that opened, in the indexes of open windows."""
    keys = by_end.get(end)
    if keys is None:
        by_end[end] = [key]
        heapq.heappush(ends, end)
    else:
        keys.append(key)
    device, metric, index, start = key
    series = (device, metric, index)
    if newest.get(series, _NO_WATERMARK) < start:
        newest[series] = start
        views_changed.add(series)
    open_per_key[pair] = open_per_key.get(pair, 0) + 1
