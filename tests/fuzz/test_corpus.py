"""The fuzzer's corpus (tests/fuzz/corpus/, grown by scripts/fuzz) and its seeds
(tests/fuzz/seeds.py) replayed through the normal build of the C extension and its Python
definition: the two agree on every input (tests/fuzz/harness.py).

The extension is imported directly, whatever PULSE_NO_EXTENSIONS says: this holds the built C
to its definition, so it runs (and fails if the extension is not built) in both runs of
scripts/test.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import orjson

from bench.dataset import DatasetSpec, generate
from tables import _speedups_py as py
from tests.fuzz import harness
from tests.fuzz.seeds import seeds

CORPUS = Path(__file__).parent / "corpus"


def corpus() -> list[bytes]:
    return [path.read_bytes() for path in sorted(CORPUS.iterdir())]


def test_the_corpus_is_small_and_there() -> None:
    inputs = corpus()
    assert 50 <= len(inputs) <= 500
    assert max(map(len, inputs)) <= 512  # scripts/fuzz's -max_len


def test_c_and_python_agree_on_every_corpus_input_and_seed() -> None:
    c = harness.extension()
    for data in corpus() + seeds():
        harness.check(c, data)
    # Not vacuously: most inputs are applied, not refused by both sides' argument checks.
    outcomes = [harness.run(c.apply_common, harness.records_of(data)) for data in seeds()]
    assert sum("'raised'" not in outcome for outcome in outcomes) >= len(outcomes) // 2


def test_a_disagreement_is_caught() -> None:
    # The replay would pass vacuously if check compared nothing: an apply_common that takes
    # no record differs from the definition on a common reading.
    stops_at_once = types.ModuleType("stops_at_once")
    stops_at_once.apply_common = lambda *args: args[1]  # type: ignore[attr-defined]
    stops_at_once.aggregates_entry = py.aggregates_entry  # type: ignore[attr-defined]
    stops_at_once.aggregates_line = py.aggregates_line  # type: ignore[attr-defined]
    data = orjson.dumps({"device": "dev-1", "metric": "t", "value": 1.5, "ts": 1795315444.25})
    try:
        harness.check(stops_at_once, data)
    except harness.Disagreement as exc:
        assert "dev-1" in str(exc)
    else:
        raise AssertionError("no disagreement")
    # Likewise a reader of aggregates records that cuts nothing, on one it cuts.
    cuts_nothing = types.ModuleType("cuts_nothing")
    cuts_nothing.apply_common = harness.extension().apply_common  # type: ignore[attr-defined]
    cuts_nothing.aggregates_entry = py.aggregates_entry  # type: ignore[attr-defined]
    cuts_nothing.aggregates_line = lambda *args: None  # type: ignore[attr-defined]
    aggregates = [seed for seed in seeds() if seed.startswith(b'{"device":"d","metric":"m"')]
    try:
        harness.check(cuts_nothing, aggregates[0])
    except harness.Disagreement as exc:
        assert "read" in str(exc) and "m,device=d,window=10s count=2i" in str(exc)
    else:
        raise AssertionError("no disagreement")


def test_an_input_is_a_fetch_of_keyed_records() -> None:
    common = b'{"device":"dev-2","metric":"t","value":1.5,"ts":1.0}'
    data = b"\x1e".join([b"dev-1\x1f" + common, common, b"\x1f" + common, b"{}", b"d1\x1f", b""])
    records = harness.records_of(data)
    assert [(r.offset, r.key, r.value, r.serialized_value_size) for r in records] == [
        (0, b"dev-1", common, len(common)),
        (1, b"dev-2", common, len(common)),
        (2, None, common, len(common)),
        (3, b"dev-1", b"{}", 2),
        (4, b"d1", None, -1),
        (5, b"dev-1", b"", 0),
    ]


def test_the_scan_reads_the_benchmark_records_exactly() -> None:
    # The seeds' real records are read by the C's own scan, never by ``loads``: with a loads
    # that refuses everything every one is still applied, with the value and the event time
    # (in microseconds, rounded half to even) that the dataset generator wrote.
    generated = list(generate(DatasetSpec(devices=10), limit=12))
    records = harness.records_of(b"\x1e".join(value for _, value, _ in generated))
    assert [r.key for r in records] == [key for key, _, _ in generated]

    def refuse(value: bytes) -> None:
        raise ValueError("loads must not be called")

    c = harness.extension()
    position = [0, harness.NO_WATERMARK, harness.NO_WATERMARK, harness.NO_DEADLINE]
    latest: dict[tuple[str, str], tuple[int, float]] = {}
    names = {name: name for name in harness.KNOWN_NAMES}
    state: tuple[Any, ...] = ({}, set(), {}, [], {}, set(), {}, latest, set(), {}, None)
    stop = c.apply_common(
        records, 0, harness.MAX_BYTES, harness.MAX_FUTURE_US, names, refuse, harness.SPECS,
        harness.GRACE_US, position, *state,
    )  # fmt: skip
    assert stop == len(records) == 12
    expected: dict[tuple[str, str], tuple[int, float]] = {}
    for _, value, _ in generated:
        doc = orjson.loads(value)
        t_us = round(doc["ts"] * 1_000_000)
        pair = (doc["device"], doc["metric"])
        if pair not in expected or t_us >= expected[pair][0]:
            expected[pair] = (t_us, doc["value"])
    assert latest == expected
    assert position[0] == 12
