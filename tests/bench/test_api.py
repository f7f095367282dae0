"""The pure parts of bench/api.py: the open-loop schedule, the history it produces and asks
for, and the figures of a phase; and how ``--read-path-first`` sets a process's policy."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections import Counter

from bench.api import (
    HISTORY_WINDOWS,
    due_times,
    history_starts,
    phase_result,
    request_buckets,
    run_first,
    server_view,
)
from bench.latency import WarmUp


def test_requests_are_due_at_a_steady_rate_from_the_start() -> None:
    due = due_times(100.0, 200.0, 2.5)
    assert len(due) == 500
    assert due[0] == 100.0
    assert due[1] == 100.005
    assert due[-1] == 100.0 + 499 / 200


def test_the_history_is_the_windows_before_the_current_one() -> None:
    starts = history_starts(1_796_300_007.5, HISTORY_WINDOWS)
    assert len(starts) == 360
    assert starts[-1] == 1_796_299_990  # the window before [..000, ..010)
    assert starts[0] == 1_796_299_990 - 359 * 10
    assert [b - a for a, b in itertools.pairwise(starts)] == [10] * 359


def test_a_phase_reports_percentiles_of_the_answered_requests_only() -> None:
    latencies = [float(n) for n in range(1, 101)]  # 1 .. 100 ms
    statuses = Counter({"200": 100, "404": 3, "ServerTimeoutError": 1})
    result = phase_result("/api/x", 200.0, 0.52, latencies, statuses, [0.0] * 98 + [4.0, 9.0])
    assert result.requests == 104
    assert result.statuses == {"200": 100, "404": 3, "ServerTimeoutError": 1}
    assert (result.p50_ms, result.p99_ms, result.max_ms) == (50.0, 99.0, 100.0)
    assert result.late_start_ms == 4.0


def test_a_fixed_warm_up_ignores_the_windows() -> None:
    assert WarmUp(longest=10.0, settle=0.0, fixed=30.0).seconds_from(1_796_300_007.5) == 30.0


def histogram_text(counts: dict[tuple[str, str], float]) -> str:
    """``pulse_api_request_seconds``'s bucket lines for the device route, as /metrics writes
    them: ``{(le, status): cumulative count}``."""
    labels = 'method="GET",route="/api/devices/{device}"'
    lines = ["# TYPE pulse_api_request_seconds histogram"]
    for (le, status), count in counts.items():
        lines.append(
            f'pulse_api_request_seconds_bucket{{le="{le}",{labels},status="{status}"}} {count}'
        )
    return "\n".join(lines) + "\n"


METRICS_BEFORE = histogram_text(
    {
        ("0.001", "200"): 10.0,
        ("0.005", "200"): 20.0,
        ("0.02", "200"): 20.0,
        ("+Inf", "200"): 20.0,
        ("0.001", "404"): 7.0,
        ("+Inf", "404"): 7.0,
    }
)
METRICS_AFTER = histogram_text(
    {
        ("0.001", "200"): 110.0,
        ("0.005", "200"): 218.0,
        ("0.02", "200"): 219.0,
        ("+Inf", "200"): 220.0,
        ("0.001", "404"): 9.0,
        ("+Inf", "404"): 9.0,
    }
)


def test_the_servers_own_figures_are_the_histograms_growth_over_the_phase() -> None:
    route = "/api/devices/{device}"
    before = request_buckets(METRICS_BEFORE, route)
    after = request_buckets(METRICS_AFTER, route)
    assert after == {0.001: 110.0, 0.005: 218.0, 0.02: 219.0, math.inf: 220.0}
    phase = phase_result(route, 200.0, 1.0, [1.0] * 200, Counter({"200": 200}), [0.0] * 200)
    result = server_view(before, after, phase)
    # 200 answers in the phase: 100 within 1 ms, 198 within 5 ms, 199 within 20 ms.
    assert result.server_within_ms == {"1": 0.5, "5": 0.99, "20": 0.995}
    assert result.server_p99_at_most_ms == 5.0
    assert server_view(before, before, phase) == phase  # no answers: nothing to say


def test_read_path_first_runs_every_thread_real_time_but_not_what_it_forks_later() -> None:
    # A process with a second thread, which then forks a child and prints both policies.
    script = (
        "import os, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    print('child', os.sched_getscheduler(0), flush=True); os._exit(0)\n"
        "os.waitpid(child, 0)\n"
        "print('parent', os.sched_getscheduler(0), flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        assert process.stdout.readline() == "ready\n"
        tasks = sorted(int(task) for task in os.listdir(f"/proc/{process.pid}/task"))
        assert len(tasks) == 2
        run_first(process.pid, 7)
        for task in tasks:
            assert os.sched_getscheduler(task) == os.SCHED_RR | os.SCHED_RESET_ON_FORK
            assert os.sched_getparam(task).sched_priority == 7
        out, _ = process.communicate("go\n", timeout=30)
    finally:
        process.kill()
    policy = os.SCHED_RR | os.SCHED_RESET_ON_FORK
    assert out.splitlines() == [f"child {os.SCHED_OTHER}", f"parent {policy}"]
