"""Window aggregators: small pure classes with ``initialize`` / ``add`` / ``result``.

State is a plain list so that it is cheap to update per reading and to serialise into the
changelog; the classes only define what the list means. Nothing here does I/O or knows about
windows: the caller decides which state a reading goes to.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate
from typing import Any

from models.outputs import AGGREGATES
from tables import _native

# Summary state layout, by index.
COUNT, SUM, MIN, MAX, FIRST_T, FIRST_V, LAST_T, LAST_V, LAST_TAGS, SKETCH = range(10)

SummaryState = list[Any]
Sketch = dict[int, int]
_REPRESENTATIVES: dict[int, float] = {}

QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
_QUANTILE_LEVELS = tuple(level for _, level in QUANTILES)
_AGGREGATE_INDEX = {name: i for i, name in enumerate(AGGREGATES)}


class QuantileSketch:
    """A mergeable quantile sketch with relative accuracy :data:`RELATIVE_ACCURACY` (DDSketch).

    A value ``v > 0`` counts in bucket ``k = ceil(log_gamma(v))``, which holds the values in
    ``(gamma^(k-1), gamma^k]``; the bucket's representative ``2 gamma^k / (gamma + 1)`` is
    within 1 % of every value in it. Negative values use the same buckets on ``-v`` (keys
    offset by :data:`NEGATIVE`); magnitudes below :data:`MIN_MAGNITUDE` count as zero.
    The estimate of quantile ``q`` is the representative of the bucket holding the value of
    rank ``floor(q * (n - 1))`` in sorted order, so it is within 1 % of that value.
    At most :data:`MAX_BUCKETS` buckets are kept; beyond that the lowest ones are merged
    (only the lowest quantiles lose accuracy, as in DDSketch).

    State is a plain ``dict`` bucket key -> count, so sketches merge by adding counts.
    """

    RELATIVE_ACCURACY = 0.01
    GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
    INV_LOG_GAMMA = 1 / math.log(GAMMA)
    MIN_MAGNITUDE = 1e-9
    NEGATIVE = 1 << 20
    """Offset of negative values' keys; keys of magnitudes stay within +-2**19."""
    ZERO = 1 << 21
    _LAST_POSITIVE = (1 << 19) - 1
    MAX_BUCKETS = 2048

    key = staticmethod(_native.sketch_key)
    """``key(value)``: the bucket of a value (tables/_speedups_py.py: sketch_key)."""

    @staticmethod
    def initialize(value: float) -> Sketch:
        return {QuantileSketch.key(value): 1}

    add = staticmethod(_native.sketch_add)
    """``add(sketch, value)``: count a value; collapses the lowest buckets beyond
    :data:`MAX_BUCKETS` (with :meth:`_collapse`)."""

    @staticmethod
    def merge(into: Sketch, other: Sketch) -> None:
        for key, count in other.items():
            into[key] = into.get(key, 0) + count
        while len(into) > QuantileSketch.MAX_BUCKETS:
            QuantileSketch._collapse(into)

    @staticmethod
    def _order(key: int) -> int:
        """Sort key putting bucket keys in the order of their values."""
        if key <= QuantileSketch._LAST_POSITIVE:
            return key  # positive values: magnitude keys within +-2**19
        if key == QuantileSketch.ZERO:
            return -(1 << 20)  # below every positive key, above every negative one
        return -(1 << 21) - (key - QuantileSketch.NEGATIVE)  # larger magnitude, lower value

    @staticmethod
    def _ordered(sketch: Sketch) -> list[int]:
        """Bucket keys from the lowest value to the highest."""
        return sorted(sketch, key=QuantileSketch._order)

    @staticmethod
    def _collapse(sketch: Sketch) -> None:
        lowest, second = QuantileSketch._ordered(sketch)[:2]
        sketch[second] += sketch.pop(lowest)

    @staticmethod
    def value(key: int) -> float:
        """The representative value of a bucket (memoised: the same buckets recur)."""
        found = _REPRESENTATIVES.get(key)
        if found is not None:
            return found
        gamma = QuantileSketch.GAMMA
        if key == QuantileSketch.ZERO:
            found = 0.0
        elif key > QuantileSketch._LAST_POSITIVE:
            found = -2 * gamma ** (key - QuantileSketch.NEGATIVE) / (gamma + 1)
        else:
            found = 2 * gamma**key / (gamma + 1)
        if len(_REPRESENTATIVES) < 100_000:
            _REPRESENTATIVES[key] = found
        return found

    @staticmethod
    def quantiles(sketch: Sketch, qs: tuple[float, ...], count: int | None = None) -> list[float]:
        """Estimates of the quantiles ``qs`` (ascending) of the ``count`` values added."""
        if len(sketch) == 1:  # the common case of small windows: one bucket
            for key in sketch:
                return [QuantileSketch.value(key)] * len(qs)
        if count is None:
            count = sum(sketch.values())
        ordered = sorted(sketch)
        if ordered[-1] > QuantileSketch._LAST_POSITIVE:
            # Negative values or zero: their keys do not sort as their values do.
            ordered.sort(key=QuantileSketch._order)
        # cumulative[i]: values in the buckets up to ordered[i]; the value of rank r lies in
        # the first bucket whose cumulative count exceeds r.
        cumulative = list(accumulate(map(sketch.__getitem__, ordered)))
        value = QuantileSketch.value
        last = len(ordered) - 1
        return [value(ordered[min(bisect_right(cumulative, q * (count - 1)), last)]) for q in qs]

    @staticmethod
    def decode(raw: dict[Any, int]) -> Sketch:
        """A sketch read back from JSON, whose object keys are strings."""
        return {int(key): count for key, count in raw.items()}


