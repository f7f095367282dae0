"""What each C speedup saves: ``python -m bench.native``.

Runs ``bench.hot_path`` (the worker's pure steps on the benchmark's dataset, no servers) with
every function in C, with each function of tables/_native.FUNCTIONS left out in turn (its
Python definition, the others in C), with each group of functions that only make sense
together left out, and with all of them out (``PULSE_NO_EXTENSIONS=1``). Each run is a
subprocess of its own, as the switch is read at import.

A shared machine's speed drifts by tens of % over minutes, more than most functions save,
so each configuration is measured in pairs: a run of it next to a run with every function
in C (in random order within the pair, the pairs in a new random order in each of
``--rounds`` rounds). A configuration's saving is the median over the rounds of its run's
process CPU over its pair's all-C run, minus one: how much more CPU the worker's steps take
without it, in % of the all-C CPU. The CPU per reading given is the median of its runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from tables._native import FUNCTIONS

GROUPS = {
    "the per-reading path": (
        "apply_common",
        "apply_windows",
        "update_latest",
        "summary_initialize",
        "summary_add",
    ),
    "the drain": ("close_windows", "open_views", "delta_rows"),
    "the aggregates' text": ("summary_text", "seconds_text"),
    "the Redis writes": (
        "window_write",
        "open_view_writes",
        "latest_writes",
        "closed_window_writes",
    ),
    "the Kafka and InfluxDB records": ("aggregate_records", "line_protocol_lines"),
    "the aggregates records read back": ("aggregates_entry", "aggregates_line"),
}
"""Functions that share C code or only make sense together."""


@dataclass(frozen=True)
class Configuration:
    label: str
    switch: str
    """The value of PULSE_NO_EXTENSIONS."""


def configurations(sets: list[str], only: list[str] | None) -> list[Configuration]:
    out = [Configuration("(none: all in C)", "")]
    names = only if only is not None else list(FUNCTIONS)
    out += [Configuration(name, name) for name in names]
    if only is None:
        out += [Configuration(f"{label}: {', '.join(members)}", ",".join(members))
                for label, members in GROUPS.items()]  # fmt: skip
    out += [Configuration(f"together: {chosen}", chosen) for chosen in sets]
    out.append(Configuration("(all: PULSE_NO_EXTENSIONS=1)", "1"))
    return out


def run_once(configuration: Configuration, hot_path_args: list[str]) -> float:
    """CPU seconds per reading of one bench.hot_path run."""
    env = {**os.environ, "PULSE_NO_EXTENSIONS": configuration.switch}
    done = subprocess.run(
        [sys.executable, "-m", "bench.hot_path", "--json", *hot_path_args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return float(report["total"]) / int(report["readings"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--span-seconds", type=float, default=30.0)
    parser.add_argument("--fetch", type=int, default=2_500)
    parser.add_argument("--flush-every", type=int, default=1)
    parser.add_argument("--tags", action="store_true", help="every reading with a tag")
    parser.add_argument("--windows", default="10s,1m")
    parser.add_argument("--seed", type=int, default=4, help="of the order of the runs")
    parser.add_argument(
        "--only", help="comma-separated functions to leave out one by one (default: all)"
    )
    parser.add_argument(
        "--together",
        action="append",
        default=[],
        metavar="NAMES",
        help="also leave out these comma-separated functions together (repeatable)",
    )
    args = parser.parse_args()
    hot_path_args = [
        f"--readings={args.readings}",
        f"--span-seconds={args.span_seconds}",
        f"--fetch={args.fetch}",
        f"--flush-every={args.flush_every}",
        f"--windows={args.windows}",
        *(["--tags"] if args.tags else []),
    ]
    only = None if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    baseline, *chosen = configurations(args.together, only)
    runs: dict[Configuration, list[float]] = {c: [] for c in (baseline, *chosen)}
    ratios: dict[Configuration, list[float]] = {c: [] for c in chosen}
    order = random.Random(args.seed)
    started = time.monotonic()
    for round_number in range(1, args.rounds + 1):
        for configuration in order.sample(chosen, len(chosen)):
            pair = [baseline, configuration]
            order.shuffle(pair)
            measured = {c: run_once(c, hot_path_args) for c in pair}
            for c, cpu in measured.items():
                runs[c].append(cpu)
            ratios[configuration].append(measured[configuration] / measured[baseline])
        elapsed = time.monotonic() - started
        print(f"round {round_number}/{args.rounds} done ({elapsed:.0f} s)", file=sys.stderr)

    print(
        f"bench.hot_path {' '.join(hot_path_args)}; {args.rounds} rounds, each configuration "
        "paired with an all-C run"
    )
    print()
    print("| left out (in Python) | us/reading | saving, % of all-C | rounds' savings |")
    print("| --- | ---: | ---: | ---: |")
    median = statistics.median(runs[baseline])
    print(f"| {baseline.label} | {median * 1e6:.2f} | - | - |")
    for configuration in chosen:
        savings = sorted((ratio - 1) * 100 for ratio in ratios[configuration])
        print(
            f"| {configuration.label} | {statistics.median(runs[configuration]) * 1e6:.2f} "
            f"| {statistics.median(savings):+.1f} "
            f"| {savings[0]:+.0f} to {savings[-1]:+.0f} |"
        )


if __name__ == "__main__":
    main()
