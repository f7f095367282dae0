"""One command for the whole benchmark: ``python -m bench.run``.

Starts its own broker (Apache Kafka by default, tansu with ``--broker tansu``), Redis and
VictoriaMetrics on free ports (``pulse.local.stack``), produces the dataset once, runs each
system one after another in its own subprocess, prints the table and writes it to
``bench/results/latest.json``. See bench/README.md for what each system does.

The dataset is produced once into one topic and every system reads it with its own fresh
consumer group (and its own state and internal topics): the input is byte-for-byte the same
for all of them and producing 1,000,000 readings is paid once. Textbook Faust reads a second
topic holding a prefix of the same sequence, because it is too slow for the whole dataset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.dataset import DatasetSpec, produce
from bench.latency import LatencyResult, WarmUp, measure_latency
from bench.measure import (
    SERVER_PIDS_ENV,
    RunResult,
    run_measured_subprocess,
    server_pids_text,
)
from bench.pulse_run import pulse_env, run_pulse
from pulse.local.stack import BROKERS, start_broker, start_redis, start_victoria
from pulse.settings import Settings

SYSTEMS = ("ceiling", "quix", "textbook", "pulse")
EXTRAS = ("latency", "memory", "recovery")
"""Measured after the systems: Pulse's delay to Redis at a steady rate, its state's RSS, and
how fast its state is rebuilt from the changelog."""
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "latest.json"
TOPIC = "bench-readings"
TEXTBOOK_TOPIC = "bench-readings-textbook"
LATENCY_TOPIC = "bench-readings-live"
DEFAULT_TEXTBOOK_LIMIT = 50_000


@dataclass(frozen=True)
class BenchContext:
    """Everything a system's run needs: where the servers are and what the input is."""

    bootstrap: str
    broker_url: str
    redis_url: str
    influx_url: str
    topic: str
    readings: int
    partitions: int
    windows: str
    grace_seconds: float
    work_dir: Path
    run_id: str
    dataset: DatasetSpec | None = None
    """The dataset in ``topic`` (None for a subset topic)."""


def run_ceiling(context: BenchContext) -> RunResult:
    return run_measured_subprocess(
        "bench.ceiling",
        ["--bootstrap", context.bootstrap, "--topic", context.topic,
         "--expected", str(context.readings), "--partitions", str(context.partitions)],
        context.work_dir / "result.json",
        log_path=context.work_dir / "output.log",
    )  # fmt: skip


def run_quix(context: BenchContext) -> RunResult:
    return run_measured_subprocess(
        "bench.quix",
        ["--bootstrap", context.bootstrap, "--topic", context.topic,
         "--group", f"bench-quix-{context.run_id}", "--expected", str(context.readings),
         "--state-dir", str(context.work_dir / "state"),
         "--grace-ms", str(round(context.grace_seconds * 1000))],
        context.work_dir / "result.json",
        log_path=context.work_dir / "output.log",
    )  # fmt: skip


def run_textbook(context: BenchContext) -> RunResult:
    return run_measured_subprocess(
        "bench.textbook_faust",
        ["--bootstrap", context.bootstrap, "--topic", context.topic,
         "--app-id", f"bench-textbook-{context.run_id}",
         "--partitions", str(context.partitions), "--expected", str(context.readings),
         "--redis-url", context.redis_url, "--influx-url", context.influx_url,
         "--state-dir", str(context.work_dir / "state")],
        context.work_dir / "result.json",
        log_path=context.work_dir / "output.log",
    )  # fmt: skip


RUNNERS: dict[str, Callable[[BenchContext], RunResult]] = {
    "ceiling": run_ceiling,
    "quix": run_quix,
    "textbook": run_textbook,
    "pulse": run_pulse,
}


def machine_description() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def ratios(results: dict[str, RunResult]) -> dict[str, float | None]:
    """Pulse's readings/s over each other system's; None when either side is missing."""
    pulse = results.get("pulse")
    out: dict[str, float | None] = {}
    for other in ("quix", "textbook", "ceiling"):
        base = results.get(other)
        if pulse is None or base is None or base.readings_per_second == 0:
            out[f"pulse/{other}"] = None
        else:
            out[f"pulse/{other}"] = round(pulse.readings_per_second / base.readings_per_second, 3)
    return out