_native.configure(
    QuantileSketch.GAMMA,
    QuantileSketch.INV_LOG_GAMMA,
    QuantileSketch.MIN_MAGNITUDE,
    QuantileSketch.ZERO,
    QuantileSketch.NEGATIVE,
    QuantileSketch._LAST_POSITIVE,
    QuantileSketch.MAX_BUCKETS,
    QuantileSketch._collapse,
)


class Summary:
    """count, sum, min, max, mean, first and last of the values applied to one window.

    ``first``/``last`` are by event time; a tie keeps the reading processed first for ``first``
    and the one processed last for ``last``, so the result is determined by the processing
    order (partition offset order). ``last_tags`` are the tags of the reading that gives
    ``last``. The sum is accumulated in processing order, so it is reproducible bit for bit.
    ``p50``, ``p95`` and ``p99`` come from a :class:`QuantileSketch` (1 % relative accuracy).
    """

    initialize = staticmethod(_native.summary_initialize)
    """``initialize(t_us, value, tags)``: the state of a window holding one reading."""
    add = staticmethod(_native.summary_add)
    """``add(state, t_us, value, tags)``: one more reading in a window's state."""

    @staticmethod
    def values(state: SummaryState) -> tuple[Any, ...]:
        """The aggregates in the order of :data:`AGGREGATES`: ``count`` an int, the rest floats."""
        count, total, low, high = state[COUNT], state[SUM], state[MIN], state[MAX]
        p50, p95, p99 = QuantileSketch.quantiles(state[SKETCH], _QUANTILE_LEVELS, count)
        # Each estimate is kept inside [min, max], where the true quantile lies.
        return (
            count,
            total,
            low,
            high,
            total / count,
            state[FIRST_V],
            state[LAST_V],
            low if p50 < low else high if p50 > high else p50,
            low if p95 < low else high if p95 > high else p95,
            low if p99 < low else high if p99 > high else p99,
        )

    @staticmethod
    def value(state: SummaryState, aggregate: str) -> Any:
        """``values(state)[AGGREGATES.index(aggregate)]``, computing the quantiles only for
        a quantile (what an alert rule reads of each closed window)."""
        if aggregate == "count":
            return state[COUNT]
        if aggregate == "sum":
            return state[SUM]
        if aggregate == "min":
            return state[MIN]
        if aggregate == "max":
            return state[MAX]
        if aggregate == "mean":
            return state[SUM] / state[COUNT]
        if aggregate == "first":
            return state[FIRST_V]
        if aggregate == "last":
            return state[LAST_V]
        return Summary.values(state)[_AGGREGATE_INDEX[aggregate]]

    @staticmethod
    def result(state: SummaryState) -> dict[str, Any]:
        """The aggregates by name (see :meth:`values`)."""
        return dict(zip(AGGREGATES, Summary.values(state), strict=True))

    text = staticmethod(_native.summary_text)
    """``text(state)``: the aggregates as every output writes them, formatted once for all.

    ``count`` in decimal, the others as ``repr`` of :meth:`values` (the shortest text that
    reads back as the same float, valid in JSON, line protocol and Redis alike). Every one is
    finite: readings are within +-1e290 (models.reading.MAX_ABS_VALUE), which keeps every sum
    finite. A test holds it equal to :meth:`values` and ``repr``.
    """

    @staticmethod
    def decode(state: SummaryState) -> SummaryState:
        """A state read back from the changelog's JSON (sketch keys come back as strings)."""
        state[SKETCH] = QuantileSketch.decode(state[SKETCH])
        return state

    @staticmethod
    def tags(state: SummaryState) -> dict[str, str]:
        return state[LAST_TAGS] or {}
