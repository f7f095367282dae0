"""The changelog in transactions on Apache Kafka: a zombie's writes are fenced, and recovery
reads every committed record to the true end, past a dead owner's open transaction.

Each partition's writer owns the transactional id ``{app_id}-changelog-{partition}``; opening
it bumps the id's epoch, so the broker refuses any later write of a previous owner and aborts
that owner's open transaction. Recovery reads committed records only, to the last stable
offset, and must rebuild exactly the state the last owner committed.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from typing import Any

import orjson
import pytest

from models.reading import Reading
from pulse.changelog import (
    ChangelogWriter,
    recover_partition,
    transactional_producer_factory,
)
from tables.partition_state import Delta, PartitionState
from tables.windows import parse_windows
from tests.helpers import kafka

pytestmark = pytest.mark.integration

SPECS = parse_windows("10s,1m,sliding:20s")
GRACE_US = 2_000_000
T0_US = 1_700_000_000 * 1_000_000


def readings(seed: int, count: int, devices: int = 40, step_us: int = 100_000) -> list[Reading]:
    """A deterministic stream, ``step_us`` of event time apart, a few late ones; reading i is
    meant for input offset i."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        late = 3_000_000 if rng.random() < 0.05 else 0
        out.append(
            Reading(
                f"dev-{rng.randrange(devices)}",
                rng.choice(("temperature", "humidity")),
                round(rng.uniform(-20, 40), 3),
                T0_US + i * step_us - late,
                {"site": f"s{rng.randrange(3)}"},
            )
        )
    return out


def feed(state: PartitionState, stream: list[Reading], until: int) -> None:
    """Apply the stream's readings from the state's next offset up to ``until``."""
    for offset in range(state.next_offset, until):
        state.apply(stream[offset], offset)


def as_json_delta(delta: Delta) -> Delta:
    """A delta as recovery reads it back."""
    return Delta.from_json(
        orjson.loads(orjson.dumps(delta.to_json(), option=orjson.OPT_NON_STR_KEYS))
    )


def as_recovered(state: PartitionState) -> tuple[Any, ...]:
    """What a recovery must rebuild of a live state (after its drain), copied."""
    return copy.deepcopy(
        (
            state.next_offset,
            state.max_t,
            state.idle_floor,
            state.windows,
            state.latest,
            state.sliding,
        )
    )


def options(broker: str) -> dict[str, Any]:
    return {"bootstrap_servers": kafka.bootstrap(broker)}


async def owner(
    broker: str, topic: str, app_id: str, owners: list[ChangelogWriter]
) -> tuple[ChangelogWriter, list[int]]:
    """A writer that owns partition 0 of ``topic`` (added to ``owners``), and the partitions
    it reports lost."""
    writer = ChangelogWriter(None, topic, transactional_producer_factory(options(broker), app_id))
    owners.append(writer)
    lost: list[int] = []
    writer.on_lost = lost.append
    await writer.open(0)
    assert writer.open_producers == 1
    return writer, lost


async def release(owners: list[ChangelogWriter]) -> None:
    for writer in owners:
        await writer.release_all()


async def recover(broker: str, topic: str) -> tuple[PartitionState | None, int]:
    return await recover_partition(options(broker), topic, 0, SPECS, GRACE_US, read_committed=True)


