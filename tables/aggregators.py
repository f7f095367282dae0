"""Window aggregators: small pure classes with ``initialize`` / ``add`` / ``result``.

State is a plain list so that it is cheap to update per reading and to serialise into the
changelog; the classes only define what the list means. Nothing here does I/O or knows about
windows: the caller decides which state a reading goes to.
"""

from __future__ import annotations

from typing import Any

# Summary state layout, by index.
COUNT, SUM, MIN, MAX, FIRST_T, FIRST_V, LAST_T, LAST_V, LAST_TAGS = range(9)

SummaryState = list[Any]


class Summary:
    """count, sum, min, max, mean, first and last of the values applied to one window.

    ``first``/``last`` are by event time; a tie keeps the reading processed first for ``first``
    and the one processed last for ``last``, so the result is determined by the processing
    order (partition offset order). ``last_tags`` are the tags of the reading that gives
    ``last``. The sum is accumulated in processing order, so it is reproducible bit for bit.
    """

    @staticmethod
    def initialize(t_us: int, value: float, tags: dict[str, str] | None) -> SummaryState:
        return [1, value, value, value, t_us, value, t_us, value, tags]

    @staticmethod
    def add(state: SummaryState, t_us: int, value: float, tags: dict[str, str] | None) -> None:
        state[COUNT] += 1
        state[SUM] += value
        if value < state[MIN]:
            state[MIN] = value
        if value > state[MAX]:
            state[MAX] = value
        if t_us < state[FIRST_T]:
            state[FIRST_T] = t_us
            state[FIRST_V] = value
        if t_us >= state[LAST_T]:
            state[LAST_T] = t_us
            state[LAST_V] = value
            state[LAST_TAGS] = tags

    @staticmethod
    def result(state: SummaryState) -> dict[str, Any]:
        """The aggregates: ``count`` an int, the others floats."""
        count = state[COUNT]
        return {
            "count": count,
            "sum": state[SUM],
            "min": state[MIN],
            "max": state[MAX],
            "mean": state[SUM] / count,
            "first": state[FIRST_V],
            "last": state[LAST_V],
        }

    @staticmethod
    def tags(state: SummaryState) -> dict[str, str]:
        return state[LAST_TAGS] or {}
