"""The output dead-letter topic (``PULSE_TOPIC_OUTPUT_DLQ``): outputs their target refused.

A sink whose target refuses an output for its content (InfluxDB's 400/422 for a line, a
record Kafka refuses as too large) stores it here with the target's answer and writes the
rest of its batch: one bad output must not hold back every device. The write is durable
before the sink's write returns, so a refused output is never lost between the two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from models.outputs import RefusedOutput
from pulse.sinks._base import SinkHealth
from pulse.sinks._retry import Backoff

log = logging.getLogger(__name__)

CONTENT_ERRORS: tuple[str, ...] = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "CorruptRecordException",
    "InvalidTimestampError",
)
"""Kafka's refusals of a record batch's content (by class name, as aiokafka names them):
split the batch, dead-letter the single records it still refuses."""
CLIENT_ERRORS: tuple[str, ...] = (
    "TopicAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
)
"""Kafka's refusals of the client (an ACL): an operator's problem, retried until fixed."""


def kafka_refusal(error: BaseException) -> str | None:
    """``content``, ``client`` or None (backpressure: retry) for a Kafka error."""
    name = type(error).__name__
    if name in CONTENT_ERRORS:
        return "content"
    if name in CLIENT_ERRORS:
        return "client"
    return None


class OutputDeadLetters:
    """Stores refused outputs in the output dead-letter topic, keyed by their own key."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, max_output_bytes: int) -> None:
        self.producer = producer
        self.topic = topic
        self.max_output_bytes = max_output_bytes

    def refused(
        self, sink: str, target: str, answer: str, key: bytes | None, output: bytes
    ) -> RefusedOutput:
        """A refused output for :meth:`store`."""
        return RefusedOutput(sink, target, "refused", answer, key, output, self.max_output_bytes)

    async def store(self, letters: Sequence[RefusedOutput], health: SinkHealth) -> None:
        """Store ``letters`` durably (retrying while Kafka is away, reported to ``health``,
        the state of the sink whose outputs they are), then count them in ``health``.

        A dead letter the topic itself refuses for its content cannot go anywhere else: it is
        logged whole at error level, the one place left, and the others are stored.
        """
        waiting = [(letter, orjson.dumps(letter.document())) for letter in letters]
        backoff = Backoff()
        while waiting:
            sent = []
            failed: list[tuple[RefusedOutput, bytes]] = []
            error: BaseException | None = None
            for letter, value in waiting:
                try:
                    future = await self.producer.send(self.topic, value, letter.key)
                    sent.append((letter, value, future))
                except KafkaError as exc:
                    if not self._refused(exc, value):
                        failed.append((letter, value))
                        error = exc
            for letter, value, future in sent:
                try:
                    await future
                except KafkaError as exc:
                    if not self._refused(exc, value):
                        failed.append((letter, value))
                        error = exc
            waiting = failed
            if waiting:
                reason = f"output dead-letter topic {self.topic}: {error!r}"
                if error is not None and kafka_refusal(error) == "client":
                    health.refused(reason)
                else:
                    health.waiting(reason)
                await asyncio.sleep(backoff.next_wait())
        if letters:
            health.dead_letters += len(letters)
            first = letters[0]
            log.warning(
                "%s sink: %d output(s) refused by %s, stored in %s; the first (key %r): %s",
                first.sink,
                len(letters),
                first.target,
                self.topic,
                first.key,
                first.answer[:300],
            )

    def _refused(self, error: KafkaError, value: bytes) -> bool:
        """Whether the topic refused this dead letter's content (then logged whole)."""
        if kafka_refusal(error) != "content":
            return False
        log.error(
            "output dead-letter topic %s refused a dead letter (%r); it was: %s",
            self.topic,
            error,
            value.decode(errors="replace"),
        )
        return True