def core_bound(result: RunResult, cores: int) -> float | None:
    """The most readings/s that ``cores`` cores allow for the work a run measured.

    The work is the system's own CPU seconds plus the local servers' over the same interval
    (``RunResult.servers_cpu_seconds``): at best it is spread over every core with none idle,
    which takes ``(own + servers) / cores`` seconds. None when no CPU was measured."""
    total = result.cpu_seconds + sum(result.servers_cpu_seconds.values())
    if total <= 0 or cores <= 0:
        return None
    return result.readings / (total / cores)


def _ratio(value: float) -> str:
    """A ratio with two decimals, or two significant digits below 0.01 (never "0.00x")."""
    return f"{value:.2f}x" if value >= 0.01 else f"{value:.2g}x"


def format_cpu_bounds(results: dict[str, RunResult], cores: int) -> list[str]:
    """One line per system with server CPU measured: where its CPU went, core_bound, and
    core_bound of the servers' CPU alone (what no speed-up of the system itself can pass)."""
    ceiling = results.get("ceiling")
    lines = []
    for system, result in results.items():
        bound = core_bound(result, cores)
        if not result.servers_cpu_seconds or bound is None:
            continue
        parts = [f"own {result.cpu_seconds:.2f}"] + [
            f"{name} {spent:.2f}" for name, spent in sorted(result.servers_cpu_seconds.items())
        ]
        line = (
            f"{system}: {', '.join(parts)} CPU-s over its interval; {cores} cores allow at most "
            f"{bound:,.0f} readings/s for that work"
        )
        against = None
        if system != "ceiling" and ceiling is not None and ceiling.readings_per_second > 0:
            against = ceiling.readings_per_second
            line += f" ({_ratio(bound / against)} the ceiling)"
        servers_only = core_bound(replace(result, cpu_seconds=0.0), cores)
        if servers_only is not None:
            line += f"; the servers' share alone, at most {servers_only:,.0f}/s"
            if against is not None:
                line += f" ({_ratio(servers_only / against)})"
        lines.append(line)
    if lines:
        lines.insert(0, "CPU of each run and of the local servers meanwhile (bench/README.md):")
    return lines


def format_table(
    results: dict[str, RunResult], failures: dict[str, str], selected: tuple[str, ...]
) -> str:
    header = (
        "system",
        "readings",
        "seconds",
        "readings/s",
        "CPU s",
        "readings/CPU-s",
        "process CPU s",
        "peak RSS MiB",
        "windows out",
    )
    rows = []
    for system in selected:
        result = results.get(system)
        if result is None:
            reason = failures.get(system, "not run")
            rows.append((system, "-", "-", "-", "-", "-", "-", "-", "-", reason))
            continue
        per_cpu = result.readings / result.cpu_seconds if result.cpu_seconds > 0 else 0.0
        rows.append((
            system,
            f"{result.readings:,}",
            f"{result.seconds:.2f}",
            f"{result.readings_per_second:,.0f}",
            f"{result.cpu_seconds:.2f}",
            f"{per_cpu:,.0f}",
            "-" if result.process_cpu_seconds is None else f"{result.process_cpu_seconds:.2f}",
            "-" if result.peak_rss_bytes is None else f"{result.peak_rss_bytes / 2**20:,.0f}",
            "-" if result.windows_emitted is None else f"{result.windows_emitted:,}",
            result.note,
        ))  # fmt: skip
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = [
        "  ".join(name.ljust(widths[i]) for i, name in enumerate(header)),
        "  ".join("-" * width for width in widths),
    ]
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i else cell.ljust(widths[i])
            for i, cell in enumerate(row[: len(header)])
        ]
        lines.append("  ".join(cells) + ("  " + row[-1] if row[-1] else ""))
    lines.append("")
    for name, value in ratios(results).items():
        lines.append(f"{name}: {'n/a' if value is None else f'{value:.2f}x'}")
    bounds = format_cpu_bounds(results, os.cpu_count() or 1)
    if bounds:
        lines += ["", *bounds]
    return "\n".join(lines)


