"""Recovery: how fast a partition's state is rebuilt from its changelog deltas.

``python -m bench.recovery`` runs one input partition of the latency run's load (1,250
readings/s over 1,250 devices x 2 metrics, the benchmark dataset's readings from
``bench.dataset.generate`` parsed by ``parse_reading``, windows ``10s,1m``, a flush every
100 readings) through ``tables.partition_state.PartitionState``, encodes every flush's delta
as the worker does (``pulse.changelog.encode_parts``, after one snapshot of the empty
state), then times rebuilding a fresh state from those records (``DeltaAssembler`` +
``apply_delta`` + ``finish_recovery``: what ``recover_partition`` does with each record it
fetches, without the fetch). The rebuilt state must equal the live one. Prints JSON, with
the seconds that ``pulse.changelog.SNAPSHOT_MIN_BYTES`` of deltas take at the measured rate:
the most a recovery replays after a snapshot of a small state.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

from bench.dataset import DatasetSpec, generate
from models.reading import parse_reading
from pulse.app import tune_gc
from pulse.changelog import SNAPSHOT_MIN_BYTES, DeltaAssembler, encode_parts
from pulse.settings import Settings
from tables.partition_state import PartitionState

DEFAULTS = Settings.from_env({})
"""The worker's default settings: windows ``10s,1m``, grace, largest accepted reading."""


@dataclass(frozen=True)
class RecoveryResult:
    readings: int
    records: int
    delta_bytes: int
    seconds: float
    mb_per_second: float
    seconds_per_snapshot_floor: float
    """Seconds to replay SNAPSHOT_MIN_BYTES of deltas at the measured rate."""
    open_windows: int
    identical: bool
    """Whether the rebuilt state holds exactly the live state's windows and latest values."""


def measure_recovery(
    seconds: float = 60.0, rate: int = 1_250, devices: int = 1_250, flush_every: int = 100
) -> RecoveryResult:
    specs, grace_us = DEFAULTS.windows, DEFAULTS.grace_us
    live = PartitionState(specs, grace_us)
    values = encode_parts(live.drain(snapshot=True).delta, "snapshot", 0)
    readings = int(seconds * rate)
    spec = DatasetSpec(readings=readings, devices=devices, partitions=1, span_seconds=seconds)
    for offset, (key, value, ts_ms) in enumerate(generate(spec)):
        reading = parse_reading(
            key, value, ts_ms, DEFAULTS.max_message_bytes, DEFAULTS.max_future_us
        )
        live.apply(reading, offset)
        if offset % flush_every == flush_every - 1:
            values += encode_parts(live.drain().delta, f"delta-{offset}", 0)
    values += encode_parts(live.drain().delta, "delta-last", 0)
    delta_bytes = sum(len(record) for record in values)

    began = time.perf_counter()
    rebuilt = PartitionState(specs, grace_us)
    assembler = DeltaAssembler()
    for record in values:
        delta = assembler.add(record)
        if delta is not None:
            rebuilt.apply_delta(delta)
    rebuilt.finish_recovery()
    took = time.perf_counter() - began

    rate_mb = delta_bytes / 1e6 / took
    return RecoveryResult(
        readings=readings,
        records=len(values),
        delta_bytes=delta_bytes,
        seconds=round(took, 3),
        mb_per_second=round(rate_mb, 1),
        seconds_per_snapshot_floor=round(SNAPSHOT_MIN_BYTES / 1e6 / rate_mb, 2),
        open_windows=rebuilt.open_windows,
        identical=(
            rebuilt.windows == live.windows
            and rebuilt.latest == live.latest
            and rebuilt.next_offset == live.next_offset
            and rebuilt.watermark == live.watermark
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="event time to generate")
    parser.add_argument("--rate", type=int, default=1_250, help="readings per second")
    parser.add_argument("--devices", type=int, default=1_250)
    args = parser.parse_args()
    tune_gc()  # as the worker's process does
    print(json.dumps(asdict(measure_recovery(args.seconds, args.rate, args.devices))))


if __name__ == "__main__":
    main()
