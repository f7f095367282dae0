"""What readings cost the servers: Redis commands, InfluxDB points, changelog bytes.

``python -m bench.footprint --readings 100000`` on a running local stack (``eval "$(pulse
stack up)"``: it reads the ``PULSE_*`` variables): produces synthetic readings (``pulse
produce``, event times in the past so that idle close ends every window), runs ``pulse
worker`` until every record is applied and every window closed and written to InfluxDB, and
prints, as JSON, per reading and per closed window:

* Redis: the commands it ran (``INFO commandstats`` calls, after ``CONFIG RESETSTAT``; a
  fenced write is one ``EVALSHA`` call for up to 50 keys), and the keys written;
* InfluxDB: the points the InfluxDB writer wrote (one per closed window, by construction;
  ``pulse_influx_written_total``) and the pipeline-health points (``pulse_stats*``);
* the changelog: the bytes of its records (keys and values) per reading.

Its own app id, topics and Redis prefix: other runs on the same stack do not count. Redis's
counts are the server's, so run it on a stack nothing else writes to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.measure import metrics_text
from pulse.local.stack import free_port


def scrape(port: int) -> dict[str, float]:
    text = metrics_text(f"http://127.0.0.1:{port}")
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def topic_bytes(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, bytes of keys and values) of ``topic``, read to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records = size = 0
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records += len(batch)
                size += sum(len(r.key or b"") + len(r.value or b"") for r in batch)
        return records, size
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--windows", default="10s,1m")
    parser.add_argument("--step", type=float, default=0.01, help="event-time s per reading")
    args = parser.parse_args(argv)
    run = f"fp{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PULSE_APP_ID": run,
        "PULSE_TOPIC_READINGS": f"{run}-readings",
        "PULSE_TOPIC_AGGREGATES": f"{run}-aggregates",
        "PULSE_TOPIC_DLQ": f"{run}-dlq",
        "PULSE_TOPIC_OUTPUT_DLQ": f"{run}-output-dlq",
        "PULSE_REDIS_PREFIX": run,
        "PULSE_WINDOWS": args.windows,
        "PULSE_IDLE_CLOSE": "2",
        "PULSE_WEB_PORT": str(free_port()),
    }
    pulse = [sys.executable, "-m", "pulse"]
    start_ts = time.time() - args.readings * args.step - 3600  # all in the past
    subprocess.run(
        [
            *pulse,
            "produce",
            *("--devices", str(args.devices), "--count", str(args.readings), "--rate", "0"),
            *("--start-ts", str(start_ts), "--step", str(args.step)),
        ],
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(env["PULSE_REDIS_URL"])
    client.config_resetstat()
    port = int(env["PULSE_WEB_PORT"])
    with tempfile.TemporaryDirectory() as work:
        log = open(Path(work) / "worker.log", "wb")  # noqa: SIM115 - the child's
        worker = subprocess.Popen([*pulse, "worker", "-l", "warn"], env=env, stdout=log, stderr=log)
        try:
            previous: dict[str, float] = {}
            while True:
                time.sleep(3)
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited: {Path(log.name).read_text()[-2000:]}")
                try:
                    totals = scrape(port)
                except OSError:
                    continue
                settled = (
                    totals.get("pulse_readings_consumed_total") == args.readings
                    and totals.get("pulse_open_windows", 1) == 0
                    and totals.get("pulse_influx_lag", 0) == 0
                    and totals.get("pulse_influx_written_total", 0)
                    == totals.get("pulse_windows_closed_total")
                    and totals.get("pulse_flushes_total") == previous.get("pulse_flushes_total")
                )
                if settled:
                    break
                previous = totals
        finally:
            worker.terminate()
            worker.wait(60)
    stats = client.info("commandstats")
    commands = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    bootstrap = env["PULSE_BROKER"].split("://", 1)[-1]
    changelog_records, changelog_bytes = asyncio.run(
        topic_bytes(bootstrap, f"{run}-readings-state")
    )
    windows = totals["pulse_windows_closed_total"]
    readings = args.readings
    print(
        json.dumps(
            {
                "readings": readings,
                "devices": args.devices,
                "windows": args.windows,
                "windows_closed": windows,
                "flushes": totals["pulse_flushes_total"],
                "redis_commands": commands,
                "redis_commands_per_reading": sum(commands.values()) / readings,
                "influx_points_per_window": totals["pulse_influx_written_total"] / windows,
                "changelog_records": changelog_records,
                "changelog_bytes_per_reading": changelog_bytes / readings,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
