"""The worker's CPU work per reading, without servers: ``python -m bench.hot_path``.

Runs the benchmark dataset (bench.dataset) through exactly the pure steps a flush cycle of
the worker runs, in the same order and with the same code, and times each step:

* ``fetch``: the records of each fetch made from the record batches a broker sends, as the
  worker's consumer makes them (pulse/kafka_records.py);
* ``process``: ``agents.ingest.process_records`` (parse and apply each fetched record);
* ``drain``: ``PartitionState.drain`` (closed windows, open views, changelog delta);
* ``kafka``, ``redis``, ``influx``: what each sink builds from a flush before any I/O
  (aggregates records, RESP commands packed by hiredis, line-protocol text);
* ``changelog``: ``ChangelogWriter.encode``-equivalent serialisation of the deltas;
* ``read back``: what the history and InfluxDB writers make of the aggregates records they
  read back from the topic: each writer's records made from their record batches, then
  ``history_entry`` and the history script's calls (``HistorySink.calls``), and
  ``record_line``.

With ``--tags`` every reading carries tags, as the contract allows: such a record is not the
common reading the batch path takes, so each is parsed by ``parse_reading`` and applied by
``PartitionState.apply``, and its windows' records are written by the sinks' Python code.

``--registry required`` registers every device of the dataset and requires it
(``PULSE_REGISTRY_REQUIRED``: one lookup per reading); ``--registry alerts`` adds a window
rule on every series and an absence rule of a minute on every metric (bench.registry_cost
prints what each costs against none, measured in the same run).

Records are fed per partition in chunks of ``--fetch`` records (like ``getmany``; each chunk
encoded beforehand as uncompressed record batches of at most 16 KiB, the producer's default),
with a
drain after every ``--flush-every`` chunks. Nothing is sent: this isolates the Python cost
that limits the worker, for profiling and for comparing changes. It is not the benchmark of
the issue (bench.run is); it is the tool to find where the time goes.

Times are the process's CPU time (``time.process_time``), which other work on a shared
machine disturbs less than the wall clock. ``--json`` prints them as one JSON object
(bench.native runs it in a subprocess per configuration of ``PULSE_NO_EXTENSIONS``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import orjson
from aiokafka.consumer.fetcher import READ_UNCOMMITTED
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from agents.ingest import process_records
from bench.dataset import DatasetSpec, consumer_records
from models.alerts import AbsenceRule, AlertRule, Device, Registry
from pulse.app import tune_gc
from pulse.changelog import encode_parts
from pulse.kafka_records import BatchPartitionRecords, KafkaRecord
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.history import HistorySink, history_entry
from pulse.sinks.influx import line_protocol_lines, record_line
from pulse.sinks.kafka import aggregate_records
from pulse.sinks.redis import RedisKeys, RedisSink
from tables.partition_state import PartitionState
from tables.windows import WindowSpec, parse_windows

DEFAULTS = Settings.from_env({})
"""The worker's default settings (grace, largest accepted reading)."""

BATCH_BYTES = 16_384
"""The largest record batch: aiokafka's producer's default ``max_batch_size``."""


def record_batches(records: list[tuple[int, bytes | None, bytes | None, int]]) -> bytes:
    """``records`` (offset, key, value, timestamp in ms; consecutive offsets) as a broker
    sends them to a fetch: uncompressed record batches of at most :data:`BATCH_BYTES`."""
    out = bytearray()
    builder, base = None, 0
    for offset, key, value, timestamp in records:
        if builder is not None and builder.append(
            offset - base, timestamp=timestamp, key=key, value=value, headers=[]
        ):
            continue
        if builder is not None:  # full: the record starts the next batch
            out += _finished(builder, base)
        builder, base = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, BATCH_BYTES), offset
        builder.append(0, timestamp=timestamp, key=key, value=value, headers=[])
    if builder is not None:
        out += _finished(builder, base)
    return bytes(out)


def _finished(builder: DefaultRecordBatchBuilder, base: int) -> bytes:
    batch = builder.build()
    batch[0:8] = base.to_bytes(8, "big")  # the base offset, which the broker assigns
    return bytes(batch)


