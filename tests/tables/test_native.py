"""tables/_native.py: PULSE_NO_EXTENSIONS picks C or the Python definitions, per function.

Each case runs in a fresh interpreter: the variable is read once, at the first import.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tables import _native

ROOT = Path(__file__).resolve().parents[2]

REPORT = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    {prelude}
    import agents.readings, pulse.sinks.influx, pulse.sinks.kafka, pulse.sinks.redis
    import tables.partition_state
    from tables import _native, _speedups_py
print(json.dumps({{
    "extension_imported": "tables._speedups" in sys.modules,
    "in_c": sorted(_native.IN_C),
    "python": sorted(
        n for n in _native.FUNCTIONS if getattr(_native, n) is getattr(_speedups_py, n)
    ),
    "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
}}))
"""


def run(switch: str | None, prelude: str = "pass") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PULSE_NO_EXTENSIONS"}
    if switch is not None:
        env["PULSE_NO_EXTENSIONS"] = switch
    done = subprocess.run(
        [sys.executable, "-c", REPORT.format(prelude=prelude)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("switch", ["1", "all", " 1 "])
def test_all_python_does_not_import_the_extension(switch: str) -> None:
    report = run(switch)
    assert report == {
        "extension_imported": False,
        "in_c": [],
        "python": sorted(_native.FUNCTIONS),
        "warnings": [],
    }


def extension_built() -> bool:
    return any((ROOT / "tables").glob("_speedups.*.so")) or any(
        (ROOT / "tables").glob("_speedups.*.pyd")
    )


@pytest.mark.skipif(not extension_built(), reason="the C extension is not built")
@pytest.mark.parametrize("switch", [None, "", "0"])
def test_by_default_every_function_is_in_c(switch: str | None) -> None:
    report = run(switch)
    assert report["extension_imported"] is True
    assert report["in_c"] == sorted(_native.FUNCTIONS)
    assert report["python"] == []
    assert report["warnings"] == []


@pytest.mark.skipif(not extension_built(), reason="the C extension is not built")
def test_functions_named_are_left_out_the_others_stay_in_c() -> None:
    chosen = sorted(_native.FUNCTIONS)[:2]
    report = run(" , ".join(chosen) + ",")
    assert report["python"] == chosen
    assert report["in_c"] == sorted(set(_native.FUNCTIONS) - set(chosen))


def test_an_unknown_name_stops_with_the_variable_named() -> None:
    env = {**os.environ, "PULSE_NO_EXTENSIONS": "summary_text,no_such_step"}
    done = subprocess.run(
        [sys.executable, "-c", "import tables.partition_state"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "ValueError: PULSE_NO_EXTENSIONS='summary_text,no_such_step': no function " in (
        done.stderr
    )
    assert "no_such_step" in done.stderr


def test_without_the_built_extension_pulse_warns_once_and_runs_on_python() -> None:
    # As after `pip install .` without a C compiler: importing the extension fails.
    report = run(None, prelude='sys.modules["tables._speedups"] = None')
    assert report["in_c"] == []
    assert report["python"] == sorted(_native.FUNCTIONS)
    assert len(report["warnings"]) == 1
    assert report["warnings"][0].startswith("Pulse runs without its C speedups")


def test_left_out_parses_the_variable() -> None:
    assert _native.left_out("") == _native.left_out(" 0 ") == frozenset()
    assert _native.left_out("ALL") == frozenset(_native.FUNCTIONS)
    assert _native.left_out("window_write, seconds_text") == {"window_write", "seconds_text"}
    with pytest.raises(ValueError, match="no function nope"):
        _native.left_out("window_write,nope")


def test_only_the_selector_imports_the_extension_or_the_definitions() -> None:
    importing = re.compile(r"^\s*(from|import)\s.*\b_speedups(_py)?\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in ("agents", "bench", "models", "pulse", "tables")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "tables" / "_native.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if importing.match(line)
    ]
    assert offenders == []


OUTPUTS = """
import hashlib, itertools, orjson
from agents.ingest import process_records
from bench.dataset import DatasetSpec, consumer_records
from pulse.changelog import encode_parts
from pulse.sinks import redis as redis_sink
from pulse.sinks._base import FlushBatch
from pulse.sinks.influx import line_protocol_lines
from pulse.sinks.kafka import aggregate_records
from tables.partition_state import PartitionState
from tables.windows import parse_windows

clock = itertools.count(0.0, 7.5)
redis_sink.time.monotonic = lambda: next(clock)
spec = DatasetSpec(readings=6000, devices=50, partitions=2, span_seconds=90, jitter_seconds=6)
digest = hashlib.sha256()
sink = redis_sink.RedisSink("redis://127.0.0.1:1", "p", 60)
for windows in ("10s,1m", "30s/10s,sliding:20s"):
    for partition, records in consumer_records(spec, "readings").items():
        for number, record in enumerate(records):  # the other paths of the batch: tags, bad
            doc = orjson.loads(record.value)
            if number % 7 == 3:
                record.value = orjson.dumps({**doc, "tags": {"site": str(number % 3)}})
            elif number % 11 == 5:
                record.value = orjson.dumps({**doc, "value": int(doc["value"])})
            elif number % 13 == 6:
                record.value = record.value[:-1]
            elif number % 17 == 8:  # 60 s ahead of its record's timestamp: too far
                record.timestamp -= 60_000
            elif number % 19 == 9:  # a repeated member
                record.value = record.value[:-1] + b',"value":1.0}'
            elif number % 23 == 10:  # a ':' in a string
                record.value = orjson.dumps({**doc, "unit": "m:s"})
        state = PartitionState(parse_windows(windows), 2_000_000)
        rejected = []
        reject = lambda record, *why: rejected.append(why)
        for begin in range(0, len(records), 250):
            process_records(state, records[begin : begin + 250], 4096, 30_000_000, reject)
            drained = state.drain(snapshot=begin % 2000 == 0, spread_us=3_000_000)
            batch = FlushBatch.of([drained], [])
            for part in (drained, sink._commands(batch), aggregate_records(batch.closed),
                         line_protocol_lines(batch.closed), encode_parts(drained.delta, "d", 0)):
                digest.update(repr(part).encode())
        state.advance_idle(2**62)
        digest.update(repr((state.drain(), rejected)).encode())
print(digest.hexdigest())
"""


@pytest.mark.skipif(not extension_built(), reason="the C extension is not built")
def test_the_worker_steps_give_the_same_outputs_with_and_without_the_extension() -> None:
    # The dataset of the benchmark (with tags, int values and broken records mixed in) through
    # the batch path, drains (snapshots and spread closes), the sinks' outputs and the
    # changelog's records, once in C and once on the Python definitions: the same bytes.
    digests = []
    for switch in ("", "1"):
        env = {**os.environ, "PULSE_NO_EXTENSIONS": switch, "PYTHONHASHSEED": "0"}  # set orders
        done = subprocess.run(
            [sys.executable, "-c", OUTPUTS],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1]


def test_the_extension_build_is_optional() -> None:
    # `pip install .` without a C compiler installs Pulse without the extension (checked
    # once with CC=/bin/false: a warning from build_ext, then the Python definitions run).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["ext-modules"] == [
        {"name": "tables._speedups", "sources": ["tables/_speedups.c"], "optional": True},
        {"name": "pulse.bridge._encode", "sources": ["pulse/bridge/_encode.c"], "optional": True},
    ]
