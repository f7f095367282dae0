"""The ceiling: a bare aiokafka consumer that only fetches records in batches (``getmany``).

No decoding, no state, no output: the rate no Python consumer on this machine can beat. It
assigns every partition itself instead of joining a group, so no join wait is measured or paid.
"""

from __future__ import annotations

import argparse
import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.measure import RunResult, Stopwatch, write_result


async def consume_all(bootstrap: str, topic: str, expected: int, partitions: int) -> RunResult:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        # The partitions are given: a consumer without a subscription knows no topic's
        # metadata on Apache Kafka (tansu sends every topic's).
        assignment = [TopicPartition(topic, partition) for partition in range(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        stopwatch = Stopwatch()
        # The clock starts at the first fetch, not at the first batch returned: a small topic
        # arrives in a single getmany, whose time would otherwise not be counted at all.
        stopwatch.start()
        consumed = 0
        while consumed < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            consumed += sum(len(records) for records in batches.values())
        stopwatch.stop()
    finally:
        await consumer.stop()
    return RunResult(
        system="ceiling",
        readings=consumed,
        seconds=round(stopwatch.seconds, 4),
        cpu_seconds=round(stopwatch.cpu_seconds, 3),
        servers_cpu_seconds=stopwatch.servers_cpu_seconds,
        note="bare getmany, no decoding",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True, help="readings in the topic")
    parser.add_argument("--partitions", type=int, required=True, help="partitions of the topic")
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args()
    write_result(
        args.result_file,
        asyncio.run(consume_all(args.bootstrap, args.topic, args.expected, args.partitions)),
    )


if __name__ == "__main__":
    main()
