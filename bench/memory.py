"""Memory: RSS per 100,000 open (device, metric, window) keys in Pulse's window state.

``python -m bench.memory --keys 200000`` (run by ``bench.run`` in its own process) fills one
``tables.partition_state.PartitionState`` (windows ``10s,1m``, grace 5 s: what the worker
holds per input partition) with open windows and compares the process's RSS with the same
process before: readings are JSON records parsed by ``models.reading.parse_reading`` as the
worker does (so device and metric strings are separate objects, as from the wire), applied in
offset order, one (device, metric) per reading, all at the same event time so that no window
closes. Each (device, metric) thus opens two keys (its 10 s and its 1 m window) and one latest
value. The state is then drained once (as every flush does) before RSS is read.

Two fillings: one reading per key, and ``--readings-per-key`` (default 4) readings with
different values per key (more buckets in each window's quantile sketch). Prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random

import orjson

from models.reading import parse_reading
from tables.partition_state import PartitionState
from tables.windows import parse_windows

EVENT_TIME_US = 1_795_315_205_000_000  # inside a 10 s and a 1 m window


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(keys: int, readings_per_key: int) -> tuple[PartitionState, int]:
    specs = parse_windows("10s,1m")
    state = PartitionState(specs, 5_000_000)
    rng = random.Random(1)
    series = keys // len(specs)
    offset = 0
    ts = EVENT_TIME_US / 1_000_000
    for _ in range(readings_per_key):
        for number in range(series):
            device = f"dev-{number // 2:07d}"
            metric = ("temperature", "humidity")[number % 2]
            value = round(rng.gauss(30.0, 8.0), 2)
            raw = orjson.dumps({"device": device, "metric": metric, "value": value, "ts": ts})
            reading = parse_reading(device.encode(), raw, EVENT_TIME_US // 1000, 65536, 0)
            state.apply(reading, offset)
            offset += 1
        state.drain()  # a flush: the changed sets and the delta are dropped again
    return state, state.open_windows


def measure(keys: int, readings_per_key: int) -> dict[str, float]:
    gc.collect()
    before = rss_bytes()
    state, opened = fill(keys, readings_per_key)
    gc.collect()
    after = rss_bytes()
    assert opened == keys, (opened, keys)
    del state
    return {
        "keys": keys,
        "readings_per_key": readings_per_key,
        "rss_delta_mib": round((after - before) / 2**20, 1),
        "mib_per_100k_keys": round((after - before) / 2**20 * 100_000 / keys, 1),
        "bytes_per_key": round((after - before) / keys),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--readings-per-key", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(measure(args.keys, args.readings_per_key)))


if __name__ == "__main__":
    main()
