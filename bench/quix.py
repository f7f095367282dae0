"""Quix Streams: the same windows and aggregates as Pulse, final results to a topic.

Per (device, metric) and per window (10 s and 1 m tumbling, event time from the payload's
``ts``, 5 s grace): count, sum, min, max, mean, first, last, emitted with ``.final()`` when the
partition's event time passes the window's end plus grace (``closing_strategy="partition"``,
the closest to Pulse's per-partition watermark). State is Quix's default: RocksDB with
changelog topics. No external sinks.

Quix groups windows by the message key, which is the device. Grouping by (device, metric)
with ``group_by`` would add a repartition topic (a produce and a second consume of every
reading), so each metric gets its own filtered branch instead: state per (device, metric)
without the repartition, Quix's cheapest correct layout.

Measured in-process: the clock starts at the first reading consumed and stops when Quix's
final checkpoint after the last reading has completed (window results and changelog records
flushed to the broker, RocksDB committed, offsets committed). Window results are counted
in-process as they are handed to the output topic.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows.aggregations import Count, First, Last, Max, Mean, Min, Sum

from bench.dataset import METRICS
from bench.measure import RunResult, Stopwatch, write_result

WINDOWS_MS = {"10s": 10_000, "1m": 60_000}


def event_time_ms(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    return int(value["ts"] * 1000)


def run(
    bootstrap: str, topic: str, group: str, expected: int, state_dir: Path, grace_ms: int
) -> RunResult:
    stopwatch = Stopwatch()
    processed = 0
    windows_emitted = 0
    finishing = False

    def on_message_processed(_topic: str, _partition: int, _offset: int) -> None:
        nonlocal processed, finishing
        processed += 1
        if processed == expected:
            finishing = True
            app.stop()

    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        # The local broker holds every JoinGroup for half the session timeout (librdkafka's
        # default 45 s would add a 22 s wait before the first record).
        consumer_extra_config={"session.timeout.ms": 2000, "heartbeat.interval.ms": 500},
        on_message_processed=on_message_processed,
        loglevel="WARNING",
    )

    # Stop the clock when the checkpoint that follows the last reading completes: that is when
    # the last window result has actually been produced (flushed), not just queued.
    # Any: typed by quixstreams when the bench extra is installed, unknown to mypy otherwise.
    context: Any = app._processing_context
    commit_checkpoint = context.commit_checkpoint

    def commit_checkpoint_and_stop_clock(*args: Any, **kwargs: Any) -> None:
        commit_checkpoint(*args, **kwargs)
        if finishing and stopwatch.running:
            stopwatch.stop()

    context.commit_checkpoint = commit_checkpoint_and_stop_clock

    readings = app.topic(topic, value_deserializer="json", timestamp_extractor=event_time_ms)
    results = app.topic(f"{group}-window-results", value_serializer="json")

    def first_record(_value: Any) -> None:
        stopwatch.start()

    def count_window(_value: Any) -> None:
        nonlocal windows_emitted
        windows_emitted += 1

    sdf = app.dataframe(readings)
    sdf = sdf.update(first_record)
    for metric in METRICS:
        by_metric = sdf[sdf["metric"] == metric]
        for label, duration_ms in WINDOWS_MS.items():
            closed = (
                by_metric.tumbling_window(duration_ms, grace_ms=grace_ms, name=f"{metric}-{label}")
                .agg(
                    count=Count(),
                    sum=Sum("value"),
                    min=Min("value"),
                    max=Max("value"),
                    mean=Mean("value"),
                    first=First("value"),
                    last=Last("value"),
                )
                .final(closing_strategy="partition")
            )
            closed = closed.apply(
                lambda window, metric=metric, label=label: {
                    **window,
                    "metric": metric,
                    "window": label,
                }
            )
            closed = closed.update(count_window)
            closed.to_topic(results)

    app.run()
    return RunResult(
        system="quix",
        readings=processed,
        seconds=round(stopwatch.seconds, 4),
        cpu_seconds=round(stopwatch.cpu_seconds, 3),
        servers_cpu_seconds=stopwatch.servers_cpu_seconds,
        windows_emitted=windows_emitted,
        note="RocksDB + changelogs, final() to a topic, no sinks",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", default=f"bench-quix-{int(time.time())}")
    parser.add_argument("--expected", type=int, required=True, help="readings in the topic")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--grace-ms", type=int, default=5000)
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(
        args.bootstrap, args.topic, args.group, args.expected, Path(args.state_dir), args.grace_ms
    )
    write_result(args.result_file, result)


if __name__ == "__main__":
    main()