def run_latency(
    context: BenchContext, rate: float, seconds: float, workers: int, warm_up: bool
) -> LatencyResult:
    """Plain ``python -m pulse worker``s on a fresh topic while readings arrive at ``rate``."""
    app_id = f"bench-latency-{context.run_id}"
    env = pulse_env(context, app_id)
    # Production's idle close: the topic is live, so it never needs to close anything.
    env.pop("PULSE_IDLE_CLOSE")
    settings = Settings.from_env(env)  # what the workers will run with
    return measure_latency(
        env,
        context.bootstrap,
        context.topic,
        context.partitions,
        context.redis_url,
        app_id,
        context.work_dir,
        rate=rate,
        seconds=seconds,
        workers=workers,
        warmup=WarmUp(
            longest=max(spec.size_us for spec in settings.windows) / 1e6,
            settle=(settings.grace_us + settings.close_spread_us) / 1e6 + 5.0,
        )
        if warm_up
        else None,
    )


def run_memory(keys: int) -> list[dict[str, Any]]:
    """``bench.memory`` in a fresh process per filling (RSS does not shrink after a free)."""
    out = []
    for per_key in (1, 4):
        done = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--keys", str(keys),
             "--readings-per-key", str(per_key)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def run_recovery() -> dict[str, Any]:
    """``bench.recovery`` in a fresh process (the worker's GC settings, no other state)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.recovery"], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["identical"]:
        raise AssertionError(f"the rebuilt state differs from the live one: {result}")
    return result


def format_extras(
    latencies: list[LatencyResult],
    memory: list[dict[str, Any]],
    recovery: dict[str, Any] | None = None,
) -> str:
    lines = []
    for latency in latencies:
        workers = f"{latency.workers} worker{'s' if latency.workers > 1 else ''}"
        lines.append(
            f"latency ({workers}): {latency.achieved_rate:,.0f} readings/s for "
            f"{latency.seconds:.0f} s, production to Redis over {latency.seen}/{latency.probes} "
            f"probes: p50 {latency.p50_ms} ms, p90 {latency.p90_ms} ms, p99 {latency.p99_ms} ms, "
            f"max {latency.max_ms} ms"
        )
        worst = _milliseconds(latency.worst_by_second)
        # Event time is production time, so this says which seconds hold the windows' closes.
        first = int(latency.measured_from_epoch) % 60
        lines.append(
            f"latency ({workers}): worst delay (ms) of the probes of each second, from "
            f":{first:02d} past a minute: {worst}"
        )
        if latency.cpu_seconds:
            busy = sum(latency.cpu_seconds.values())
            cores = os.cpu_count() or 1
            spent = ", ".join(f"{name} {s:.1f}" for name, s in sorted(latency.cpu_seconds.items()))
            print(
                f"latency ({workers}): CPU seconds in the measured part: {spent}; in all "
                f"{busy:.1f} of the {cores * latency.seconds:.0f} of {cores} cores "
                f"({busy / cores / latency.seconds:.0%})"
            )
        if latency.warmup_seconds:
            worst = _milliseconds(latency.warmup_worst_by_second)
            lines.append(
                f"latency ({workers}): warm-up of {latency.warmup_seconds:.0f} s before that "
                f"(not in the figures above), {latency.warmup_probes} probes: p99 "
                f"{latency.warmup_p99_ms} ms, max {latency.warmup_max_ms} ms; worst delay (ms) "
                f"of each second: {worst}"
            )
    for row in memory:
        lines.append(
            f"memory: {row['mib_per_100k_keys']:.1f} MiB RSS per 100,000 open keys "
            f"({row['keys']:,} keys, {row['readings_per_key']} reading(s) per key, "
            f"{row['bytes_per_key']} bytes per key)"
        )
    if recovery is not None:
        lines.append(
            f"recovery: {recovery['mb_per_second']:.1f} MB/s of changelog deltas decoded and "
            f"applied ({recovery['delta_bytes'] / 1e6:.1f} MB for {recovery['readings']:,} "
            f"readings in {recovery['seconds']:.2f} s, state identical); a snapshot floor of "
            f"deltas replays in {recovery['seconds_per_snapshot_floor']:.2f} s"
        )
    return "\n".join(lines)


def _milliseconds(values: list[float | None]) -> str:
    return ", ".join("-" if ms is None else f"{ms:.0f}" for ms in values)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    selected = tuple(system for system in SYSTEMS if system in args.only)
    latencies: list[LatencyResult] = []
    memory: list[dict[str, Any]] = []
    recovery: dict[str, Any] | None = None
    spec = DatasetSpec(
        readings=args.readings,
        devices=args.devices,
        partitions=args.partitions,
        span_seconds=args.span_seconds,
    )
    textbook_readings = min(args.textbook_limit or args.readings, args.readings)
    run_id = time.strftime("%Y%m%d%H%M%S")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="pulse-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench: work directory {work_dir}", flush=True)

    servers = []
    results: dict[str, RunResult] = {}
    failures: dict[str, str] = {}
    try:
        broker = start_broker(work_dir / "stack", kind=args.broker)
        print(f"bench: {args.broker} ready in {broker.ready_seconds:.1f} s", flush=True)
        servers.append(broker)
        redis = start_redis(work_dir / "stack")
        servers.append(redis)
        victoria = start_victoria(work_dir / "stack")
        servers.append(victoria)
        # Every system's subprocess reads the servers' CPU around its measured interval.
        os.environ[SERVER_PIDS_ENV] = server_pids_text(
            {server.name: server.pid for server in servers if server.pid is not None}
        )
        bootstrap = f"127.0.0.1:{broker.port}"

        started = time.perf_counter()
        produced = asyncio.run(produce(bootstrap, TOPIC, spec)) if selected else 0
        if selected:
            print(
                f"bench: produced {produced:,} readings to {TOPIC} "
                f"in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        if "textbook" in selected and textbook_readings < produced:
            asyncio.run(produce(bootstrap, TEXTBOOK_TOPIC, spec, limit=textbook_readings))
            print(
                f"bench: produced the first {textbook_readings:,} of them to "
                f"{TEXTBOOK_TOPIC} for textbook Faust",
                flush=True,
            )

        for system in selected:
            system_dir = work_dir / system
            system_dir.mkdir(exist_ok=True)
            subset = system == "textbook" and textbook_readings < produced
            context = BenchContext(
                bootstrap=bootstrap,
                broker_url=broker.url,
                redis_url=redis.url,
                influx_url=victoria.url,
                topic=TEXTBOOK_TOPIC if subset else TOPIC,
                readings=textbook_readings if subset else produced,
                partitions=spec.partitions,
                windows="10s,1m",
                grace_seconds=5.0,
                work_dir=system_dir,
                run_id=run_id,
                dataset=None if subset else spec,
            )
            print(f"bench: running {system} on {context.readings:,} readings ...", flush=True)
            started = time.perf_counter()
            try:
                results[system] = RUNNERS[system](context)
            except NotImplementedError as exc:
                failures[system] = f"not run: {exc}"
            except Exception as exc:
                failures[system] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                traceback.print_exc()
            status = "done" if system in results else failures[system]
            print(
                f"bench: {system} {status} ({time.perf_counter() - started:.1f} s wall)", flush=True
            )

        if "latency" in args.only and args.latency_seconds > 0:
            for workers in args.latency_workers:
                latency_dir = work_dir / f"latency-{workers}"
                latency_dir.mkdir(exist_ok=True)
                context = BenchContext(
                    bootstrap=bootstrap,
                    broker_url=broker.url,
                    redis_url=redis.url,
                    influx_url=victoria.url,
                    topic=f"{LATENCY_TOPIC}-{workers}",
                    readings=0,
                    partitions=spec.partitions,
                    windows="10s,1m",
                    grace_seconds=5.0,
                    work_dir=latency_dir,
                    run_id=f"{run_id}-{workers}",
                )
                print(
                    f"bench: latency: {workers} pulse worker(s), {args.latency_rate:,.0f} "
                    f"readings/s for {args.latency_seconds:.0f} s ...",
                    flush=True,
                )
                try:
                    latencies.append(
                        run_latency(
                            context,
                            args.latency_rate,
                            args.latency_seconds,
                            workers,
                            not args.latency_cold,
                        )
                    )
                except Exception as exc:
                    failures["latency"] = f"failed: {type(exc).__name__}: {exc}"
                    traceback.print_exc()
    finally:
        os.environ.pop(SERVER_PIDS_ENV, None)
        for server in reversed(servers):
            server.stop()
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    if "memory" in args.only and args.memory_keys > 0:
        print(f"bench: memory: {args.memory_keys:,} open keys in PartitionState ...", flush=True)
        try:
            memory = run_memory(args.memory_keys)
        except Exception as exc:
            failures["memory"] = f"failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()

    if "recovery" in args.only:
        print("bench: recovery: one partition's changelog replayed ...", flush=True)
        try:
            recovery = run_recovery()
        except Exception as exc:
            failures["recovery"] = f"failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()

    print()
    if selected:
        print(f"broker: {args.broker}")
        print(format_table(results, failures, selected))
    extras = format_extras(latencies, memory, recovery)
    if extras:
        print(extras)
    for extra in EXTRAS:
        if extra in failures:
            print(f"{extra}: {failures[extra]}")
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_description(),
        "command": shlex.join(["python", "-m", "bench.run", *sys.argv[1:]]),
        "broker": args.broker,
        "dataset": {**asdict(spec), "textbook_readings": textbook_readings},
        "results": {system: result.to_json() for system, result in results.items()},
        "failures": failures,
        "ratios": ratios(results),
        "core_bounds": {
            system: None if bound is None else round(bound, 1)
            for system, result in results.items()
            for bound in [core_bound(result, os.cpu_count() or 1)]
        },
        "latency": [asdict(latency) for latency in latencies],
        "memory": memory,
        "recovery": recovery,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--readings", type=int, default=DatasetSpec.readings)
    parser.add_argument("--devices", type=int, default=DatasetSpec.devices)
    parser.add_argument("--partitions", type=int, default=DatasetSpec.partitions)
    parser.add_argument(
        "--span-seconds",
        type=float,
        default=DatasetSpec.span_seconds,
        help="event time the dataset covers",
    )
    parser.add_argument(
        "--only",
        default=",".join(SYSTEMS + EXTRAS),
        type=lambda text: {part.strip() for part in text.split(",")},
        help=f"comma-separated subset of {','.join(SYSTEMS + EXTRAS)}",
    )
    parser.add_argument(
        "--latency-rate", type=float, default=10_000.0, help="readings/s of the latency run"
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=60.0,
        help="measured length of the latency run, after its warm-up (0: skip)",
    )
    parser.add_argument(
        "--latency-cold",
        action="store_true",
        help="no warm-up: measure from the worker's first reading (bench.latency.WarmUp)",
    )
    parser.add_argument(
        "--latency-workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[2],
        help="worker processes of each latency run, in turn, e.g. 1,2 (default 2: one per core)",
    )
    parser.add_argument(
        "--memory-keys",
        type=int,
        default=200_000,
        help="open (device, metric, window) keys of the memory measurement (0: skip)",
    )
    parser.add_argument(
        "--textbook-limit",
        type=int,
        default=DEFAULT_TEXTBOOK_LIMIT,
        help="readings textbook Faust processes (0: all); it is ~1,000/s",
    )
    parser.add_argument(
        "--broker",
        choices=BROKERS,
        default="kafka",
        help="the broker every system reads from: Apache Kafka (default) or tansu",
    )
    parser.add_argument("--work-dir", help="state and logs (default: a new temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    unknown = args.only - set(SYSTEMS + EXTRAS)
    if unknown:
        parser.error(f"--only: unknown system(s) {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_benchmark(args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nbench: results written to {args.results}")


if __name__ == "__main__":
    main()