def test_a_zombie_write_is_refused_and_recovery_yields_the_new_owners_state(
    kafka_broker: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}-state"
    app_id = f"{topic_prefix}app"

    async def run(owners: list[ChangelogWriter]) -> None:
        await kafka.create_topics(kafka_broker, {topic: 1})
        old, old_lost = await owner(kafka_broker, topic, app_id, owners)
        old.adopt(0, -1)
        zombie_state = PartitionState(SPECS, GRACE_US)
        stream = readings(seed=3, count=1000)
        feed(zombie_state, stream, 400)
        snapshot = old.encode(0, zombie_state.drain(old.snapshot_due(0)).delta)
        assert snapshot.snapshot
        assert await old.write([snapshot]) == {0}

        # The partition moves: the new owner opens it (fencing the old one) and recovers.
        new, new_lost = await owner(kafka_broker, topic, app_id, owners)
        state, base = await recover(kafka_broker, topic)
        # (the snapshot's own record cannot point at itself: later records do)
        assert state is not None and base == -1
        assert as_recovered(state) == as_recovered(zombie_state)
        new.adopt(0, base)
        feed(state, stream, 550)
        assert await new.write([new.encode(0, state.drain(new.snapshot_due(0)).delta)]) == {0}

        # The old owner has not noticed: it processes the same records and more, closes its
        # windows by wall clock, and writes. Its transaction is refused.
        feed(zombie_state, stream, 700)
        zombie_state.advance_idle(T0_US + 3600 * 1_000_000)
        zombie_delta = zombie_state.drain().delta
        assert (zombie_delta.from_offset, zombie_delta.to_offset) == (400, 700)
        assert await old.write([old.encode(0, zombie_delta)]) == set()
        assert old_lost == [0] and old.open_producers == 0
        # It has given the partition up: nothing more of it is written.
        assert await old.write([old.encode(0, zombie_state.drain().delta)]) == set()

        # The next owner recovers the new owner's state exactly.
        await owner(kafka_broker, topic, app_id, owners)
        recovered, base = await recover(kafka_broker, topic)
        assert recovered is not None and base == -1
        assert recovered.next_offset == 550
        assert as_recovered(recovered) == as_recovered(state)
        # None of the zombie's records reached the log, committed or not.
        stored = await kafka.read_all(kafka_broker, topic)
        assert stored and all(orjson.loads(r.value or b"")["to"] in (400, 550) for r in stored)
        # Had its delta been stored, recovery would have applied it over the new owner's.
        assert recovered.apply_delta(as_json_delta(zombie_delta))
        assert as_recovered(recovered) != as_recovered(state)
        assert new_lost == []

    async def main() -> None:
        owners: list[ChangelogWriter] = []
        try:
            await run(owners)
        finally:
            await release(owners)

    asyncio.run(main())


def test_recovery_of_a_snapshot_and_hundreds_of_deltas_reads_to_the_true_end(
    kafka_broker: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}-state"
    app_id = f"{topic_prefix}app"

    async def run(owners: list[ChangelogWriter]) -> None:
        await kafka.create_topics(kafka_broker, {topic: 1})
        writer, lost = await owner(kafka_broker, topic, app_id, owners)
        writer.adopt(0, -1)
        state = PartitionState(SPECS, GRACE_US)
        # A snapshot of several records (more rows than one record holds) ...
        stream = readings(seed=5, count=6000 + 401 * 25, devices=3000, step_us=2_000)
        feed(state, stream, 6000)
        snapshot = writer.encode(0, state.drain(writer.snapshot_due(0)).delta)
        assert snapshot.snapshot and len(snapshot.values) > 1
        assert await writer.write([snapshot]) == {0}
        # ... then 400 deltas, one to three per transaction, as the changelog's rounds go.
        deltas = 0
        while deltas < 400:
            round_ = []
            for _ in range(min(1 + deltas % 3, 400 - deltas)):
                feed(state, stream, state.next_offset + 25)
                round_.append(writer.encode(0, state.drain(writer.snapshot_due(0)).delta))
            assert not any(d.snapshot for d in round_)
            assert await writer.write(round_) == {0}
            deltas += len(round_)
        committed = as_recovered(state)

        # The owner dies inside a transaction: its records are stored, never committed.
        producer: Any = snapshot.owner
        await producer.begin_transaction()
        feed(state, stream, state.next_offset + 25)
        for value in writer.encode(0, state.drain().delta).values:
            await (await producer.send(topic, value=value, partition=0))
        await producer.stop()

        # Read committed, the open transaction ends the log: what comes before it is read.
        began = time.monotonic()
        before_abort, _ = await recover(kafka_broker, topic)
        assert time.monotonic() - began < 10
        assert before_abort is not None and as_recovered(before_abort) == committed

        # The next owner's open aborts that transaction, so recovery reads to the end at
        # once instead of waiting out the transaction's timeout.
        began = time.monotonic()
        await owner(kafka_broker, topic, app_id, owners)
        recovered, base = await recover(kafka_broker, topic)
        took = time.monotonic() - began
        print(f"owner opened and {deltas} deltas recovered in {took:.2f}s")
        assert took < 10
        assert recovered is not None and base == 0
        assert as_recovered(recovered) == committed
        assert recovered.next_offset == 6000 + deltas * 25 == committed[0]
        assert lost == []

    async def main() -> None:
        owners: list[ChangelogWriter] = []
        try:
            await run(owners)
        finally:
            await release(owners)

    asyncio.run(main())
