"""bench.measure and bench.run: the servers' CPU read around a run, the bound it sets, and
a process's metrics text."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from bench.measure import (
    RunResult,
    Stopwatch,
    metrics_text,
    server_pids,
    server_pids_text,
    servers_cpu_seconds,
    stat_cpu_seconds,
)
from bench.run import core_bound, format_cpu_bounds


def test_server_pids_round_trip_and_reject_what_is_not_name_equals_pid() -> None:
    pids = {"broker": 101, "redis": 202, "influx": 303}
    assert server_pids({"BENCH_SERVER_PIDS": server_pids_text(pids)}) == pids
    assert server_pids({"BENCH_SERVER_PIDS": " broker=1 , ,redis=2"}) == {"broker": 1, "redis": 2}
    assert server_pids({}) == {}
    assert server_pids({"BENCH_SERVER_PIDS": ""}) == {}
    for bad in ("broker", "broker=", "=5", "broker=x1"):
        with pytest.raises(ValueError, match="is not name=pid"):
            server_pids({"BENCH_SERVER_PIDS": bad})


def test_stat_fields_count_after_the_last_parenthesis_of_the_command_name() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime ...: utime 250 and stime 75 ticks; the name holds ") (" and spaces.
    stat = "4242 (odd ) (name) S 1 4242 4242 0 -1 4194560 900 0 3 0 250 75 7 8 20 0 1 0"
    assert stat_cpu_seconds(stat, 100) == 3.25
    assert stat_cpu_seconds(stat, 1000) == 0.325


_BURNER = """
import sys, time
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.4:
    pass
print("burnt", flush=True)
sys.stdin.readline()
"""


def test_the_stopwatch_reads_a_servers_cpu_between_start_and_stop() -> None:
    burner = subprocess.Popen(
        [sys.executable, "-c", _BURNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert burner.stdin is not None and burner.stdout is not None
    try:
        stopwatch = Stopwatch(servers={"burner": burner.pid})
        assert stopwatch.servers_cpu_seconds == {}
        stopwatch.start()
        burner.stdin.write("go\n")
        burner.stdin.flush()
        assert burner.stdout.readline() == "burnt\n"
        stopwatch.stop()
        # 0.4 s of the burner's CPU between the two readings, give or take the clock's tick
        # (10 ms) at each end; its startup before start() is not counted.
        spent = stopwatch.servers_cpu_seconds
        assert list(spent) == ["burner"]
        assert 0.38 <= spent["burner"] <= 0.45
        # Its own CPU time, this process's, is not the burner's.
        assert stopwatch.cpu_seconds < 0.3
    finally:
        burner.kill()
        burner.wait()
    with pytest.raises(RuntimeError, match=r"server burner \(pid \d+\) is not running"):
        servers_cpu_seconds({"burner": burner.pid})


def _result(system: str, readings: int, seconds: float, cpu: float, **servers: float) -> RunResult:
    return RunResult(system, readings, seconds, cpu, servers_cpu_seconds=servers)


def test_the_core_bound_spreads_own_and_server_cpu_over_every_core() -> None:
    pulse = _result("pulse", 1_000_000, 16.0, 9.0, influx=10.0, broker=1.0)
    # (9 + 10 + 1) CPU-s on 2 cores: at least 10 s, so at most 100,000 readings/s.
    assert core_bound(pulse, 2) == 100_000.0
    assert core_bound(pulse, 4) == 200_000.0
    assert core_bound(_result("x", 10, 1.0, 0.0), 2) is None
    # Serialised and read back with the servers' CPU.
    assert RunResult.from_json(pulse.to_json()) == pulse


def test_the_bounds_report_names_each_servers_cpu_and_the_ratio_to_the_ceiling() -> None:
    results = {
        "ceiling": _result("ceiling", 1_000_000, 2.0, 1.5, broker=0.5),
        "quix": _result("quix", 1_000_000, 100.0, 99.0),  # no servers measured: no line
        "pulse": _result("pulse", 1_000_000, 16.0, 9.0, redis=1.0, influx=9.0),
    }
    assert format_cpu_bounds(results, 2) == [
        "CPU of each run and of the local servers meanwhile (bench/README.md):",
        "ceiling: own 1.50, broker 0.50 CPU-s over its interval; 2 cores allow at most "
        "1,000,000 readings/s for that work; the servers' share alone, at most 4,000,000/s",
        "pulse: own 9.00, influx 9.00, redis 1.00 CPU-s over its interval; 2 cores allow at "
        "most 105,263 readings/s for that work (0.21x the ceiling); the servers' share "
        "alone, at most 200,000/s (0.40x)",
    ]
    assert format_cpu_bounds({"quix": results["quix"]}, 2) == []
    # A system far below the ceiling still gets a ratio that says how far.
    slow = {"ceiling": results["ceiling"], "textbook": _result("textbook", 50_000, 30, 33, redis=1)}
    assert format_cpu_bounds(slow, 2)[2].endswith(
        "2 cores allow at most 2,941 readings/s for that work (0.0059x the ceiling); the "
        "servers' share alone, at most 100,000/s (0.20x)"
    )


def test_metrics_text_is_the_body_a_process_serves_at_metrics() -> None:
    body = "# TYPE pulse_x counter\npulse_x_total 3.0\n"
    paths: list[str] = []

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert metrics_text(f"http://127.0.0.1:{server.server_port}") == body
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/metrics"]
