"""The bridge's Kafka side: a producer whose writes a lease deadline fences, and the read-back.

:class:`FencedProducer` sends one ProduceRequest per leader broker for a round of records
(one record batch per partition), over aiokafka's client, and checks the fence (the leases'
deadlines, :meth:`pulse.bridge.service.Bridge`) right before the requests are written to
the sockets, with no await in between: a bridge paused anywhere (SIGSTOP, a VM stalled, a
long GC) finds its deadline passed when it resumes and writes nothing more. Only a pause
in the microseconds between the check and the write of the request escapes the check (see
docs/architecture.md, "The Redis Streams bridge").

:func:`read_back` reads the readings and dead-letter topics from given offsets up to their
high watermarks (as fetch responses report them, not ListOffsets, which tansu under-reports)
and collects, per stream asked for, the entry ids the records' headers carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, NoError, for_code
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)

STREAM_HEADER = "pulse-stream"
ENTRY_HEADER = "pulse-entry"
LEASE_HEADER = "pulse-lease"
"""The headers of every record the bridge produces, in this order: the stream, the entry id
and the lease token it was produced under."""

BATCH_BYTES = 1_000_000
"""A partition's record batch in one round, at most (Kafka's default ``message.max.bytes``
is 1,048,588 per batch; a request may carry one batch per partition): the encoder's limit."""
REQUEST_TIMEOUT_MS = 30_000
"""How long a broker may take to acknowledge a round (acks from every in-sync replica)."""
READ_BACK_TIMEOUT = 60.0
"""Seconds a read-back may take before it is given up (Kafka away) and tried again."""


_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_ACKS_TIMEOUT = struct.Struct(">hi")
_PARTITION = struct.Struct(">ii")
_encoded_classes: dict[type[Any], type[Any]] = {}


class _Encoded:
    """A request struct whose body is encoded already (:class:`EncodedProduce`)."""

    body: bytes

    def encode(self) -> bytes:
        return self.body


class EncodedProduce(ProduceRequest):
    """A ProduceRequest of record batches that are already encoded: its body is joined from
    them once, where aiokafka's encoding would copy each batch five times over (a round
    is megabytes)."""

    def __init__(
        self,
        acks: int,
        timeout_ms: int,
        topics: Mapping[str, list[tuple[int, bytes | bytearray]]],
    ) -> None:
        super().__init__(None, acks, timeout_ms, [])
        self._batches = topics

    def build(self, request_struct_class: type[Any]) -> Any:
        encoded = _encoded_classes.get(request_struct_class)
        if encoded is None:
            encoded = type(request_struct_class.__name__, (_Encoded, request_struct_class), {})
            _encoded_classes[request_struct_class] = encoded
        request = super().build(encoded)
        # v3 on: transactional_id (null), then as v0 to v2: acks, timeout, the topics.
        parts: list[bytes | bytearray] = [b"\xff\xff"] if encoded.API_VERSION >= 3 else []
        parts += (
            _ACKS_TIMEOUT.pack(self.required_acks, self._timeout),
            _INT32.pack(len(self._batches)),
        )
        for topic, batches in self._batches.items():
            name = topic.encode()
            parts += (_INT16.pack(len(name)), name, _INT32.pack(len(batches)))
            for partition, batch in batches:
                parts += (_PARTITION.pack(partition, len(batch)), batch)
        request.body = b"".join(parts)
        return request


class Fenced(Exception):
    """The fence said no: a lease's deadline passed (or a lease was lost) before the round
    went out; nothing of it was written."""


class ProduceFailed(Exception):
    """A round that may be partly written: a broker refused a partition's batch, did not
    answer, or could not be reached. The streams in it must be read back."""


