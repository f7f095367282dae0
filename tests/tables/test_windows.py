"""Window specs (parse_windows) and window assignment (starts_containing)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.reading import Reading
from tables.partition_state import PartitionState
from tables.windows import WindowSpec, WindowSpecError, parse_duration_us, parse_windows

S = 1_000_000
MS = 1_000


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1ms", MS),
        ("250ms", 250 * MS),
        ("10s", 10 * S),
        ("1m", 60 * S),
        ("2h", 7200 * S),
        ("1d", 86400 * S),
        (" 5m ", 300 * S),
        ("007s", 7 * S),
    ],
)
def test_durations(text: str, us: int) -> None:
    assert parse_duration_us(text) == us


def test_tumbling_specs() -> None:
    assert parse_windows("10s,1m") == (
        WindowSpec("10s", "tumbling", 10 * S, 10 * S),
        WindowSpec("1m", "tumbling", 60 * S, 60 * S),
    )


def test_spaces_around_specs_are_not_part_of_the_label() -> None:
    assert [spec.label for spec in parse_windows(" 10s , 5m/1m ")] == ["10s", "5m/1m"]


def test_hopping_spec() -> None:
    assert parse_windows("5m/1m") == (WindowSpec("5m/1m", "hopping", 300 * S, 60 * S),)
    assert parse_windows("10s/3s") == (WindowSpec("10s/3s", "hopping", 10 * S, 3 * S),)


def test_hopping_with_step_equal_to_size_is_tumbling_keeping_its_label() -> None:
    assert parse_windows("10s/10s") == (WindowSpec("10s/10s", "tumbling", 10 * S, 10 * S),)
    assert parse_windows("1m/60s") == (WindowSpec("1m/60s", "tumbling", 60 * S, 60 * S),)


def test_sliding_spec() -> None:
    assert parse_windows("sliding:1m") == (WindowSpec("sliding:1m", "sliding", 60 * S, 60 * S),)


def test_sliding_and_tumbling_of_the_same_size_are_different_windows() -> None:
    assert [s.kind for s in parse_windows("1m,sliding:1m")] == ["tumbling", "sliding"]


def test_issue_example() -> None:
    specs = parse_windows("10s,1m,5m/1m,sliding:1m")
    assert [(s.label, s.kind, s.size_us, s.step_us) for s in specs] == [
        ("10s", "tumbling", 10 * S, 10 * S),
        ("1m", "tumbling", 60 * S, 60 * S),
        ("5m/1m", "hopping", 300 * S, 60 * S),
        ("sliding:1m", "sliding", 60 * S, 60 * S),
    ]


def _error(text: str) -> str:
    with pytest.raises(WindowSpecError) as info:
        parse_windows(text)
    return str(info.value)


def test_step_larger_than_size() -> None:
    assert _error("1m/5m") == (
        "'1m/5m': the step (5m) is larger than the size (1m), "
        "so some readings would belong to no window"
    )


@pytest.mark.parametrize("text", ["0s", "0m/0s", "10s/0s", "0s/0ms", "sliding:0m", "10s,000ms"])
def test_zero_sizes(text: str) -> None:
    assert "a window size or step must be greater than zero" in _error(text)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("10x", "10x"),
        ("10", "10"),
        ("s", "s"),
        ("1.5s", "1.5s"),
        ("-1s", "-1s"),
        ("10S", "10S"),
        ("10 s", "10 s"),
        ("5m/1w", "1w"),
        ("sliding:", ""),
        ("sliding:ten", "ten"),
        ("1m/", ""),
    ],
)
def test_unknown_units_and_malformed_durations(text: str, bad: str) -> None:
    assert _error(text) == (
        f"{bad!r} is not a duration: write a whole number and a unit (ms, s, m, h, d), "
        "e.g. 10s or 5m"
    )


@pytest.mark.parametrize("text", ["", " ", "10s,", ",10s", "10s,,1m"])
def test_empty_specs(text: str) -> None:
    assert _error(text) == "empty window specification"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10s,10s", "'10s' repeats the window '10s': each window once"),
        ("10s,10s/10s", "'10s/10s' repeats the window '10s': each window once"),
        ("1m,60s", "'60s' repeats the window '1m': each window once"),
        ("5m/1m,300s/60s", "'300s/60s' repeats the window '5m/1m': each window once"),
        (
            "sliding:1m,sliding:60000ms",
            "'sliding:60000ms' repeats the window 'sliding:1m': each window once",
        ),
        ("1s,10s,1000ms", "'1000ms' repeats the window '1s': each window once"),
    ],
)
def test_duplicates(text: str, message: str) -> None:
    assert _error(text) == message


def test_not_duplicates() -> None:
    assert len(parse_windows("10s,10s/5s,sliding:10s,20s/10s")) == 4


# -- assignment -------------------------------------------------------------------------------


def tumbling(size: int) -> WindowSpec:
    return WindowSpec(f"{size}", "tumbling", size, size)


def hopping(size: int, step: int) -> WindowSpec:
    return WindowSpec(f"{size}/{step}", "hopping", size, step)


def test_tumbling_assignment() -> None:
    # size 10:
    #   0         10        20        30
    #   [ w0      )[ w1      )[ w2      )
    #        *5    *10      *19.999    *20
    spec = tumbling(10)
    assert list(spec.starts_containing(5)) == [0]
    assert list(spec.starts_containing(0)) == [0]
    assert list(spec.starts_containing(9)) == [0]
    assert list(spec.starts_containing(10)) == [10]  # half-open: the end belongs to the next
    assert list(spec.starts_containing(19)) == [10]
    assert list(spec.starts_containing(20)) == [20]


def test_tumbling_assignment_in_real_units() -> None:
    spec = parse_windows("10s")[0]
    t = 1_795_315_444_300_000  # 1795315444.3 s
    assert list(spec.starts_containing(t)) == [1_795_315_440_000_000]


def test_hopping_assignment_step_divides_size() -> None:
    # size 3, step 1, t = 4.5 (x10 to stay in integers: size 30, step 10, t 45)
    #   10   20   30   40   50   60   70
    #   [ 10..40 )
    #        [ 20..50 )          <- contains 45
    #             [ 30..60 )     <- contains 45
    #                  [ 40..70 )<- contains 45
    #                       [ 50..80 ) does not
    spec = hopping(30, 10)
    assert list(spec.starts_containing(45)) == [20, 30, 40]
    # on a boundary: t = 40 is in [20,50) [30,60) [40,70), not in [10,40)
    assert list(spec.starts_containing(40)) == [20, 30, 40]
    assert list(spec.starts_containing(0)) == [-20, -10, 0]


def test_hopping_assignment_step_does_not_divide_size() -> None:
    # size 5, step 2: windows [0,5) [2,7) [4,9) [6,11) ...
    #   0 1 2 3 4 5 6 7 8
    #   [0,5)
    #       [2,7)
    #           [4,9)
    # t=4 is in 3 windows; t=5 only in 2 ([2,7) [4,9)): ceil(5/2) = 3 at most
    spec = hopping(5, 2)
    assert list(spec.starts_containing(4)) == [0, 2, 4]
    assert list(spec.starts_containing(5)) == [2, 4]
    assert list(spec.starts_containing(6)) == [2, 4, 6]
    assert list(spec.starts_containing(1)) == [-2, 0]


def test_issue_3_hopping_example() -> None:
    spec = parse_windows("5m/1m")[0]
    t = 7 * 60 * S + 30 * S  # 7m30s: windows starting 3m, 4m, 5m, 6m, 7m
    assert list(spec.starts_containing(t)) == [m * 60 * S for m in (3, 4, 5, 6, 7)]


def brute_force_starts(t: int, size: int, step: int) -> list[int]:
    """Every multiple of step near t whose window [start, start + size) holds t."""
    lowest = (t - size) // step - 2
    highest = t // step + 2
    return [k * step for k in range(lowest, highest + 1) if k * step <= t < k * step + size]


@st.composite
def specs(draw: st.DrawFn) -> WindowSpec:
    step = draw(st.integers(1, 50))
    size = step * draw(st.integers(1, 6)) + draw(st.integers(0, step - 1))
    return WindowSpec("w", "tumbling" if size == step else "hopping", size, step)


@settings(max_examples=400, deadline=None)
@given(spec=specs(), t=st.integers(-1_000, 1_000) | st.integers(0, 2**62))
def test_starts_containing_equals_brute_force(spec: WindowSpec, t: int) -> None:
    found = list(spec.starts_containing(t))
    assert found == brute_force_starts(t, spec.size_us, spec.step_us)
    # and as many windows as SIZE/STEP rounded down or up
    assert len(found) in {spec.size_us // spec.step_us, -(-spec.size_us // spec.step_us)}


@settings(max_examples=200, deadline=None)
@given(
    size_s=st.integers(1, 600),
    step_s=st.integers(1, 600),
    t=st.integers(0, 9_223_372_036_854_775),
)
def test_parsed_specs_equal_brute_force(size_s: int, step_s: int, t: int) -> None:
    if step_s > size_s:
        with pytest.raises(WindowSpecError):
            parse_windows(f"{size_s}s/{step_s}s")
        return
    spec = parse_windows(f"{size_s}s/{step_s}s")[0]
    assert list(spec.starts_containing(t)) == brute_force_starts(t, size_s * S, step_s * S)


@settings(max_examples=300, deadline=None)
@given(spec=specs(), t=st.integers(-1_000, 1_000) | st.integers(0, 2**62))
def test_a_reading_opens_exactly_the_windows_containing_it(spec: WindowSpec, t: int) -> None:
    # PartitionState.apply computes the starts itself (in C): they must be these.
    state = PartitionState((spec,), grace_us=0)
    assert state.apply(Reading("d", "m", 1.0, t, None), 0)
    assert sorted(start for _, _, _, start in state.windows) == list(spec.starts_containing(t))
