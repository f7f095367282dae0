"""Partition ownership of the readings processor: each partition resumes exactly where its
last owner's changelog left it.

On assignment a new partition's state is recovered from the changelog (or starts at the
group's committed offset, else the partition's beginning) and the consumer seeks to that
state's position, whatever the group committed. On revocation the partition is flushed
(outputs, then changelog) before its state is dropped, so the next owner starts after the
last record this one processed. Idle close raises the watermark of a caught-up partition
that got no record for ``PULSE_IDLE_CLOSE``, so quiet devices get their final windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from agents.flush import FlushPipeline
from pulse.changelog import recover_partition
from pulse.kafka_clients import client_options
from pulse.settings import Settings
from tables.partition_state import PartitionState

log = logging.getLogger(__name__)

ASSIGNMENT_RETRY_DELAY = 1.0
"""Seconds before a failed takeover of partitions asks the group to assign them again."""


class PartitionOwner(FlushPipeline):
    """The partition handling of the readings processor (a base class of ReadingsProcessor)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._last_record: dict[int, float] = {}
        """When each partition last got a record (monotonic seconds; set on assignment)."""
        self.ready = asyncio.Event()
        """Set once the first assignment has been recovered (for tests and health checks)."""

    def note_records(self, partition: int, now: float) -> None:
        """The loop applied records of ``partition`` at ``now`` (monotonic seconds)."""
        self._last_record[partition] = now

    # -- idle close ----------------------------------------------------------------------

    async def _close_idle_periodically(self) -> None:
        period = min(1.0, self.settings.idle_close / 4)
        while not self.should_stop:
            began = time.monotonic()
            await asyncio.sleep(period)
            if time.monotonic() - began > period + 1.0:
                # The process was stalled (blocked loop, paused, overloaded): wall-clock gaps
                # say nothing about the partitions now; look again next round.
                continue
            await self.close_idle()

    async def close_idle(self) -> None:
        """Advance the watermark of caught-up partitions that got no record for a while."""
        consumer = self.consumer
        if consumer is None:
            return
        now = time.monotonic()
        floor_us = int(time.time() * 1_000_000) - self.settings.grace_us
        now_ms = time.time() * 1000
        async with self._lock:
            for partition, state in self.states.items():
                tp = TopicPartition(self.settings.topic_readings, partition)
                try:
                    highwater = consumer.highwater(tp)
                    polled_ms = consumer.last_poll_timestamp(tp)
                except (AssertionError, IllegalStateError):
                    continue  # revoked meanwhile
                if polled_ms is None or now_ms - polled_ms > 2000:
                    # No fresh fetch response (the broker away, the partition paused): readings
                    # may be held up on their way. Quiet time counts again from here, at every
                    # look, so that it starts over when fetches are fresh again.
                    self._last_record[partition] = now
                    continue
                if now - self._last_record.get(partition, now) < self.settings.idle_close:
                    continue
                # Caught up means: every record below the high watermark of a fetch response
                # is applied (not merely handed out by the consumer), and that response is
                # fresh, so no record can be waiting unseen.
                if highwater is None or state.next_offset < highwater:
                    continue
                state.advance_idle(floor_us)

    # -- rebalancing ---------------------------------------------------------------------

    def partition_lost(self, partition: int) -> None:
        """The changelog refused this worker's writes of ``partition`` (a newer owner fenced
        them, or the broker aborted the transaction): drop its state, stop fetching it, and
        have the group assign the partitions again, which recovers it from the changelog
        wherever it lands (here too, if it still belongs here)."""
        self.states.pop(partition, None)
        self._last_record.pop(partition, None)
        consumer = self.consumer
        if consumer is None:
            return
        with contextlib.suppress(IllegalStateError):
            consumer.pause(TopicPartition(self.settings.topic_readings, partition))
        log.warning("readings: partition %d lost; rejoining the group", partition)
        self._rejoin_group()

    def _rejoin_group(self) -> None:
        """Have the consumer group assign the partitions again (a rebalance)."""
        # aiokafka has no public call for it; its group coordinator rejoins on request.
        coordinator = getattr(self.consumer, "_coordinator", None)
        request_rejoin = getattr(coordinator, "request_rejoin", None)
        if request_rejoin is not None:
            request_rejoin()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked if tp.partition in self.states}
        if not partitions:
            return
        async with self._lock:
            await self._flush_now(partitions)
            for partition in partitions:
                # (a partition lost meanwhile is gone already)
                self.states.pop(partition, None)
                self._last_record.pop(partition, None)
                assert self.writer is not None
                await self.writer.release(partition)
        log.info("readings: handed over partitions %s", sorted(partitions))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer, writer, s = self.consumer, self.writer, self.settings
        assert consumer is not None and writer is not None
        new = sorted(tp for tp in assigned if tp.partition not in self.states)
        options = client_options(s)
        try:
            # Own each changelog partition before reading it: with transactions this fences
            # the previous owner and aborts its open transaction (ChangelogWriter.open).
            await asyncio.gather(*(writer.open(tp.partition) for tp in new))
            recovered = await asyncio.gather(
                *(
                    recover_partition(
                        options,
                        s.changelog_topic,
                        tp.partition,
                        s.windows,
                        s.grace_us,
                        read_committed=writer.transactional,
                        max_tag_values=s.max_tag_values,
                    )
                    for tp in new
                )
            )
            # A partition never processed starts at its committed offset (if the changelog
            # was lost) or at its beginning. (``position()`` would wait ~0.5 s a partition.)
            fresh = [tp for tp, (state, _) in zip(new, recovered, strict=True) if state is None]
            starts = {tp: await consumer.committed(tp) for tp in fresh}
            unstarted = [tp for tp, offset in starts.items() if offset is None]
            if unstarted:
                starts.update(await consumer.beginning_offsets(unstarted))
            # A recovered partition judges by the registry version its changelog recorded,
            # exactly, until its next flush records a newer one (PartitionState.drain).
            source = self.registry_source
            for tp, (state, _) in zip(new, recovered, strict=True):
                if state is not None and state.registry_version and source is not None:
                    registry = await source.at_version(state.registry_version)
                    state.use_registry(registry, self.registry_required)
                    self.registry_switched[tp.partition] = time.time()
                    log.info(
                        "registry: partition %d judges alerts by version %d from offset %d "
                        "on (recovered)",
                        tp.partition,
                        state.registry_version,
                        state.next_offset,
                    )
        except Exception:
            # aiokafka would log it and carry on with partitions nobody processes: give them
            # up and let the group assign them again, after a pause.
            log.exception(
                "readings: taking over partitions %s failed", [tp.partition for tp in new]
            )
            for tp in new:
                await writer.release(tp.partition)
            await asyncio.sleep(ASSIGNMENT_RETRY_DELAY)
            self._rejoin_group()
            return
        async with self._lock:
            now = time.monotonic()
            for tp, (state, base) in zip(new, recovered, strict=True):
                if state is None:
                    state = PartitionState(
                        s.windows,
                        s.grace_us,
                        next_offset=starts[tp],
                        max_tag_values=s.max_tag_values,
                    )
                    state.use_registry(None, self.registry_required)
                writer.adopt(tp.partition, base)
                consumer.seek(tp, state.next_offset)
                self.states[tp.partition] = state
                self._last_record[tp.partition] = now
        log.info(
            "readings: partitions %s assigned (%d recovered, %d new)",
            sorted(tp.partition for tp in assigned),
            len(new) - len(fresh),
            len(fresh),
        )
        self.ready.set()


class RebalanceListener(ConsumerRebalanceListener):
    """Hands the consumer group's assignments and revocations to the partition owner."""

    def __init__(self, owner: PartitionOwner) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner._on_assigned(assigned)