class FencedProducer:
    """Produces whole rounds: ``send(batches, fence)`` writes every batch, each to its
    partition's leader, after ``fence()`` said yes, and returns each partition's end offset
    once every in-sync replica has its batch."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.client = AIOKafkaClient(**options, request_timeout_ms=REQUEST_TIMEOUT_MS)
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[str, dict[bytes, int]] = {}
        self._counts: dict[str, int] = {}

    async def start(self) -> None:
        await self.client.bootstrap()

    async def close(self) -> None:
        await self.client.close()

    async def partitions(self, topic: str) -> int:
        """The partition count of ``topic`` (waits for its metadata)."""
        self.client.add_topic(topic)
        partitions = await self.client._wait_on_metadata(topic)
        count = len(partitions)
        if self._counts.get(topic) != count:
            self._counts[topic] = count
            self._partition_of.pop(topic, None)
        return count

    def partition(self, topic: str, key: bytes) -> int:
        """Kafka's default partition of ``key`` (murmur2, as every producer of Pulse and
        Kafka's own clients compute it), remembered per key (:meth:`partitions_of`)."""
        known = self.partitions_of(topic)
        found = known.get(key)
        if found is None:
            every = list(range(self._counts[topic]))
            found = self._partitioner(key, every, every)
            if len(known) > 200_000:
                known.clear()
            known[key] = found
        return found

    def partitions_of(self, topic: str) -> dict[bytes, int]:
        """The partitions of ``topic`` computed so far, by key."""
        known = self._partition_of.get(topic)
        if known is None:
            known = self._partition_of[topic] = {}
        return known

    def count(self, topic: str) -> int:
        """The partition count of ``topic`` as :meth:`partitions` last found it."""
        return self._counts[topic]

    async def send(
        self,
        batches: Mapping[tuple[str, int], tuple[bytes | bytearray, int]],
        fence: Callable[[], None],
    ) -> dict[TopicPartition, int]:
        """Write ``batches`` (each partition's next offset is returned) once ``fence()``
        returned (it raises :class:`Fenced` to say no). Raises :class:`ProduceFailed` when
        a batch may not have been written; then any of them may have been."""
        client = self.client
        by_node: dict[int, dict[str, list[tuple[int, bytes | bytearray]]]] = {}
        counts: dict[TopicPartition, int] = {}
        for (topic, partition), (batch, count) in batches.items():
            tp = TopicPartition(topic, partition)
            leader = client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                client.force_metadata_update()
                raise ProduceFailed(f"no leader known for {tp.topic}[{tp.partition}]")
            by_node.setdefault(leader, {}).setdefault(topic, []).append((partition, batch))
            counts[tp] = count
        connections = {}
        try:
            for node in by_node:
                connections[node] = await client._get_conn(node)
        except KafkaError as exc:
            raise ProduceFailed(f"cannot connect: {exc!r}") from exc
        if any(conn is None for conn in connections.values()):
            raise ProduceFailed("a broker cannot be reached")
        # From here to the writes: no await, so the fence holds for what is written.
        fence()
        answers = []
        try:
            for node, topics in by_node.items():
                request = EncodedProduce(-1, REQUEST_TIMEOUT_MS, topics)
                answers.append(connections[node].send(request))
        except KafkaError as exc:
            for answer in answers:
                answer.close()
            raise ProduceFailed(f"could not send: {exc!r}") from exc
        results = await asyncio.gather(*answers, return_exceptions=True)
        ends: dict[TopicPartition, int] = {}
        errors = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(repr(result))
                continue
            for topic, partitions in result.topics:
                for info in partitions:
                    partition, code, offset = info[0], info[1], info[2]
                    tp = TopicPartition(topic, partition)
                    error = for_code(code)
                    if error is NoError:
                        ends[tp] = offset + counts[tp]
                    else:
                        errors.append(f"{topic}[{partition}]: {error.__name__}")
                        if getattr(error, "invalid_metadata", False):
                            client.force_metadata_update()
        missing = {TopicPartition(*where) for where in batches} - set(ends)
        if errors or missing:
            raise ProduceFailed("; ".join(errors) or f"no answer for {sorted(missing)}")
        return ends


async def end_offsets(
    options: Mapping[str, Any], topics: Iterable[str]
) -> dict[TopicPartition, int]:
    """Each partition's end as ListOffsets reports it: a lower bound (tansu under-reports)."""
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


@dataclass
class ReadBack:
    """What a read-back found: per stream, the entry ids produced since its checkpoint;
    each partition's high watermark when it was read to the end; records read."""

    found: dict[bytes, set[bytes]]
    ends: dict[TopicPartition, int]
    records: int


async def read_back(
    options: Mapping[str, Any],
    starts: Mapping[TopicPartition, int],
    streams: Iterable[bytes],
    timeout: float = READ_BACK_TIMEOUT,
) -> ReadBack:
    """Read each partition of ``starts`` from its offset to the high watermark and collect
    the entry ids of the records whose stream header is one of ``streams``."""
    wanted = set(streams)
    found: dict[bytes, set[bytes]] = {stream: set() for stream in wanted}
    consumer = AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=16 << 20,
    )
    await consumer.start()
    records = 0
    ends: dict[TopicPartition, int] = {}
    try:
        consumer.assign(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(ends) < len(starts):
            if loop.time() > deadline:
                raise ProduceFailed(
                    f"read-back: {len(starts) - len(ends)} partitions not read to their end "
                    f"in {timeout:g} s"
                )
            batches = await consumer.getmany(timeout_ms=200)
            for tp_records in batches.values():
                records += len(tp_records)
                for record in tp_records:
                    headers = record.headers
                    if len(headers) >= 2 and headers[0][0] == STREAM_HEADER:
                        ids = found.get(headers[0][1])
                        if ids is not None:
                            ids.add(headers[1][1])
            for tp in starts:
                if tp in ends:
                    continue
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    position = await consumer.position(tp)
                    if position >= highwater:
                        ends[tp] = position
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return ReadBack(found, ends, records)
