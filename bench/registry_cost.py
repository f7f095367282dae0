"""What the registry costs the hot path: ``python -m bench.registry_cost``.

Runs ``bench.hot_path`` (in a subprocess each, CPU seconds per reading) without a registry,
with every device registered and required (``PULSE_REGISTRY_REQUIRED``), and with alert
rules on every series (``--registry alerts``), in pairs with a run without, in a shuffled
order, and prints the median of each pair's ratio. Issue 23's goal: requiring the registry
costs at most 5 % of the CPU per reading (ratio <= 1.05).

A shared machine's speed drifts within minutes by more than the effect measured, so
each ratio is also printed with the drift cancelled: each run's CPU divided by its sink
steps' (``kafka``, ``redis`` and ``influx``: the same windows made into the same outputs
with or without a registry, so they time the machine, not the registry).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

SINK_STEPS = ("kafka", "redis", "influx")
"""bench.hot_path's steps whose work a registry does not change."""


def run_once(registry: str, hot_path_args: list[str]) -> tuple[float, float]:
    """CPU seconds per reading of one bench.hot_path run, and its CPU over its sink steps'."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.hot_path",
            "--json",
            f"--registry={registry}",
            *hot_path_args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    total = float(report["total"])
    return total / int(report["readings"]), total / sum(float(report[s]) for s in SINK_STEPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--span-seconds", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    hot_path_args = [f"--readings={args.readings}", f"--span-seconds={args.span_seconds}"]
    chosen = ("required", "alerts")
    ratios: dict[str, list[float]] = {name: [] for name in chosen}
    steadied: dict[str, list[float]] = {name: [] for name in chosen}
    baseline: list[float] = []
    order = random.Random(args.seed)
    started = time.monotonic()
    for number in range(1, args.rounds + 1):
        for name in order.sample(chosen, len(chosen)):
            pair = ["none", name]
            order.shuffle(pair)
            measured = {each: run_once(each, hot_path_args) for each in pair}
            baseline.append(measured["none"][0])
            ratios[name].append(measured[name][0] / measured["none"][0])
            steadied[name].append(measured[name][1] / measured["none"][1])
        print(f"round {number}/{args.rounds} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    print(f"bench.hot_path {' '.join(hot_path_args)}; {args.rounds} rounds of pairs")
    print(f"  no registry: {statistics.median(baseline) * 1e6:.2f} us/reading")
    for name in chosen:
        for label, values in (("CPU", ratios[name]), ("drift cancelled", steadied[name])):
            print(f"  --registry {name}, {label}: x{statistics.median(values):.3f} of no "
                  f"registry (rounds: {', '.join(f'{r:.3f}' for r in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
