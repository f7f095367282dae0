"""What hostile input costs the clean readings: ``python -m bench.hostile``.

Runs the benchmark dataset (bench.dataset) through the worker's processing path without
servers, as bench.hot_path does (each partition's records in fetches through
``process_records``, a drain after each, and the flush's outputs built by the sinks' code:
the aggregates records, the Redis writes, the line protocol, the changelog parts, and the
dead letters' documents), twice per round: the clean records alone, and the same records
with the hostile corpus (tests/integration/hostile_corpus.json: huge values, deep nesting,
invalid UTF-8, names of 10,000 characters, clocks ten years ahead, ...) interleaved, one
hostile record per ``--every`` clean ones in each partition, cycling through the corpus.
The two runs of a round go in a random order, each on fresh partition states.

Prints, as the median over the rounds of each run's process CPU time, the clean readings
per CPU-second of each and their ratio (the goal: the hostile records cost the clean
readings at most 20 %, a ratio of at least 0.80). CPU time, not the wall clock, so that
other work on a shared machine disturbs it less; still, run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from agents.ingest import process_records
from bench.dataset import DatasetSpec, consumer_records
from models.outputs import DeadLetter
from pulse.app import tune_gc
from pulse.changelog import encode_parts
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.influx import line_protocol_lines
from pulse.sinks.kafka import aggregate_records
from pulse.sinks.redis import RedisSink
from tables.partition_state import PartitionState

DEFAULTS = Settings.from_env({})
"""The worker's default settings (windows, grace, limits)."""
CORPUS = Path(__file__).parent.parent / "tests" / "integration" / "hostile_corpus.json"

Records = dict[int, list[ConsumerRecord[bytes, bytes]]]


def hostile_records() -> list[tuple[bytes | None, bytes | None, int | None]]:
    """(key, value, timestamp_ms or None) of each record of the corpus."""
    out = []
    for row in orjson.loads(CORPUS.read_bytes())["records"]:
        key = base64.b64decode(row["key_base64"]) if "key_base64" in row else row["key"]
        value = base64.b64decode(row["value_base64"]) if "value_base64" in row else row["value"]
        out.append(
            (
                key.encode() if isinstance(key, str) else key,
                value.encode() if isinstance(value, str) else value,
                row.get("timestamp_ms"),
            )
        )
    return out


def interleaved(clean: Records, every: int) -> tuple[Records, int]:
    """The clean records with a hostile one after every ``every`` in each partition (its
    timestamp that of the record before it, unless the corpus gives one), offsets renumbered;
    and how many hostile records that is."""
    corpus = hostile_records()
    out: Records = {}
    added = 0
    for partition, records in clean.items():
        mixed: list[ConsumerRecord[bytes, bytes]] = []
        for record in records:
            mixed.append(_at(record, len(mixed)))
            if len(mixed) % (every + 1) == every:
                key, value, stamp = corpus[added % len(corpus)]
                size = len(value) if value is not None else -1
                when = record.timestamp if stamp is None else stamp
                mixed.append(
                    ConsumerRecord(
                        record.topic, partition, len(mixed), when, 0, key, value, None, 0, size, ()
                    )
                )
                added += 1
        out[partition] = mixed
    return out, added


def _at(record: ConsumerRecord[bytes, bytes], offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        record.topic,
        record.partition,
        offset,
        record.timestamp,
        record.timestamp_type,
        record.key,
        record.value,
        None,
        0,
        record.serialized_value_size,
        (),
    )


def run(by_partition: Records, fetch: int) -> tuple[float, int]:
    """Process CPU seconds of the processing path over the records; the dead letters made."""
    states = {
        p: PartitionState(
            DEFAULTS.windows, DEFAULTS.grace_us, max_tag_values=DEFAULTS.max_tag_values
        )
        for p in by_partition
    }
    redis = RedisSink("redis://127.0.0.1:1", "bench", DEFAULTS.state_ttl)
    letters: list[DeadLetter] = []
    max_bytes, max_future_us = DEFAULTS.max_message_bytes, DEFAULTS.max_future_us

    def flush() -> None:
        drained = [state.drain(spread_us=DEFAULTS.close_spread_us) for state in states.values()]
        batch = FlushBatch.of(drained, list(letters))
        letters.clear()
        aggregate_records(batch.closed)
        redis._commands(batch)
        "\n".join(line_protocol_lines(batch.closed))
        for part in drained:
            encode_parts(part.delta, "bench", 0)
        for letter in batch.dead_letters:  # as the Kafka sink writes them
            orjson.dumps(letter.document())

    rejected = 0
    started = time.process_time()
    position = dict.fromkeys(by_partition, 0)
    while any(position[p] < len(records) for p, records in by_partition.items()):
        for partition, records in by_partition.items():
            begin = position[partition]
            chunk = records[begin : begin + fetch]
            position[partition] = begin + len(chunk)

            def reject(record: Any, reason: str, detail: str, partition: int = partition) -> None:
                letters.append(
                    DeadLetter(
                        reason,
                        detail,
                        "readings",
                        partition,
                        record.offset,
                        record.key,
                        record.value,
                        max_bytes,
                    )
                )

            before = len(letters)
            process_records(states[partition], chunk, max_bytes, max_future_us, reject)
            rejected += len(letters) - before
        flush()
    for state in states.values():
        state.advance_idle(2**62)
    flush()
    return time.process_time() - started, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--span-seconds", type=float, default=60.0)
    parser.add_argument("--fetch", type=int, default=2_500, help="records per partition chunk")
    parser.add_argument("--every", type=int, default=100, help="clean records per hostile one")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    spec = DatasetSpec(
        readings=args.readings,
        devices=args.devices,
        partitions=args.partitions,
        span_seconds=args.span_seconds,
    )
    clean = consumer_records(spec, "readings")
    mixed, hostile = interleaved(clean, args.every)
    tune_gc()  # as the worker's process does
    runs: dict[str, list[float]] = {"clean": [], "with hostile": []}
    dead: dict[str, int] = {}
    rng = random.Random(1)
    for round_number in range(args.rounds + 1):  # the first round warms up, not counted
        order = [("clean", clean), ("with hostile", mixed)]
        rng.shuffle(order)
        for name, records in order:
            cpu, dead[name] = run(records, args.fetch)
            if round_number:
                runs[name].append(cpu)
    print(
        f"{args.readings:,} clean readings, {hostile:,} hostile records interleaved (one per "
        f"{args.every}, {len(hostile_records())} in the corpus), windows "
        f"{','.join(s.label for s in DEFAULTS.windows)}; median of {args.rounds} rounds"
    )
    print(f"  {'':<13} {'CPU s':>7} {'clean readings/s':>17} {'dead letters':>13}")
    rates = {}
    for name, cpus in runs.items():
        median = statistics.median(cpus)
        rates[name] = args.readings / median
        print(f"  {name:<13} {median:7.2f} {rates[name]:17,.0f} {dead[name]:13,}")
    ratio = rates["with hostile"] / rates["clean"]
    print(f"  ratio {ratio:.2f} (goal: at least 0.80)")


if __name__ == "__main__":
    main()
