"""seconds_text: a window's bounds and a reading's time as every sink writes them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.sinks._text import seconds_text
from tables import _speedups_py

S = 1_000_000


@pytest.mark.parametrize(
    ("t_us", "expected"),
    [
        (0, 0),
        (10 * S, 10),
        (1_795_315_440 * S, 1_795_315_440),
        (1_795_315_444_250_000, 1795315444.25),
        (1_795_315_444_300_000, 1795315444.3),
        (1, 1e-06),
        (-10 * S, -10),
        (-500_000, -0.5),
    ],
)
def test_seconds_text(t_us: int, expected: float) -> None:
    text = seconds_text(t_us)
    assert text == repr(expected)
    assert seconds_text(t_us) == text
    assert float(text) == t_us / 1_000_000


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.integers(-(2**53), 2**53),
        st.integers(0, 4_102_444_800).map(lambda s: s * 1_000_000),  # whole seconds
        st.integers(1_700_000_000_000_000, 1_900_000_000_000_000),  # epoch microseconds now
        st.integers(-(2**80), 2**80),  # beyond a double's exact integers: Python's arithmetic
    )
)
def test_seconds_text_is_its_python_definition(t_us: int) -> None:
    assert seconds_text(t_us) == _speedups_py.seconds_text(t_us)
