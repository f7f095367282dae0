"""The quantile sketch keeps its documented accuracy: within 1 % of the exact quantile."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tables.aggregators import QUANTILES, QuantileSketch, Summary

ACCURACY = QuantileSketch.RELATIVE_ACCURACY

values_strategy = st.lists(
    st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False),
        st.floats(1e-6, 1e3),
        st.sampled_from([0.0, 1.0, -1.0, 21.5]),
    ),
    min_size=1,
    max_size=300,
)


def exact(values: list[float], q: float) -> float:
    """The value of rank floor(q * (n - 1)) in sorted order."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@settings(max_examples=300, deadline=None)
@given(values_strategy)
def test_summary_percentiles_are_within_the_documented_accuracy(values: list[float]) -> None:
    state = Summary.initialize(0, values[0], None)
    for t, value in enumerate(values[1:], start=1):
        Summary.add(state, t, value, None)
    result = Summary.result(state)
    for name, q in QUANTILES:
        truth = exact(values, q)
        # Magnitudes below MIN_MAGNITUDE count as zero (documented).
        slack = QuantileSketch.MIN_MAGNITUDE * 2 + 1e-12 * abs(truth)
        assert abs(result[name] - truth) <= ACCURACY * abs(truth) + slack, (name, truth)


@settings(max_examples=100, deadline=None)
@given(values_strategy, values_strategy)
def test_merged_sketches_equal_one_sketch_of_all_values(a: list[float], b: list[float]) -> None:
    left: dict[int, int] = {}
    right: dict[int, int] = {}
    whole: dict[int, int] = {}
    for value in a:
        QuantileSketch.add(left, value)
        QuantileSketch.add(whole, value)
    for value in b:
        QuantileSketch.add(right, value)
        QuantileSketch.add(whole, value)
    QuantileSketch.merge(left, right)
    assert left == whole
    levels = tuple(q for _, q in QUANTILES)
    assert QuantileSketch.quantiles(left, levels) == QuantileSketch.quantiles(whole, levels)


def test_buckets_stay_bounded() -> None:
    sketch: dict[int, int] = {}
    for i in range(1, 20_000):
        QuantileSketch.add(sketch, 1.0001**i * 1e-6)  # spreads over far more than 2048 buckets
        QuantileSketch.add(sketch, -(1.5 ** (i % 1500)))
    assert len(sketch) <= QuantileSketch.MAX_BUCKETS
    # The top quantiles keep their accuracy when the lowest buckets are merged.
    (p99,) = QuantileSketch.quantiles(sketch, (0.99,))
    assert p99 > 0


@settings(max_examples=500, deadline=None)
@given(
    st.floats(-1e300, 1e300, allow_nan=False)
    | st.sampled_from([0.0, -0.0, 1e-9, -1e-9, 2e-9, 1.0, 21.5])
)
def test_bucket_key_is_the_documented_formula(value: float) -> None:
    magnitude = QuantileSketch.MIN_MAGNITUDE
    if value > magnitude:
        want = math.ceil(math.log(value) * QuantileSketch.INV_LOG_GAMMA)
    elif value < -magnitude:
        want = math.ceil(math.log(-value) * QuantileSketch.INV_LOG_GAMMA) + QuantileSketch.NEGATIVE
    else:
        want = QuantileSketch.ZERO
    assert QuantileSketch.key(value) == want
    sketch = QuantileSketch.initialize(value)
    QuantileSketch.add(sketch, value)
    assert sketch == {want: 2}
