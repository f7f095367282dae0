"""The worker's CPU work per reading, without servers: ``python -m bench.hot_path``.

Runs the benchmark dataset (bench.dataset) through exactly the pure steps a flush cycle of
the worker runs, in the same order and with the same code, and times each step:

* ``process``: ``agents.ingest.process_records`` (parse and apply each fetched record);
* ``drain``: ``PartitionState.drain`` (closed windows, open views, changelog delta);
* ``kafka``, ``redis``, ``influx``: what each sink builds from a flush before any I/O
  (aggregates records, RESP commands packed by hiredis, line-protocol text);
* ``changelog``: ``ChangelogWriter.encode``-equivalent serialisation of the deltas;
* ``read back``: what the history and InfluxDB writers make of each aggregates record they
  read back from the topic (``history_entry``, ``record_line``).

With ``--tags`` every reading carries tags, as the contract allows: such a record is not the
common reading the batch path takes, so each is parsed by ``parse_reading`` and applied by
``PartitionState.apply``, and its windows' records are written by the sinks' Python code.

``--registry required`` registers every device of the dataset and requires it
(``PULSE_REGISTRY_REQUIRED``: one lookup per reading); ``--registry alerts`` adds a window
rule on every series and an absence rule of a minute on every metric (bench.registry_cost
prints what each costs against none, measured in the same run).

Records (aiokafka ``ConsumerRecord``, as the consumer hands them over) are fed per partition in
chunks of ``--fetch`` records (like ``getmany``), with a
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
from aiokafka.structs import ConsumerRecord

from agents.ingest import process_records
from bench.dataset import DatasetSpec, consumer_records
from models.alerts import AbsenceRule, AlertRule, Device, Registry
from pulse.app import tune_gc
from pulse.changelog import encode_parts
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.history import history_entry
from pulse.sinks.influx import line_protocol_lines, record_line
from pulse.sinks.kafka import aggregate_records
from pulse.sinks.redis import RedisKeys, RedisSink
from tables.partition_state import PartitionState
from tables.windows import WindowSpec, parse_windows

DEFAULTS = Settings.from_env({})
"""The worker's default settings (grace, largest accepted reading)."""


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
        for _, value in records:
            history_entry(history_keys, value)
            record_line(value)
        t6 = clock()
        times["drain"] += t1 - t0
        times["kafka"] += t2 - t1
        times["redis"] += t3 - t2
        times["influx"] += t4 - t3
        times["changelog"] += t5 - t4
        times["read back"] += t6 - t5
        counts["closed"] += len(batch.closed)
        counts["views"] += len(batch.open_views)
        counts["redis commands"] += len(packed)

    def run() -> None:
        position = dict.fromkeys(by_partition, 0)
        chunks = 0
        while True:
            progressed = False
            for partition, records in by_partition.items():
                begin = position[partition]
                chunk = records[begin : begin + args.fetch]
                if not chunk:
                    continue
                progressed = True
                position[partition] = begin + len(chunk)
                state = states[partition]
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
        steps = ("process", "drain", "kafka", "redis", "influx", "changelog", "read back")
        print(json.dumps({"readings": n, "total": total, **{name: times[name] for name in steps}}))
        return
    print(
        f"{n:,} readings, {counts['closed']:,} closed windows, {counts['views']:,} views, "
        f"{len(rejected):,} rejected"
    )
    for name in ("process", "drain", "kafka", "redis", "influx", "changelog", "read back"):
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
