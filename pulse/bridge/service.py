"""``pulse bridge``: readings appended to Redis Streams into topic ``readings``, exactly once.

How it stays exact without Kafka transactions (docs/architecture.md, "The Redis Streams
bridge", says why each step is needed):

1. **A lease per stream.** A bridge reads, checkpoints and trims a stream only while it holds
   the stream's lease (``{S}:lease``, a TTL of ``PULSE_BRIDGE_LEASE``, renewed every sixth of
   it); each lease has a new token. Every Redis step checks the lease inside Redis (one Lua
   script each: pulse/bridge/_redis.py). Kafka cannot check it, so the bridge fences its own
   writes: it writes a round only before its lease's *deadline*, half the lease after the
   renewal that set it was sent, checked with no await between the check and the writes
   (pulse/bridge/_kafka.py). A lease expires in Redis a whole lease after that renewal was
   sent, so a round written before the deadline is in the topic (in practice within
   milliseconds) long before anyone else can hold the lease.
2. **Rounds.** Entries are read (XREADGROUP NOACK: the group's cursor, no pending-entries
   list; progress is ``acked`` below) into per-stream queues; a round takes entries
   of the streams in their order, makes each a record of ``readings`` (or, when it is no
   valid reading, of the dead-letter topic), headers ``pulse-stream``, ``pulse-entry``,
   ``pulse-lease``, one record batch per partition, and writes them in one request per
   broker. One round is in flight at a time (the next is read and built meanwhile), so a
   stream's records keep their order in each partition.
3. **Checkpoints, XTRIM.** Once Kafka has acknowledged a round, each of its streams gets
   a checkpoint (``{S}:bridge``: the last entry of the round, ``acked``, and the
   partitions' end offsets as known then) with XTRIM MINID below them, in one script. So
   every entry up to ``acked`` is in Kafka, and a record of an entry after ``acked`` can
   only be at or after the checkpoint's offsets.
4. **Read-back.** Taking a stream over (or after a round that failed, or any doubt), the
   bridge sets the group's cursor back to ``acked``, reads every partition of both topics
   from the checkpoint's offsets to their ends and collects the entry ids of the stream's
   records there: those entries are already in Kafka and are checkpointed without being
   produced again; the others are produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from mode import Service
from redis.exceptions import RedisError, ResponseError

from models.entries import EntryReader, RejectedEntry, entry_order, entry_time_ms
from models.outputs import EntryDeadLetter
from pulse.bridge import _kafka, _redis, encoding
from pulse.bridge._kafka import Fenced, FencedProducer, ProduceFailed
from pulse.gc_tuning import freeze_startup
from pulse.kafka_clients import client_options
from pulse.redis_clients import RedisClient, redis_client
from pulse.settings import Settings, redis_is_cluster
from pulse.sinks._base import SinkHealth
from pulse.sinks._resp import RedisReplyError, pack
from pulse.sinks._retry import Backoff
from pulse.topics import ensure_topics

log = logging.getLogger(__name__)

ROUND_ENTRIES = 20_000
"""Entries in one round at most (a round is also cut where a partition's batch is full)."""
READ_COUNT_MIN = 100
"""Entries a read of one stream asks for at least."""
READ_AHEAD = 3
"""Rounds' worth of entries the reader keeps queued per stream, at most."""
IDLE_WAIT_MS = 250
"""How long the bridge blocks waiting for new entries when every stream is drained."""
DEADLINE_SHARE = 0.5
"""The share of the lease, counted from when a renewal was sent, during which the bridge
may write: the other half is the margin in which a written request reaches the log."""
RENEWALS_PER_LEASE = 6

CLAIM = "claim"
"""The stream needs a claim and read-back before its entries are produced."""
READY = "ready"
RELEASE = "release"
"""Held, to be handed over: nothing more is read; released once its rounds are done."""
LOST = "lost"
"""Someone else holds the lease (or it expired): nothing more is written for it."""


@dataclass(eq=False)
class Stream:
    """A stream this bridge holds the lease of."""

    name: str
    token: int
    value: str
    """The lease's value in Redis: ``"{token} {owner}"``."""
    deadline: float
    """Monotonic time after which nothing may be written under this lease."""
    phase: str = CLAIM
    queue: list[Any] = field(default_factory=list)
    """Entries read and not yet in a round (``[id, fields]`` each), from :attr:`head` on."""
    head: int = 0
    generation: int = 0
    """Counts the drops of the queue: a read under way when it changes is discarded."""
    skip: set[bytes] = field(default_factory=set)
    """Entries found in Kafka by the last read-back: acknowledged, not produced again."""
    cursor: bytes = b"0-0"
    """The last entry id the group delivered (where an idle wait starts)."""
    acked: bytes = b"0-0"
    backlog: int = 0
    """Entries in the stream not yet in Kafka (its length after the last trim or renewal)."""
    over_lag: bool = False
    rounds: int = 0
    """Rounds built or in flight that hold entries of this stream."""

    def __post_init__(self) -> None:
        self.key = self.name.encode()
        self.token_bytes = str(self.token).encode()

    @property
    def queued(self) -> int:
        return len(self.queue) - self.head

    def drop_queue(self) -> None:
        self.queue = []
        self.head = 0
        self.generation += 1


@dataclass
class Part:
    """One stream's entries in a round."""

    ids: list[bytes] = field(default_factory=list)
    """Every entry of the round, produced or skipped (what its checkpoint acknowledges)."""


@dataclass
class Round:
    """One round: per partition of the readings and the dead-letter topics, its records
    encoded (pulse/bridge/encoding.py) after room for the record batch's header, and their
    count and timestamps (``stats``)."""

    readings: list[bytearray]
    readings_stats: list[int]
    letters: list[bytearray]
    letters_stats: list[int]
    parts: dict[Stream, Part] = field(default_factory=dict)
    produced: int = 0
    dead_lettered: int = 0
    skipped: int = 0

    @classmethod
    def empty(cls, readings: int, letters: int) -> Round:
        # The header's room counts against a batch's limit (the encoder adds HEADER_SIZE to
        # a buffer's length): a batch is at most _kafka.BATCH_BYTES less that.
        return cls(
            [bytearray(encoding.HEADER_SIZE) for _ in range(readings)],
            [0] * (3 * readings),
            [bytearray(encoding.HEADER_SIZE) for _ in range(letters)],
            [0] * (3 * letters),
        )

    def batches(self, readings: str, letters: str) -> dict[tuple[str, int], tuple[bytearray, int]]:
        """Each partition's record batch (its buffer, sealed in place) and its record count,
        by (topic, partition)."""
        out = {}
        for topic, buffers, stats in (
            (readings, self.readings, self.readings_stats),
            (letters, self.letters, self.letters_stats),
        ):
            for partition, records in enumerate(buffers):
                count, first, greatest = stats[3 * partition : 3 * partition + 3]
                if count:
                    encoding.seal(records, count, first, greatest)
                    out[(topic, partition)] = (records, count)
        return out


@dataclass
class Counters:
    produced: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    """Entries a read-back found in Kafka already, acknowledged without producing them."""
    rounds: int = 0
    failed_rounds: int = 0
    read_backs: int = 0
    read_back_records: int = 0
    acquired: int = 0
    lost: int = 0
    released: int = 0


GC_YOUNG_THRESHOLD = 500_000
"""Allocations between two young collections in a bridge process. Above the lists the queued
entries hold (two per entry; about 160,000 for :data:`READ_AHEAD` rounds of
:data:`ROUND_ENTRIES` and a read), so entries are mostly encoded and freed before a
collection would scan them (at 50,000 they took about a seventh of the bridge's CPU:
bench/README.md's log)."""


def tune_gc() -> None:
    """The cyclic garbage collector for a bridge process: each read makes two lists per entry
    (hiredis's reply), which collections every 700 allocations would scan again and again (as
    they would the worker's state: pulse.app.tune_gc). What start-up made is frozen, and young
    collections come every :data:`GC_YOUNG_THRESHOLD` allocations; cycles (asyncio's tasks and
    exceptions) are still collected, later (pulse.gc_tuning). For ``pulse bridge``."""
    freeze_startup((GC_YOUNG_THRESHOLD, 20, 100))


class Bridge(Service):
    """The bridge: leases its share of the streams, moves their entries, exactly once."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.group = f"{settings.app_id}-bridge"
        self.members_key = f"{settings.redis_prefix}:bridge:members"
        self.lease_ms = max(1, round(settings.bridge_lease * 1000))
        self.streams: dict[str, Stream] = {}
        """The streams this bridge holds (or just lost), by name."""
        self.known: list[str] = []
        """The streams found at the last discovery."""
        self.members = 1
        self.counters = Counters()
        self.kafka_health = SinkHealth("bridge-kafka")
        self.redis_health = SinkHealth("bridge-redis")
        self.running = asyncio.Event()
        self.known_end: dict[TopicPartition, int] = {}
        """Per partition of both topics, an offset at or before its end: from ListOffsets at
        start, the acknowledgements since, and the read-backs' high watermarks."""
        self.topics = (settings.topic_readings, settings.topic_dlq)
        self._redis: RedisClient | None = None
        self._waiter: RedisClient | None = None
        self._scripts: _redis.Scripts | None = None
        self._wire: _redis.Wire | None = None
        self._entries = EntryReader(settings.max_message_bytes, settings.max_future_us)
        self._producer: FencedProducer | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._stopping = False
        self._main: asyncio.Future[None] | None = None
        self._lease_loop: asyncio.Future[None] | None = None
        self._next_discovery = 0.0
        self._read_lock = asyncio.Lock()
        """Held by the reader for each read: a claim sets the group's cursor back, which no
        read may cross."""
        self._filled = asyncio.Event()
        """Wakes the main loop: entries were read, or a stream was taken (to be claimed)."""
        self._consumed = asyncio.Event()
        """Wakes the reader: a round took entries, or a stream became ready."""
        self._reading: asyncio.Future[None] | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s)
        self._redis = redis_client(s)
        self._waiter = redis_client(s)
        self._scripts = _redis.Scripts(self._redis)
        self._wire = _redis.Wire(s)
        self._producer = FencedProducer(client_options(s))
        await self._producer.start()
        for topic in self.topics:
            await self._producer.partitions(topic)
        self.known_end = await _kafka.end_offsets(client_options(s), self.topics)
        self._lease_loop = self.add_future(self._leases())
        self._reading = self.add_future(self._reader())
        self._main = self.add_future(self._run())
        self.running.set()
        log.info(
            "bridge %s: moving streams %s into %s (dead letters: %s), lease %g s",
            self.owner,
            ",".join(s.bridge_patterns),
            s.topic_readings,
            s.topic_dlq,
            s.bridge_lease,
        )

    async def on_stop(self) -> None:
        self._stopping = True
        if self._main is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._main), 30)
        for loop in (self._reading, self._lease_loop):
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await loop
        with contextlib.suppress(RedisError, OSError):
            await self._release_all()
        if self._producer is not None:
            await self._producer.close()
        if self._wire is not None:
            with contextlib.suppress(Exception):
                await self._wire.close()
        for client in (self._redis, self._waiter):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    @property
    def scripts(self) -> _redis.Scripts:
        assert self._scripts is not None
        return self._scripts

    @property
    def wire(self) -> _redis.Wire:
        assert self._wire is not None
        return self._wire

    @property
    def redis(self) -> RedisClient:
        assert self._redis is not None
        return self._redis

    @property
    def producer(self) -> FencedProducer:
        assert self._producer is not None
        return self._producer

    # -- the main loop ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        in_flight: asyncio.Task[dict[TopicPartition, int]] | None = None
        sent: Round | None = None
        while True:
            try:
                if not self._stopping:
                    await self._claims()
                await self._releases(sent)
                nxt: Round | None = None
                if not self._stopping:
                    nxt = self._build()
                    if nxt is not None:
                        self._consumed.set()
                if in_flight is not None and sent is not None:
                    done = await self._finish(sent, in_flight)
                    in_flight, sent = None, None
                    if not done:
                        if nxt is not None:
                            self._fail(nxt, "the round before it failed")
                            nxt = None
                        await asyncio.sleep(backoff.next_wait())
                        continue
                    backoff = Backoff()
                if nxt is not None:
                    sent = nxt
                    in_flight = asyncio.ensure_future(self._send(nxt))
                elif self._stopping:
                    break
                else:  # nothing queued: wait for the reader
                    self._filled.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._filled.wait(), IDLE_WAIT_MS / 1000)
            except (RedisError, OSError) as exc:
                self.redis_health.waiting(repr(exc))
                await asyncio.sleep(backoff.next_wait())
            except (KafkaError, ProduceFailed) as exc:  # a read-back could not read
                self.kafka_health.waiting(repr(exc))
                await asyncio.sleep(backoff.next_wait())
            except Exception as exc:
                log.exception("bridge: stopping on an unexpected error")
                await self.crash(exc)
                return
        if self._checkpoints is not None:
            await self._checkpoints

    async def _reader(self) -> None:
        """Keeps the ready streams' queues filled (a round's worth ahead), so that Redis
        answers while rounds are built and Kafka acknowledges; waits for new entries when
        every stream is read to its end."""
        backoff = Backoff()
        while not self._stopping:
            try:
                async with self._read_lock:
                    wanted, read = await self._fill()
                backoff = Backoff()
                if read:
                    self._filled.set()
                elif wanted:
                    await self._idle()
                else:  # every queue full, or nothing held: until a round takes entries
                    self._consumed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._consumed.wait(), IDLE_WAIT_MS / 1000)
            except (RedisError, RedisReplyError, OSError, asyncio.IncompleteReadError) as exc:
                self.redis_health.waiting(repr(exc))
                await asyncio.sleep(backoff.next_wait())
            except Exception as exc:
                log.exception("bridge: stopping on an unexpected error")
                await self.crash(exc)
                return

    async def _send(self, round_: Round) -> dict[TopicPartition, int]:
        def fence() -> None:
            now = time.monotonic()
            for stream in round_.parts:
                if stream.phase == LOST or now >= stream.deadline:
                    raise Fenced(f"lease of {stream.name} ({stream.phase}) past its deadline")

        settings = self.settings
        batches = round_.batches(settings.topic_readings, settings.topic_dlq)
        return await self.producer.send(batches, fence)

    async def _finish(
        self, round_: Round, in_flight: asyncio.Task[dict[TopicPartition, int]]
    ) -> bool:
        """Wait for the round in flight; then its checkpoints go (in the background, after
        the previous round's). False: it failed, and its streams are to be read back."""
        try:
            ends = await in_flight
        except (Fenced, ProduceFailed, KafkaError, OSError) as exc:
            self._fail(round_, repr(exc))
            if isinstance(exc, Fenced):
                log.warning("bridge: round not sent: %s", exc)
            else:
                self.kafka_health.waiting(repr(exc))
            return False
        self.kafka_health.ok()
        for tp, end in ends.items():
            if end > self.known_end.get(tp, 0):
                self.known_end[tp] = end
        offsets = self._offsets()
        c = self.counters
        c.rounds += 1
        c.produced += round_.produced
        c.dead_lettered += round_.dead_lettered
        c.skipped += round_.skipped
        previous = self._checkpoints
        self._checkpoints = asyncio.ensure_future(self._checkpoint(round_, offsets, previous))
        return True

    def _fail(self, round_: Round, why: str) -> None:
        """A round that failed or will not be sent: its streams are read back."""
        self.counters.failed_rounds += 1
        for stream in round_.parts:
            stream.rounds -= 1
            self._recover(stream, why)

    def _recover(self, stream: Stream, why: str) -> None:
        if stream.phase in (READY, RELEASE):
            log.info("bridge: %s to be read back: %s", stream.name, why)
            stream.phase = CLAIM if stream.phase == READY else RELEASE
        stream.drop_queue()
        stream.skip.clear()

    def _offsets(self) -> bytes:
        by_topic: dict[str, list[int]] = {}
        for tp, end in sorted(self.known_end.items()):
            offsets = by_topic.setdefault(tp.topic, [])
            offsets.extend([0] * (tp.partition + 1 - len(offsets)))
            offsets[tp.partition] = end
        return orjson.dumps(by_topic)

    async def _checkpoint(
        self, round_: Round, offsets: bytes, previous: asyncio.Task[None] | None
    ) -> None:
        """Each stream of a round that Kafka acknowledged: its checkpoint (fenced: the
        acked entry, the offsets, the trim), in one round trip."""
        if previous is not None:
            await previous
        parts = []
        for stream, part in round_.parts.items():
            stream.rounds -= 1
            if part.ids:
                parts.append((stream, part))
        backoff = Backoff()
        while parts:
            parts = [(stream, part) for stream, part in parts if stream.phase != LOST]
            commands = []
            for stream, part in parts:
                last = part.ids[-1]
                commands.append(
                    pack(
                        "EVALSHA",
                        _redis.CHECKPOINT_SHA,
                        3,
                        _redis.lease_key(stream.name),
                        _redis.state_key(stream.name),
                        stream.name,
                        stream.value,
                        last,
                        offsets,
                        _redis.next_id(last),
                    )
                )
            try:
                replies = await self.wire.execute(self.wire.checkpoints, commands)
            except (RedisError, RedisReplyError, OSError, asyncio.IncompleteReadError) as exc:
                self.redis_health.waiting(repr(exc))
                await asyncio.sleep(backoff.next_wait())
                continue
            self.redis_health.ok()
            for (stream, part), answer in zip(parts, replies, strict=True):
                if answer == -1:
                    self._lost(stream, "its checkpoint was refused")
                else:
                    stream.acked = part.ids[-1]
                    self._backlog(stream, int(answer))
            break

    def _lost(self, stream: Stream, why: str) -> None:
        if stream.phase != LOST:
            log.warning("bridge: lost the lease of %s (%s)", stream.name, why)
            stream.phase = LOST
            stream.drop_queue()
            stream.skip.clear()
            self.counters.lost += 1

    def _backlog(self, stream: Stream, length: int) -> None:
        stream.backlog = length
        over = length > self.settings.bridge_max_lag
        if over and not stream.over_lag:
            log.warning(
                "bridge: stream %s holds %d entries not yet in Kafka, more than "
                "PULSE_BRIDGE_MAX_LAG (%d)",
                stream.name,
                length,
                self.settings.bridge_max_lag,
            )
        elif stream.over_lag and not over:
            log.info("bridge: stream %s is back under PULSE_BRIDGE_MAX_LAG", stream.name)
        stream.over_lag = over

    # -- claims and read-back -----------------------------------------------------------

    async def _claims(self) -> None:
        for name in [n for n, s in self.streams.items() if s.phase == LOST and not s.rounds]:
            del self.streams[name]
        claiming = [s for s in self.streams.values() if s.phase == CLAIM and not s.rounds]
        if not claiming:
            return
        if self._checkpoints is not None:  # the claims read the latest checkpoints
            await self._checkpoints
        async with self._read_lock:  # no read under way while the cursors are set back
            answers = await asyncio.gather(
                *(
                    self.scripts.claim(
                        keys=[_redis.lease_key(s.name), _redis.state_key(s.name), s.name],
                        args=[s.value, self.group],
                    )
                    for s in claiming
                ),
                return_exceptions=True,
            )
        starts: dict[TopicPartition, int] = {}
        scanned: list[tuple[Stream, bytes]] = []
        fresh: list[Stream] = []
        for stream, answer in zip(claiming, answers, strict=True):
            if isinstance(answer, ResponseError):
                log.warning("bridge: cannot claim %s: %s", stream.name, answer)
                self._lost(stream, f"the stream is gone: {answer}")
                continue
            if isinstance(answer, BaseException):
                raise answer
            if answer == -1:
                self._lost(stream, "taken before its claim")
                continue
            acked, offsets = answer
            if not offsets:
                fresh.append(stream)
                stream.acked = acked
                continue
            scanned.append((stream, acked))
            by_topic = orjson.loads(offsets)
            for tp in self.known_end:
                listed = by_topic.get(tp.topic, [])
                start = listed[tp.partition] if tp.partition < len(listed) else 0
                starts[tp] = min(starts.get(tp, start), start)
        for stream in fresh:  # never bridged: nothing of it is in Kafka; say from where
            answer = await self.scripts.checkpoint(
                keys=[_redis.lease_key(stream.name), _redis.state_key(stream.name), stream.name],
                args=[stream.value, stream.acked, self._offsets(), ""],
            )
            if answer == -1:
                self._lost(stream, "taken before its first checkpoint")
            else:
                self._ready(stream, stream.acked, set())
        if not scanned:
            return
        began = time.monotonic()
        found = await _kafka.read_back(
            client_options(self.settings), starts, [s.key for s, _ in scanned]
        )
        self.kafka_health.ok()
        self.counters.read_backs += 1
        self.counters.read_back_records += found.records
        for tp, end in found.ends.items():
            if end > self.known_end.get(tp, 0):
                self.known_end[tp] = end
        for stream, acked in scanned:
            if stream.phase != CLAIM:
                continue
            after = entry_order(acked)
            skip = {i for i in found.found[stream.key] if entry_order(i) > after}
            self._ready(stream, acked, skip)
        log.info(
            "bridge: read back %d records in %.2f s for %s: %d entries already in Kafka",
            found.records,
            time.monotonic() - began,
            ",".join(s.name for s, _ in scanned),
            sum(len(s.skip) for s, _ in scanned),
        )

    def _ready(self, stream: Stream, acked: bytes, skip: set[bytes]) -> None:
        stream.acked = stream.cursor = acked
        stream.skip = skip
        stream.drop_queue()
        stream.phase = READY
        self._consumed.set()  # the reader reads it now, not after its idle wait

    async def _releases(self, sent: Round | None) -> None:
        leaving = [
            s
            for s in self.streams.values()
            if s.phase == RELEASE and not s.rounds and (sent is None or s not in sent.parts)
        ]
        if not leaving:
            return
        if self._checkpoints is not None:
            await self._checkpoints
        for stream in leaving:
            if stream.rounds:
                continue
            await self.scripts.release(keys=[_redis.lease_key(stream.name)], args=[stream.value])
            self.counters.released += 1
            log.info("bridge: released %s (acked up to %s)", stream.name, _redis.text(stream.acked))
            del self.streams[stream.name]

    async def _release_all(self) -> None:
        if self._scripts is None:
            return
        for stream in list(self.streams.values()):
            if stream.phase != LOST:
                await self.scripts.release(
                    keys=[_redis.lease_key(stream.name)], args=[stream.value]
                )
        self.streams.clear()
        await self.scripts.members(keys=[self.members_key], args=[self.owner, self.lease_ms, "0"])

    # -- reading ------------------------------------------------------------------------

    async def _fill(self) -> tuple[bool, int]:
        """Read the ready streams whose queue holds less than :data:`READ_AHEAD` rounds'
        shares: (whether any did, entries read)."""
        now = time.monotonic()
        ready = [s for s in self.streams.values() if s.phase == READY]
        if not ready:
            return False, 0
        count = max(READ_COUNT_MIN, ROUND_ENTRIES // len(ready))
        # A stream past its lease's deadline reads nothing until renewed: a read moves the
        # group's cursor, which another holder's reads may rely on by then.
        wanting = [s for s in ready if s.queued < READ_AHEAD * count and now < s.deadline]
        if not wanting:
            return False, 0
        generations = [s.generation for s in wanting]
        wire = self.wire
        per_stream = []
        for s in wanting:
            if wire.cluster:  # no MULTI on a cluster's pipeline: the read fenced in Lua
                per_stream.append(
                    [
                        pack(
                            "EVALSHA",
                            _redis.READ_SHA,
                            2,
                            _redis.lease_key(s.name),
                            s.name,
                            s.value,
                            self.group,
                            _redis.CONSUMER,
                            count,
                        )
                    ]
                )
            else:
                per_stream.append(
                    [
                        _redis.MULTI,
                        pack("XRANGE", s.name, b"(" + s.cursor, "+", "COUNT", 1),
                        pack(
                            "XREADGROUP",
                            "GROUP",
                            self.group,
                            _redis.CONSUMER,
                            "COUNT",
                            count,
                            "NOACK",
                            "STREAMS",
                            s.name,
                            ">",
                        ),
                        _redis.EXEC,
                    ]
                )
        # The streams over the read connections: Redis answers one while this process
        # parses another's answer.
        connections = wire.reads[: len(wanting)]
        shares = [list(range(c, len(wanting), len(connections))) for c in range(len(connections))]
        answers = await asyncio.gather(
            *(
                wire.execute(connection, [cmd for i in share for cmd in per_stream[i]])
                for connection, share in zip(connections, shares, strict=True)
            )
        )
        replies: list[Any] = [None] * len(wanting)
        for share, answer in zip(shares, answers, strict=True):
            size = len(answer) // len(share)
            for n, i in enumerate(share):
                replies[i] = answer[size * n + size - 1]
        self.redis_health.ok()
        read = 0
        for i, stream in enumerate(wanting):
            if stream.generation != generations[i] or stream.phase != READY:
                continue  # its queue was dropped meanwhile (lost, handed over, read back)
            if wire.cluster:
                answer = replies[i]
                if answer == -1:
                    self._lost(stream, "a read was refused")
                    continue
                expected = None
            else:
                following, answer = replies[i]
                if _redis.is_error(answer) or _redis.is_error(following):
                    log.warning("bridge: cannot read %s: %s", stream.name, answer)
                    self._lost(stream, f"cannot read it: {answer}")
                    continue
                # The first entry after what this bridge read, as the group delivered it:
                # another did not move the group's cursor since (a bridge that lost the
                # lease and did not know yet), or entries would be missed.
                expected = following[0][0] if following else None
            entries = answer[0][1] if answer else []
            if not wire.cluster and (entries[0][0] if entries else None) != expected:
                self._recover(stream, "the group's cursor moved under it")
                continue
            if not entries:
                continue
            read += len(entries)
            if stream.head > len(stream.queue) // 2:
                # Taken entries dropped once they are half the queue: each entry is moved
                # about once, where dropping them at every read moved a long queue each time.
                del stream.queue[: stream.head]
                stream.head = 0
            stream.queue += entries
            stream.cursor = entries[-1][0]
        return True, read

    async def _idle(self) -> None:
        """Wait for new entries in the ready streams (or for other work), briefly."""
        ready = [s for s in self.streams.values() if s.phase == READY]
        waiter = self._waiter
        if not ready or waiter is None or redis_is_cluster(self.settings.redis_url):
            await asyncio.sleep(0.05 if ready else 0.1)
            return
        streams = {s.name: s.cursor for s in ready}
        await waiter.xread(streams, count=1, block=IDLE_WAIT_MS)  # type: ignore[arg-type]

    def _build(self) -> Round | None:
        """The next round from the queues, or None when they are empty."""
        now = time.monotonic()
        # A stream whose lease is past its deadline waits for its renewal.
        ready = [
            s for s in self.streams.values() if s.phase == READY and s.queued and now < s.deadline
        ]
        if not ready:
            return None
        settings = self.settings
        producer = self.producer
        readings, dlq = settings.topic_readings, settings.topic_dlq
        count = producer.count(readings)
        round_ = Round.empty(count, producer.count(dlq))
        partitions = producer.partitions_of(readings)
        reader = self._entries
        names, tags = reader.names, reader.tags
        max_bytes, max_future_us = settings.max_message_bytes, settings.max_future_us
        budget = max(READ_COUNT_MIN, ROUND_ENTRIES // len(ready))
        encode = encoding.encode_entries
        buffers, stats = round_.readings, round_.readings_stats
        full = False
        random.shuffle(ready)
        for stream in ready:
            ids: list[bytes] = []
            queue, index = stream.queue, stream.head
            end = min(len(queue), index + budget)
            skip = stream.skip
            while index < end:
                if skip:  # after a read-back: one entry at a time, skipping those found
                    entry_id = queue[index][0]
                    if entry_id in skip:
                        skip.discard(entry_id)
                        ids.append(entry_id)
                        round_.skipped += 1
                        index += 1
                        continue
                    stop = index + 1
                else:
                    stop = end
                before = len(ids)
                index, status = encode(
                    queue,
                    index,
                    stop,
                    names,
                    tags,
                    max_bytes,
                    max_future_us,
                    partitions,
                    count,
                    buffers,
                    stats,
                    stream.key,
                    stream.token_bytes,
                    _kafka.BATCH_BYTES,
                    ids,
                )
                round_.produced += len(ids) - before
                if status == encoding.FULL:
                    full = True
                    break
                if status == encoding.SLOW:
                    if not self._slow(round_, stream, queue[index], ids):
                        full = True
                        break
                    index += 1
            stream.head = index
            if ids:
                round_.parts[stream] = Part(ids)
                stream.rounds += 1
            if full:
                break
        if not round_.parts:
            return None
        return round_

    def _slow(self, round_: Round, stream: Stream, entry: Any, ids: list[bytes]) -> bool:
        """An entry the encoder leaves to the definition (models.entries.entry_record): its
        record, or its dead letter, appended to the round; False when its partition is full
        (nothing appended)."""
        settings, producer = self.settings, self.producer
        entry_id, fields = entry
        headers = (stream.key, entry_id, stream.token_bytes)
        try:
            key, value, ts = self._entries.record(entry_id, fields)
            topic, buffers, stats = settings.topic_readings, round_.readings, round_.readings_stats
            good = True
        except RejectedEntry as exc:
            letter = EntryDeadLetter(
                exc.reason,
                exc.detail,
                stream.name,
                entry_id.decode(),
                exc.key,
                exc.value,
                settings.max_message_bytes,
            )
            key, value = stream.key, orjson.dumps(letter.document())
            ts = entry_time_ms(entry_id)
            topic, buffers, stats = settings.topic_dlq, round_.letters, round_.letters_stats
            good = False
        partition = producer.partition(topic, key)
        if not encoding.append_record(
            buffers, stats, partition, key, value, ts, headers, _kafka.BATCH_BYTES
        ):
            return False
        ids.append(entry_id)
        if good:
            round_.produced += 1
        else:
            round_.dead_lettered += 1
        return True

    # -- leases -------------------------------------------------------------------------

    async def _leases(self) -> None:
        interval = self.settings.bridge_lease / RENEWALS_PER_LEASE
        while not self._stopping:
            began = time.monotonic()
            try:
                await self._lease_round()
                self.redis_health.ok()
            except (RedisError, OSError) as exc:
                self.redis_health.waiting(repr(exc))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    async def _lease_round(self) -> None:
        scripts = self.scripts
        self.members = max(
            1,
            int(
                await scripts.members(
                    keys=[self.members_key], args=[self.owner, self.lease_ms, "1"]
                )
            ),
        )
        held = [s for s in self.streams.values() if s.phase != LOST]
        sent = time.monotonic()
        answers = await asyncio.gather(
            *(
                scripts.renew(
                    keys=[_redis.lease_key(s.name), s.name], args=[s.value, self.lease_ms]
                )
                for s in held
            )
        )
        for stream, answer in zip(held, answers, strict=True):
            if answer == -1:
                self._lost(stream, "its renewal was refused")
            else:
                stream.deadline = sent + self.settings.bridge_lease * DEADLINE_SHARE
                self._backlog(stream, int(answer))
        if self._stopping:
            return
        now = time.monotonic()
        if now >= self._next_discovery:
            self.known = await self._discover()
            self._next_discovery = now + max(self.settings.bridge_lease, 1.0)
        held = [s for s in self.streams.values() if s.phase in (CLAIM, READY)]
        share = math.ceil(len(self.known) / self.members)
        if len(held) > share:
            extra = sorted(held, key=lambda s: (s.phase == READY, s.name))[: len(held) - share]
            for stream in extra:
                log.info("bridge: handing %s over (%d bridges)", stream.name, self.members)
                stream.phase = RELEASE
                stream.drop_queue()
                stream.skip.clear()
        elif len(held) < share:
            candidates = [n for n in self.known if n not in self.streams]
            random.shuffle(candidates)
            for name in candidates:
                if len(held) >= share:
                    break
                sent = time.monotonic()
                answer = await scripts.acquire(
                    keys=[_redis.lease_key(name), _redis.state_key(name), name],
                    args=[self.owner, self.lease_ms],
                )
                if answer is None:
                    continue
                token = int(answer[0])
                stream = Stream(
                    name,
                    token,
                    f"{token} {self.owner}",
                    sent + self.settings.bridge_lease * DEADLINE_SHARE,
                )
                self._backlog(stream, int(answer[1]))
                self.streams[name] = stream
                held.append(stream)
                self.counters.acquired += 1
                self._filled.set()  # the main loop claims it now, not after its idle wait
                log.info("bridge: took %s (lease token %d)", name, stream.token)

    async def _discover(self) -> list[str]:
        names: set[str] = set()
        for pattern in self.settings.bridge_patterns:
            if any(c in pattern for c in "*?["):
                async for key in self.redis.scan_iter(match=pattern, count=1000, _type="stream"):
                    name = _redis.text(key)
                    if "{" not in name and "}" not in name:
                        names.add(name)
            elif await self.redis.type(pattern) in (b"stream", "stream"):
                names.add(pattern)
        return sorted(names)

    # -- what /health and /metrics show -------------------------------------------------

    def document(self) -> dict[str, Any]:
        c = self.counters
        return {
            "owner": self.owner,
            "bridges": self.members,
            "streams_found": len(self.known),
            "streams": {
                s.name: {
                    "phase": s.phase,
                    "token": s.token,
                    "acked": _redis.text(s.acked),
                    "backlog": s.backlog,
                }
                for s in sorted(self.streams.values(), key=lambda s: s.name)
            },
            "entries": {
                "produced": c.produced,
                "dead_lettered": c.dead_lettered,
                "skipped": c.skipped,
            },
            "sinks": {
                self.kafka_health.name: self.kafka_health.document(),
                self.redis_health.name: self.redis_health.document(),
            },
        }

    def owned(self) -> Iterable[Stream]:
        return [s for s in self.streams.values() if s.phase != LOST]
