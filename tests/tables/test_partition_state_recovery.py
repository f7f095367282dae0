"""Recovery: a PartitionState rebuilt from changelog deltas continues exactly.

Every scenario runs a random stream uninterrupted once (the expected outputs), then rebuilds a
fresh state from the deltas of a run that "crashed" (all of them, with duplicates, interleaved
with a zombie's, from the latest snapshot, or with the last delta lost), continues processing
from the recovered ``next_offset`` and checks that the closed windows equal the uninterrupted
run's exactly: every window closed once (or repeated with identical content, when the delta
that recorded its closing was lost) and none missing.

Deltas go through the real codec (``encode_parts`` / ``DeltaAssembler``) right at drain time,
as the worker does, so the changelog holds what a JSON round trip keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from models.reading import Reading
from pulse.changelog import DeltaAssembler, encode_parts
from tables.aggregators import Summary
from tables.partition_state import Delta, PartitionState
from tables.windows import WindowSpec
from tests.tables.test_partition_state import HUGE, readings, spec_sets, window_result

S = 1_000_000
WindowId = tuple[str, str, str, int]


def fingerprint(state: PartitionState) -> tuple[Any, ...]:
    """Everything that determines a state's future outputs, by value."""
    windows = {
        (d, m, state.specs[i].label, s): window_result(w) | {"sketch": dict(w[-1])}
        for (d, m, i, s), w in state.windows.items()
    }
    return state.next_offset, state.max_t, state.idle_floor, windows, dict(state.latest)


@dataclass
class Run:
    """One worker's pass over records[start:], draining where told."""

    specs: tuple[WindowSpec, ...]
    grace: int
    name: str
    logged: list[list[bytes]] = field(default_factory=list)  # encoded deltas, in order
    closed_by_delta: list[list[WindowId]] = field(default_factory=list)
    fingerprints: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    closed: dict[WindowId, dict[str, Any]] = field(default_factory=dict)
    repeats: list[WindowId] = field(default_factory=list)
    final: tuple[Any, ...] | None = None

    def drain(self, state: PartitionState, snapshot: bool = False) -> None:
        drained = state.drain(snapshot=snapshot)
        ids = []
        for window in drained.closed:
            key = (window.device, window.metric, window.window, window.start_us)
            if key in self.closed:
                self.repeats.append(key)
            self.closed[key] = window_result(window.state)
            ids.append(key)
        delta = drained.delta
        if delta.snapshot or not delta.empty or delta.to_offset != delta.from_offset:
            # the worker's rule for writing a delta
            parts = encode_parts(delta, f"{self.name}-{len(self.logged)}", 0)
            self.logged.append(parts)
            self.closed_by_delta.append(ids)
            self.fingerprints[delta.to_offset] = fingerprint(state)
        else:
            assert not ids

    def process(
        self,
        state: PartitionState,
        records: Sequence[Reading | None],
        drain_after: set[int],
        snapshot_after: int | None = None,
        *,
        crash: bool = False,
    ) -> None:
        """With ``crash``, stop after the last record (no final idle close)."""
        for offset in range(state.next_offset, len(records)):
            record = records[offset]
            if record is None:
                state.skip(offset)
            else:
                state.apply(record, offset)
            if offset in drain_after:
                self.drain(state, snapshot=offset == snapshot_after)
        self.drain(state)
        self.final = fingerprint(state)
        if crash:
            return
        state.advance_idle(HUGE)
        self.drain(state)


def recover(specs: tuple[WindowSpec, ...], grace: int, log: list[list[bytes]]) -> PartitionState:
    state = PartitionState(specs, grace)
    assembler = DeltaAssembler()
    for parts in log:
        for part in parts:
            delta = assembler.add(part)
            if delta is not None:
                assert isinstance(delta, Delta)
                state.apply_delta(delta)
    state.finish_recovery()
    return state


records_strategy = st.lists(
    st.one_of(readings, readings, readings, readings, st.none()), min_size=1, max_size=60
)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[Any, ...]:
    specs = draw(spec_sets)
    grace = draw(st.sampled_from([0, 2 * S, 5 * S]) | st.integers(0, 10 * S))
    records = draw(records_strategy)
    drains = draw(st.sets(st.integers(0, len(records) - 1)))
    return specs, grace, records, drains


def uninterrupted(specs: tuple[WindowSpec, ...], grace: int, records: list[Any]) -> Run:
    run = Run(specs, grace, "reference")
    run.process(PartitionState(specs, grace), records, set())
    assert not run.repeats
    return run