def fetched(data: bytes, topic: str, partition: int, first_offset: int) -> list[KafkaRecord]:
    """The records a consumer makes of one partition's fetched ``data``."""
    tp = TopicPartition(topic, partition)
    records = MemoryRecords(data)
    return list(
        BatchPartitionRecords(tp, records, [], first_offset, None, None, True, READ_UNCOMMITTED)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--span-seconds", type=float, default=DatasetSpec.span_seconds)
    parser.add_argument("--windows", default="10s,1m")
    parser.add_argument("--fetch", type=int, default=2_500, help="records per partition chunk")
    parser.add_argument("--flush-every", type=int, default=1, help="chunks between drains")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed part")
    parser.add_argument("--json", action="store_true", help="print the CPU seconds as JSON")
    parser.add_argument("--tags", action="store_true", help="every reading with a tag (site)")
    parser.add_argument("--registry", choices=("none", "required", "alerts"), default="none")
    args = parser.parse_args()

    spec = DatasetSpec(
        readings=args.readings,
        devices=args.devices,
        partitions=args.partitions,
        span_seconds=args.span_seconds,
    )
    by_partition = consumer_records(spec, "readings")
    if args.tags:
        for records in by_partition.values():
            for record in records:
                doc = orjson.loads(record.value)
                record.value = orjson.dumps({**doc, "tags": {"site": f"plant-{record.offset % 3}"}})
    specs = parse_windows(args.windows)
    states = {p: PartitionState(specs, DEFAULTS.grace_us) for p in by_partition}
    if args.registry != "none":
        registry = bench_registry(by_partition, specs, alerts=args.registry == "alerts")
        for state in states.values():
            state.use_registry(registry, required=True)
    tune_gc()  # as the worker's process does
    redis = RedisSink("redis://127.0.0.1:1", "bench", 3600)
    history_keys = RedisKeys("bench")
    history = HistorySink("redis://127.0.0.1:1", "bench", DEFAULTS.history_length, 3600)
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    clock = time.process_time
    rejected: list[tuple[object, str, str]] = []

    def reject(record: object, reason: str, detail: str) -> None:
        rejected.append((record, reason, detail))

    def flush() -> None:
        t0 = clock()
        drained = [state.drain() for state in states.values()]
        t1 = clock()
        batch = FlushBatch.of(drained, [])
        records = aggregate_records(batch.closed)
        t2 = clock()
        packed = redis._commands(batch)
        t3 = clock()
        "\n".join(line_protocol_lines(batch.closed))
        t4 = clock()
        for d in drained:
            encode_parts(d.delta, "bench", 0)
        t5 = clock()
        data = record_batches([(i, key, value, 0) for i, (key, value) in enumerate(records)])
        t6 = clock()
        entries = [  # the history writer: its entries, and its script calls of them
            history_entry(history_keys, record.value)
            for record in fetched(data, "aggregates", 0, 0)
        ]
        history.calls(entries)
        for record in fetched(data, "aggregates", 0, 0):  # the InfluxDB writer
            record_line(record.value)
        t7 = clock()
        times["drain"] += t1 - t0
        times["kafka"] += t2 - t1
        times["redis"] += t3 - t2
        times["influx"] += t4 - t3
        times["changelog"] += t5 - t4
        times["read back"] += t7 - t6
        counts["closed"] += len(batch.closed)
        counts["views"] += len(batch.open_views)
        counts["redis commands"] += len(packed)

    # Each partition's fetches, as the broker sends them: (first offset, record batches).
    fetches = {
        partition: [
            (begin, record_batches([(r.offset, r.key, r.value, r.timestamp) for r in chunk]))
            for begin in range(0, len(records), args.fetch)
            for chunk in [records[begin : begin + args.fetch]]
        ]
        for partition, records in by_partition.items()
    }
    steps = ("fetch", "process", "drain", "kafka", "redis", "influx", "changelog", "read back")

    def run() -> None:
        position = dict.fromkeys(fetches, 0)
        chunks = 0
        while True:
            progressed = False
            for partition, partition_fetches in fetches.items():
                if position[partition] == len(partition_fetches):
                    continue
                begin, data = partition_fetches[position[partition]]
                progressed = True
                position[partition] += 1
                state = states[partition]
                t0 = clock()
                chunk = fetched(data, "readings", partition, begin)
                times["fetch"] += clock() - t0
                t0 = clock()
                process_records(
                    state,
                    chunk,
                    DEFAULTS.max_message_bytes,
                    DEFAULTS.max_future_us,
                    reject,
                )
                times["process"] += clock() - t0
                chunks += 1
                if chunks % args.flush_every == 0:
                    flush()
            if not progressed:
                break
        for state in states.values():
            state.advance_idle(2**62)
        flush()

    started = clock()
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        run()
    total = clock() - started
    n = args.readings
    if args.json:
        print(json.dumps({"readings": n, "total": total, **{name: times[name] for name in steps}}))
        return
    print(
        f"{n:,} readings, {counts['closed']:,} closed windows, {counts['views']:,} views, "
        f"{len(rejected):,} rejected"
    )
    for name in steps:
        print(f"  {name:<10} {times[name]:6.2f} s  {times[name] / n * 1e6:6.2f} us/reading")
    print(
        f"  {'total':<10} {total:6.2f} s  {total / n * 1e6:6.2f} us/reading  ({n / total:,.0f}/s)"
    )


def bench_registry(
    by_partition: dict[int, list[ConsumerRecord]], specs: tuple[WindowSpec, ...], alerts: bool
) -> Registry:
    """Every device of the records registered; with ``alerts``, per metric a rule on each
    tumbling or hopping window (mean above 1e9: counted, never firing) and an absence rule
    of a minute."""
    devices = sorted({r.key.decode() for records in by_partition.values() for r in records})
    metrics = sorted(
        {
            orjson.loads(r.value)["metric"]
            for records in by_partition.values()
            for r in records[:1000]
        }
    )
    rules = [
        AlertRule(
            f"high-{metric}-{spec.label.replace('/', '-')}", metric, spec.label, "mean", ">", 1e9
        )
        for metric in metrics
        for spec in specs
        if spec.kind != "sliding"
    ]
    absence = [AbsenceRule(f"quiet-{metric}", metric, 60_000_000) for metric in metrics]
    return Registry(
        1,
        devices=tuple(Device(d) for d in devices),
        rules=tuple(rules) if alerts else (),
        absence_rules=tuple(absence) if alerts else (),
    )


if __name__ == "__main__":
    main()
