"""The indexer's speed on window documents: ``python -m bench.indexer``.

Issue 24's goal: at least 20,000 window documents per second per indexer core. This
closes the benchmark dataset's windows with Pulse's own pure steps (bench/influx_standin.py:
the readings through ``process_records``, every window closed), writes their ``aggregates``
records as the worker does (``closed_window_json``) into a topic of a fresh broker, starts
a fresh OpenSearch (one node, as ``pulse stack up --search`` runs it) unless ``--search-url``
names one, and runs ``pulse indexer`` (a process of its own, ``PULSE_SEARCH_WINDOWS`` naming
every window) until its ``/metrics`` say it has written and committed every record. Then the
index must hold every window once.

Measured from the indexer's first committed fetch to its last (its group join and start-up
left out): documents per second (wall clock), the indexer's CPU seconds (user+sys from
``/proc``) and so documents per indexer CPU-second, the CPU of OpenSearch and of the broker
over the same time, and, in this process without servers, the CPU per document of reading a
record into its document (``window_document``) and of writing its lines of a bulk body.
Other work on the machine skews the wall clock (and OpenSearch, which shares the two cores,
sets it); the CPU per document is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.dataset import DatasetSpec
from bench.influx_standin import closed_windows
from bench.measure import metrics_text, servers_cpu_seconds
from pulse.local.stack import free_port, start_broker, start_search
from pulse.settings import Settings
from pulse.sinks.kafka import aggregate_records
from pulse.sinks.search import SearchSink

WINDOWS = "10s,1m"
PARTITIONS = 8
GOAL = 20_000
"""Documents per second per indexer core (issue 24)."""


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks=1
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def pure_costs(values: list[bytes], settings: Settings) -> dict[str, float]:
    """CPU microseconds per document, in this process, with the sink's own code: the record
    read into its document, and its two lines of a bulk body (the action and the source)."""
    sink = SearchSink(settings, "windows")
    began = time.process_time()
    documents = [sink.read_record(value) for value in values]
    read = time.process_time() - began
    began = time.process_time()
    lines = []
    for document in documents:
        assert document is not None
        lines.append(b"%s\n%s\n" % (sink.action(document), document.source))
    body = b"".join(lines)
    written = time.process_time() - began
    return {
        "read_us_per_document": read / len(values) * 1e6,
        "bulk_lines_us_per_document": written / len(values) * 1e6,
        "bulk_bytes_per_document": len(body) / len(values),
    }


def _metric(port: int, name: str, labels: str) -> float:
    text = metrics_text(f"http://127.0.0.1:{port}")
    match = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _pid_cpu(pid: int) -> float:
    return servers_cpu_seconds({"indexer": pid})["indexer"]


def _count(url: str, alias: str) -> int:
    request = urllib.request.Request(f"{url}/{alias}/_refresh", method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass
    with urllib.request.urlopen(f"{url}/{alias}/_count", timeout=60) as response:
        return int(json.loads(response.read())["count"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = DatasetSpec(readings=args.readings, devices=args.devices, partitions=PARTITIONS)
    print(f"closing the windows of {spec.readings:,} readings ({WINDOWS}) ...", flush=True)
    records = aggregate_records(closed_windows(spec, WINDOWS))
    values = [value for _, value in records]
    prefix = "bench"
    settings = Settings.from_env(
        {"PULSE_SEARCH_PREFIX": prefix, "PULSE_WINDOWS": WINDOWS, "PULSE_SEARCH_WINDOWS": WINDOWS}
    )
    result: dict[str, Any] = {
        "readings": spec.readings,
        "devices": spec.devices,
        "documents": len(records),
        "windows": WINDOWS,
        "bulk_docs": args.bulk_docs,
        "bulk_bytes": args.bulk_bytes,
        "broker": args.broker,
        **pure_costs(values, settings),
    }
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="pulse-bench-indexer-"))
    servers = []
    indexer: subprocess.Popen[bytes] | None = None
    try:
        broker = start_broker(work, kind="tansu" if args.broker == "tansu" else "kafka")
        servers.append(broker)
        if args.search_url:
            search_url, search_pid = args.search_url, None
        else:
            search = start_search(work)
            servers.append(search)
            search_url, search_pid = search.url, search.pid
        bootstrap = broker.url.removeprefix("kafka://")
        topic = f"{prefix}-aggregates"
        print(f"producing {len(records):,} aggregates records ...", flush=True)
        asyncio.run(_produce(bootstrap, topic, records))
        port = free_port()
        env = {
            **os.environ,
            "PULSE_BROKER": broker.url,
            "PULSE_SEARCH_URL": search_url,
            "PULSE_SEARCH_PREFIX": prefix,
            "PULSE_SEARCH_WINDOWS": WINDOWS,
            "PULSE_WINDOWS": WINDOWS,
            "PULSE_SEARCH_REPLICAS": "0",
            "PULSE_SEARCH_RETENTION_DAYS": "0",
            "PULSE_SEARCH_BULK_DOCS": str(args.bulk_docs),
            "PULSE_SEARCH_BULK_BYTES": str(args.bulk_bytes),
            "PULSE_TOPIC_AGGREGATES": topic,
            "PULSE_TOPIC_ALERTS": f"{prefix}-alerts",
            "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{prefix}-output-dlq",
            "PULSE_TOPIC_READINGS": f"{prefix}-readings",
            "PULSE_APP_ID": f"{prefix}{int(time.time())}",
            "PULSE_PARTITIONS": str(PARTITIONS),
            "PULSE_INDEXER_PORT": str(port),
        }
        log = (work / "indexer.log").open("wb")
        indexer = subprocess.Popen(
            [sys.executable, "-m", "pulse", "indexer", "-l", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        pids: dict[str, int] = {"broker": broker.pid or 0}
        if search_pid is not None:
            pids["opensearch"] = search_pid
        labels_text = 'kind="windows"'
        deadline = time.monotonic() + args.timeout
        first: tuple[float, float, dict[str, float], float] | None = None
        while True:
            if indexer.poll() is not None:
                raise RuntimeError(f"pulse indexer exited: see {work / 'indexer.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("pulse indexer did not finish in time")
            try:
                written = _metric(port, "pulse_indexer_records_total", labels_text)
            except OSError:
                written = 0.0
            now = time.monotonic()
            if written > 0 and first is None:
                first = (now, _pid_cpu(indexer.pid), servers_cpu_seconds(pids), written)
            if written >= len(records):
                last = (now, _pid_cpu(indexer.pid), servers_cpu_seconds(pids), written)
                break
            time.sleep(0.05)
        assert first is not None
        documents = last[3] - first[3]  # those written after the first fetch was committed
        seconds = last[0] - first[0]
        cpu = last[1] - first[1]
        servers_cpu = {name: last[2][name] - first[2][name] for name in pids}
        indexed = _count(search_url, f"{prefix}-windows")
        result.update(
            {
                "measured_documents": documents,
                "seconds": round(seconds, 3),
                "documents_per_second": round(documents / seconds),
                "indexer_cpu_seconds": round(cpu, 3),
                "documents_per_indexer_cpu_second": round(documents / cpu),
                "indexer_us_per_document": round(cpu / documents * 1e6, 2),
                "servers_cpu_seconds": {k: round(v, 2) for k, v in servers_cpu.items()},
                "indexed": indexed,
                "goal_met": documents / cpu >= GOAL,
            }
        )
        if indexed != len(records):
            raise RuntimeError(f"the index holds {indexed} documents, not {len(records)}")
    finally:
        if indexer is not None and indexer.poll() is None:
            indexer.terminate()
            indexer.wait(30)
        for server in reversed(servers):
            server.stop()
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--search-url", default=None, help="an OpenSearch to use instead")
    parser.add_argument("--bulk-docs", type=int, default=5_000)
    parser.add_argument("--bulk-bytes", type=int, default=5_000_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--results", default="bench/results/indexer.json")
    args = parser.parse_args()
    result = run(args)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