def check_continuation(
    specs: tuple[WindowSpec, ...],
    grace: int,
    records: list[Reading | None],
    log: list[list[bytes]],
    emitted_before: set[WindowId],
    expected_at: dict[int, tuple[Any, ...]] | None,
    post_drains: set[int],
    exactly_once: bool = True,
) -> None:
    """Recover from ``log``, continue to the end and compare with the uninterrupted run."""
    reference = uninterrupted(specs, grace, records)
    state = recover(specs, grace, log)
    if expected_at is not None:
        assert fingerprint(state) == expected_at[state.next_offset]
    after = Run(specs, grace, "after")
    after.process(state, records, post_drains)
    assert not after.repeats
    assert after.final == reference.final
    for key, result in after.closed.items():
        assert result == reference.closed[key], key
    assert emitted_before | set(after.closed) == set(reference.closed)
    if exactly_once:
        assert not emitted_before & set(after.closed)


@settings(max_examples=60, deadline=None)
@given(case=scenario(), data=st.data())
def test_recover_from_all_deltas(case: tuple[Any, ...], data: st.DataObject) -> None:
    specs, grace, records, drains = case
    crashed = Run(specs, grace, "a")
    crashed.process(PartitionState(specs, grace), records, drains, crash=True)
    kept = data.draw(st.integers(0, len(crashed.logged)), label="deltas written")
    log = crashed.logged[:kept]
    before = {key for ids in crashed.closed_by_delta[:kept] for key in ids}
    fingerprints = {0: fingerprint(PartitionState(specs, grace))} | crashed.fingerprints
    post = data.draw(st.sets(st.integers(0, len(records) - 1)), label="post drains")
    check_continuation(specs, grace, records, log, before, fingerprints, post)


@settings(max_examples=60, deadline=None)
@given(case=scenario(), data=st.data())
def test_recover_from_deltas_written_twice(case: tuple[Any, ...], data: st.DataObject) -> None:
    specs, grace, records, drains = case
    crashed = Run(specs, grace, "a")
    crashed.process(PartitionState(specs, grace), records, drains, crash=True)
    kept = data.draw(st.integers(1, len(crashed.logged)), label="deltas written")
    log = list(crashed.logged[:kept])
    for _ in range(data.draw(st.integers(1, 4), label="duplicates")):
        source = data.draw(st.integers(0, kept - 1))
        # a copy lands after its original (a retried send, or a restarted writer)
        position = data.draw(st.integers(log.index(crashed.logged[source]) + 1, len(log)))
        log.insert(position, crashed.logged[source])
    before = {key for ids in crashed.closed_by_delta[:kept] for key in ids}
    post = data.draw(st.sets(st.integers(0, len(records) - 1)), label="post drains")
    check_continuation(specs, grace, records, log, before, crashed.fingerprints, post)


@settings(max_examples=60, deadline=None)
@given(case=scenario(), data=st.data())
def test_recover_with_a_zombie_writer_interleaved(
    case: tuple[Any, ...], data: st.DataObject
) -> None:
    specs, grace, records, drains = case
    first = Run(specs, grace, "a")
    first.process(PartitionState(specs, grace), records, drains, crash=True)
    zombie_drains = data.draw(st.sets(st.integers(0, len(records) - 1)), label="zombie drains")
    zombie = Run(specs, grace, "z")
    zombie.process(PartitionState(specs, grace), records, zombie_drains, crash=True)
    # both processed the same offsets: wherever they drained at the same offset, same state
    for offset in first.fingerprints.keys() & zombie.fingerprints.keys():
        assert first.fingerprints[offset] == zombie.fingerprints[offset]
    kept_a = data.draw(st.integers(0, len(first.logged)), label="a's deltas written")
    kept_z = data.draw(st.integers(0, len(zombie.logged)), label="zombie's deltas written")
    a_log = list(first.logged[:kept_a])
    z_log = list(zombie.logged[:kept_z])
    log = []
    while a_log or z_log:
        source = (
            a_log
            if not z_log
            else z_log
            if not a_log
            else data.draw(st.sampled_from([a_log, z_log]))
        )
        log.append(source.pop(0))
    before = {key for ids in first.closed_by_delta[:kept_a] for key in ids} | {
        key for ids in zombie.closed_by_delta[:kept_z] for key in ids
    }
    fingerprints = {0: fingerprint(PartitionState(specs, grace))} | zombie.fingerprints
    fingerprints |= first.fingerprints
    post = data.draw(st.sets(st.integers(0, len(records) - 1)), label="post drains")
    check_continuation(specs, grace, records, log, before, fingerprints, post)


