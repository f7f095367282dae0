"""The HTTP API under load: ``pulse api`` answering at a steady request rate while a worker
processes readings at a steady rate.

``python -m bench.api [--seconds 30]`` starts the local stack (``pulse.local.stack``: the
broker, ``redis-server``, VictoriaMetrics), one ``python -m pulse worker`` and one ``python -m
pulse api``, each in its own process, and:

1. produces a history first: for each of :data:`HISTORY_DEVICES` devices, one reading of
   ``temperature`` per 10 s window over the :data:`HISTORY_WINDOWS` + 10 windows before now,
   so that Redis holds the last ``PULSE_HISTORY_LENGTH`` (360) closed 10 s windows of each;
2. produces readings at ``--rate`` (10,000/s) with bench.latency's producer and probes, in a
   process of its own, through a warm-up and both phases below; the probes' delays measured
   meanwhile are the readings' freshness;
3. after the warm-up, drives ``GET /api/devices/{device}`` at ``--requests`` per second for
   ``--seconds``, then ``GET /api/history/{device}/temperature?window=10s&since=...`` (the 360
   windows of a history device, from Redis) the same. Open loop: request ``i`` of a phase is
   due at ``start + i / rate`` whether or not earlier ones were answered, and its latency is
   measured from that due time to the end of its body, so a server that falls behind shows
   its queue in the figures (no coordinated omission).

With ``--read-path-first``, ``redis-server`` and ``pulse api`` run under the real-time policy
``SCHED_RR`` (priority :data:`READ_PATH_PRIORITY`) and this driver just below them
(:data:`DRIVER_PRIORITY`, its children not): whenever one of them is woken it runs at once,
before the worker, the broker and VictoriaMetrics, as on a host whose read path has CPUs or
a priority of its own (docs/operations.md). Needs CAP_SYS_NICE (root).

Prints JSON: per phase the requests, the statuses and error messages, p50, p99 and max in
ms, and the same answers as ``pulse api`` timed them itself (its request histogram on
``/metrics``, scraped before and after the phase: what of the latency is the API's own and
what the machine's queues); and the freshness (bench.latency.LatencyResult) over both
phases. The servers' data and the logs stay in the work directory the result names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.dataset import create_topic, device_id, partition_for
from bench.latency import LatencyResult, WarmUp, percentile, started_load, wait_ready
from bench.measure import metrics_text
from pulse.gc_tuning import SERVICE_THRESHOLDS, freeze_startup
from pulse.local.stack import (
    BROKERS,
    ServerProcess,
    free_port,
    start_broker,
    start_redis,
    start_victoria,
)

HISTORY_DEVICES = 8
HISTORY_WINDOWS = 360
"""Closed 10 s windows per history request (``PULSE_HISTORY_LENGTH``'s default: all from
Redis)."""
WINDOW_SECONDS = 10
DEVICES = 10_000
"""Devices of the steady stream (bench.latency's producer); the device requests cycle
through every tenth of them."""
PARTITIONS = 8
READ_PATH_PRIORITY = 20
"""The ``SCHED_RR`` priority of ``redis-server`` and ``pulse api`` with ``--read-path-first``."""
DRIVER_PRIORITY = 10
"""This driver's, below them: its sends never delay their answers."""


@dataclass
class PhaseResult:
    """The answers of one phase of requests."""

    path: str
    rate: float
    seconds: float
    requests: int
    statuses: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    late_start_ms: float | None = None
    """p99 of how late requests were sent after their due time (the driver's own delay)."""
    errors: dict[str, int] = field(default_factory=dict)
    """The ``error`` messages of the answers other than 200, by message."""
    server_p99_at_most_ms: float | None = None
    """The API's own p99 as ``pulse api`` measured it (from the handler's start to its
    return, without the driver's and the kernel's time): the smallest bucket bound of its
    ``pulse_api_request_seconds`` histogram below which 99 % of the phase's answers fell."""
    server_within_ms: dict[str, float] = field(default_factory=dict)
    """The share of the phase's answers whose handler took at most each bucket bound (ms)."""


@dataclass
class ApiBenchResult:
    phases: list[PhaseResult] = field(default_factory=list)
    freshness: LatencyResult | None = None
    note: str = ""


def due_times(start: float, rate: float, seconds: float) -> list[float]:
    """When each request of a phase is due: ``rate`` per second from ``start``, open loop."""
    return [start + i / rate for i in range(math.floor(rate * seconds))]


def history_starts(now: float, windows: int) -> list[int]:
    """The starts (epoch seconds) of the ``windows`` 10 s windows that ended before the one
    ``now`` is in, oldest first: the history the bench produces for its history devices."""
    current = math.floor(now / WINDOW_SECONDS) * WINDOW_SECONDS
    return [current - (windows - i) * WINDOW_SECONDS for i in range(windows)]


def history_devices() -> list[str]:
    return [f"history-{number:02d}" for number in range(HISTORY_DEVICES)]


def phase_result(
    path: str,
    rate: float,
    seconds: float,
    latencies_ms: list[float],
    statuses: Counter[str],
    late_ms: list[float],
    errors: Counter[str] | None = None,
) -> PhaseResult:
    """Percentiles over every request answered 200 (the others are counted by status)."""
    ordered = sorted(latencies_ms)
    lateness = sorted(late_ms)
    return PhaseResult(
        path=path,
        rate=rate,
        seconds=seconds,
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        p50_ms=_round(percentile(ordered, 0.50)),
        p99_ms=_round(percentile(ordered, 0.99)),
        max_ms=_round(ordered[-1] if ordered else None),
        late_start_ms=_round(percentile(lateness, 0.99)),
        errors=dict((errors or Counter()).most_common(5)),
    )


async def drive(
    base_url: str, path_of: Callable[[int], str], rate: float, seconds: float, label: str
) -> PhaseResult:
    """Send ``GET base_url + path_of(i)`` at ``rate`` per second for ``seconds`` (open loop;
    see the module doc) and measure each from its due time."""
    latencies: list[float] = []
    late: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        # Connections opened before the clock starts: their set-up is not the server's time.
        await asyncio.gather(*(_get(session, f"{base_url}/health/live") for _ in range(16)))

        async def one(number: int, due: float) -> None:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            late.append((time.perf_counter() - due) * 1000)
            try:
                async with session.get(base_url + path_of(number)) as response:
                    body = await response.read()
                    status = str(response.status)
                if status != "200":
                    errors[_error_of(body)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            statuses[status] += 1
            if status == "200":
                latencies.append((time.perf_counter() - due) * 1000)

        start = time.perf_counter() + 0.1
        tasks = [
            asyncio.ensure_future(one(number, due))
            for number, due in enumerate(due_times(start, rate, seconds))
        ]
        await asyncio.gather(*tasks)
    return phase_result(label, rate, seconds, latencies, statuses, late, errors)


def request_buckets(metrics_text: str, route: str) -> dict[float, float]:
    """The cumulative bucket counts of ``pulse_api_request_seconds`` for the 200 answers of
    ``route`` in a ``/metrics`` text: ``{upper bound in seconds: count}``."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "pulse_api_request_seconds_bucket"
                and labels.get("route") == route
                and labels.get("status") == "200"
            ):
                buckets[float(labels["le"])] = sample.value
    return buckets


def server_view(
    before: dict[float, float], after: dict[float, float], result: PhaseResult
) -> PhaseResult:
    """``result`` with the server's own figures of the phase: the difference of the
    histogram's buckets scraped before and after it (see :class:`PhaseResult`)."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(math.inf, 0.0)
    if not total:
        return result
    within = {
        f"{bound * 1000:g}": round(count / total, 4)
        for bound, count in counts.items()
        if bound != math.inf
    }
    p99 = next((bound for bound, count in counts.items() if count >= 0.99 * total), math.inf)
    return replace(
        result,
        server_p99_at_most_ms=None if p99 == math.inf else p99 * 1000,
        server_within_ms=within,
    )


def _error_of(body: bytes) -> str:
    """The API's error message in ``body`` (its first 100 characters otherwise)."""
    try:
        return str(orjson.loads(body)["error"])[:100]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:100].decode(errors="replace")


async def _get(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as response:
        await response.read()


async def produce_history(bootstrap: str, topic: str, now: float) -> list[int]:
    """One ``temperature`` reading per 10 s window for each history device over the windows
    before now (the 360 wanted and 10 more); returns the starts of the 360 wanted."""
    starts = history_starts(now, HISTORY_WINDOWS + 10)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        sends = []
        for start in starts:
            for number, device in enumerate(history_devices()):
                key = device.encode()
                value = orjson.dumps(
                    {
                        "device": device,
                        "metric": "temperature",
                        "value": 20.0 + number + (start % 600) / 100,
                        "ts": start + 5,
                    }
                )
                partition = partition_for(key, PARTITIONS)
                sends.append(await producer.send(topic, value, key=key, partition=partition))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return starts[-HISTORY_WINDOWS:]


def wait_api(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pulse api exited with {process.returncode}; log {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"pulse api not ready after {timeout:.0f} s; log {log_path}")


def _start(command: str, env: dict[str, str], work_dir: Path) -> tuple[subprocess.Popen, Path]:
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"{command}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pulse", command, "-l", "warn"],
            cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log_path


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_first(pid: int, priority: int) -> None:
    """Every thread of process ``pid`` under ``SCHED_RR`` at ``priority``; the processes it
    forks from now on get the normal policy back (``SCHED_RESET_ON_FORK``)."""
    policy = os.SCHED_RR | os.SCHED_RESET_ON_FORK
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setscheduler(int(task), policy, os.sched_param(priority))


def run(args: argparse.Namespace) -> ApiBenchResult:
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="pulse-bench-api-"))
    servers: list[ServerProcess] = []
    processes: list[subprocess.Popen] = []
    app_id = f"bench-api-{time.strftime('%Y%m%d%H%M%S')}"
    try:
        servers.append(start_broker(work_dir / "stack", kind=args.broker))
        servers.append(start_redis(work_dir / "stack"))
        servers.append(start_victoria(work_dir / "stack"))
        broker, redis, victoria = servers
        bootstrap = f"127.0.0.1:{broker.port}"
        topic = f"{app_id}-readings"
        web_port, api_port = free_port(), free_port()
        env = {
            **os.environ,
            "PULSE_BROKER": broker.url,
            "PULSE_REDIS_URL": redis.url,
            "PULSE_INFLUX_URL": victoria.url,
            "PULSE_APP_ID": app_id,
            "PULSE_WINDOWS": "10s,1m",
            "PULSE_GRACE": "5",
            "PULSE_TOPIC_READINGS": topic,
            "PULSE_TOPIC_AGGREGATES": f"{app_id}-aggregates",
            "PULSE_TOPIC_DLQ": f"{app_id}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{app_id}-output-dlq",
            "PULSE_REDIS_PREFIX": app_id,
            "PULSE_PARTITIONS": str(PARTITIONS),
            "PULSE_WEB_PORT": str(web_port),
            "PULSE_API_PORT": str(api_port),
        }
        asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
        since = asyncio.run(produce_history(bootstrap, topic, time.time()))[0]
        worker, worker_log = _start("worker", env, work_dir / "worker")
        processes.append(worker)
        wait_ready([(web_port, worker, worker_log)], PARTITIONS)
        api, api_log = _start("api", env, work_dir / "api")
        processes.append(api)
        wait_api(api_port, api, api_log)

        producer, results = started_load(
            bootstrap=bootstrap,
            topic=topic,
            partitions=PARTITIONS,
            redis_url=redis.url,
            prefix=app_id,
            rate=args.rate,
            seconds=2 * args.seconds + 1.0,  # both phases, and a second for the start
            devices=DEVICES,
            warmup=WarmUp(longest=WINDOW_SECONDS, settle=0.0, fixed=args.warmup),
        )
        note = f"{args.broker}, 1 worker, 1 pulse api, {work_dir}"
        if args.read_path_first:  # after the load's process is forked: it keeps the normal policy
            assert redis.pid is not None
            run_first(redis.pid, READ_PATH_PRIORITY)
            run_first(api.pid, READ_PATH_PRIORITY)
            run_first(os.getpid(), DRIVER_PRIORITY)
            note += ", read path first (SCHED_RR)"
        time.sleep(args.warmup + 0.5)
        base = f"http://127.0.0.1:{api_port}"
        devices = [device_id(n) for n in range(0, DEVICES, 10)]
        history = history_devices()
        result = ApiBenchResult(note=note)
        # This driver's start-up frozen for its garbage collector, as `pulse api`'s is: a full
        # collection of it held up reading the answers by about 70 ms, counted against the API.
        freeze_startup(SERVICE_THRESHOLDS)
        phases: list[tuple[str, Callable[[int], str], str]] = [
            (
                "/api/devices/{device}",
                lambda i: f"/api/devices/{devices[i % len(devices)]}",
                "/api/devices/{device}",
            ),
            (
                "/api/history/{device}/{metric}",
                lambda i: (
                    f"/api/history/{history[i % len(history)]}/temperature?window=10s&since={since}"
                ),
                f"/api/history/{{device}}/temperature?window=10s ({HISTORY_WINDOWS} windows)",
            ),
        ]
        for route, path_of, label in phases:
            before = request_buckets(metrics_text(base), route)
            phase = asyncio.run(drive(base, path_of, args.requests, args.seconds, label))
            after = request_buckets(metrics_text(base), route)
            result.phases.append(server_view(before, after, phase))
        result.freshness = results.get(timeout=120)
        producer.join(30)
        return result
    finally:
        _stop(processes)
        for server in servers:
            server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of each phase")
    parser.add_argument("--warmup", type=float, default=30.0, help="readings before requests")
    parser.add_argument("--rate", type=float, default=10_000.0, help="readings per second")
    parser.add_argument("--requests", type=float, default=200.0, help="requests per second")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="kafka")
    parser.add_argument("--work-dir", help="where the servers and logs go (default: a temp dir)")
    parser.add_argument(
        "--read-path-first",
        action="store_true",
        help="redis-server, pulse api and this driver under SCHED_RR (root)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = run(parse_args(argv))
    print(json.dumps(asdict(result), indent=2))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    main()
