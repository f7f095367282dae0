"""What each C speedup saves: ``python -m bench.native``.

Runs ``bench.hot_path`` (the worker's pure steps on the benchmark's dataset, no servers) once
with every function in C, once with each function of tables/_native.FUNCTIONS left out in
turn (its Python definition, the others in C), once with each group of functions that only
make sense together left out, and once with all of them out (``PULSE_NO_EXTENSIONS=1``).
Each run is a subprocess of its own, as the switch is read at import. The configurations
run in a new random order in each of ``--rounds`` rounds, so that a slow spell of a shared
machine spreads over all of them, and each figure is the median over the rounds of the
process CPU time of the timed part, per reading.

The table gives, per configuration, that median, the spread of the rounds, and the saving:
how much more CPU the worker's steps take without it, in % of the all-C CPU.
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
        "parse_common",
        "apply_windows",
        "update_latest",
        "summary_initialize",
        "summary_add",
        "sketch_key",
        "sketch_add",
    ),
    "the drain": ("close_windows", "open_views", "delta_rows", "latest_changes"),
    "the aggregates' text": ("summary_text", "float_repr", "seconds_text"),
    "the Redis commands": (
        "hset",
        "open_view_commands",
        "latest_commands",
        "closed_window_commands",
    ),
    "the Kafka and InfluxDB records": ("aggregate_records", "line_protocol_lines"),
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
    chosen = configurations(args.together, only)
    samples: dict[Configuration, list[float]] = {c: [] for c in chosen}
    order = random.Random(args.seed)
    started = time.monotonic()
    for round_number in range(1, args.rounds + 1):
        for configuration in order.sample(chosen, len(chosen)):
            samples[configuration].append(run_once(configuration, hot_path_args))
        elapsed = time.monotonic() - started
        print(f"round {round_number}/{args.rounds} done ({elapsed:.0f} s)", file=sys.stderr)

    baseline = statistics.median(samples[chosen[0]])
    print(f"bench.hot_path {' '.join(hot_path_args)}; median of {args.rounds} rounds")
    print()
    print("| left out (in Python) | us/reading | rounds' range | saving, % of all-C |")
    print("| --- | ---: | ---: | ---: |")
    for configuration in chosen:
        runs = samples[configuration]
        median = statistics.median(runs)
        saving = (median - baseline) / baseline * 100
        print(
            f"| {configuration.label} | {median * 1e6:.2f} "
            f"| {min(runs) * 1e6:.2f}-{max(runs) * 1e6:.2f} | {saving:+.1f} |"
        )


if __name__ == "__main__":
    main()