@settings(max_examples=60, deadline=None)
@given(case=scenario(), data=st.data())
def test_recover_from_the_latest_snapshot(case: tuple[Any, ...], data: st.DataObject) -> None:
    specs, grace, records, drains = case
    snapshot_after = data.draw(st.integers(0, len(records) - 1), label="snapshot after")
    crashed = Run(specs, grace, "a")
    crashed.process(
        PartitionState(specs, grace), records, drains | {snapshot_after}, snapshot_after, crash=True
    )
    snapshot_index = next(
        i for i, parts in enumerate(crashed.logged) if b'"snapshot":true' in parts[0]
    )
    kept = data.draw(st.integers(snapshot_index + 1, len(crashed.logged)), label="deltas written")
    log = crashed.logged[snapshot_index:kept]
    before = {key for ids in crashed.closed_by_delta[:kept] for key in ids}
    post = data.draw(st.sets(st.integers(0, len(records) - 1)), label="post drains")
    check_continuation(specs, grace, records, log, before, crashed.fingerprints, post)


@settings(max_examples=60, deadline=None)
@given(case=scenario(), data=st.data())
def test_recover_when_the_last_delta_was_lost(case: tuple[Any, ...], data: st.DataObject) -> None:
    """The crash hit after the outputs of a flush but before its delta reached the changelog:
    the records since the previous delta are processed again; windows closed in the lost flush
    may be emitted again, with identical content."""
    specs, grace, records, drains = case
    crashed = Run(specs, grace, "a")
    crashed.process(PartitionState(specs, grace), records, drains, crash=True)
    kept = data.draw(st.integers(1, len(crashed.logged)), label="deltas written")
    log = crashed.logged[: kept - 1]
    before = {key for ids in crashed.closed_by_delta[:kept] for key in ids}
    fingerprints = {0: fingerprint(PartitionState(specs, grace))} | crashed.fingerprints
    post = data.draw(st.sets(st.integers(0, len(records) - 1)), label="post drains")
    check_continuation(specs, grace, records, log, before, fingerprints, post, exactly_once=False)


@settings(max_examples=60, deadline=None)
@given(case=scenario(), data=st.data())
def test_a_zombie_delta_written_after_an_idle_close_is_ignored(
    case: tuple[Any, ...], data: st.DataObject
) -> None:
    """A zombie, paused, resumes after its successor processed every record and closed the
    idle partition's windows; the zombie then processes up to the same end, without that
    idle close, and writes its deltas late. Recovery ignores them (their idle floor is
    older): the state is the successor's, and nothing closed reopens."""
    specs, grace, records, drains = case
    zombie_drains = data.draw(st.sets(st.integers(0, len(records) - 1)), label="zombie drains")
    owner = Run(specs, grace, "a")
    owner.process(PartitionState(specs, grace), records, drains)  # ends with an idle close
    zombie = Run(specs, grace, "z")
    zombie.process(PartitionState(specs, grace), records, zombie_drains, crash=True)
    late = data.draw(st.integers(0, len(zombie.logged)), label="zombie's deltas late")
    log = zombie.logged[: len(zombie.logged) - late] + owner.logged
    log += zombie.logged[len(zombie.logged) - late :]
    state = recover(specs, grace, log)
    assert fingerprint(state) == owner.fingerprints[len(records)]  # its last delta's
    assert state.windows == {}


def test_recovered_state_continues_the_sum_bit_for_bit() -> None:
    from tables.windows import parse_windows

    specs = parse_windows("1m")
    records = [Reading("a", "m", v, i * S, None) for i, v in enumerate([1e16, 1.0, -1e16, 1.0])]
    crashed = Run(specs, 0, "a")
    crashed.process(PartitionState(specs, 0), records[:2], {0, 1}, crash=True)
    state = recover(specs, 0, crashed.logged)
    assert state.next_offset == 2
    for offset in (2, 3):
        state.apply(records[offset], offset)
    state.advance_idle(HUGE)
    (window,) = state.drain().closed
    assert Summary.result(window.state)["sum"] == ((1e16 + 1.0) + -1e16) + 1.0
