"""The fuzzer's seeds (tests/fuzz/harness.py's input format): real records in the shapes the
worker reads, and the hand-written edges of tests/helpers/json_texts.py. scripts/fuzz writes
them to a directory libFuzzer reads beside the corpus; tests/fuzz/test_corpus.py replays them
with it.

``python -m tests.fuzz.seeds DIRECTORY`` writes each seed to DIRECTORY, named by its SHA-1
as libFuzzer names its inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from pathlib import Path

import orjson

from bench.dataset import DatasetSpec, generate
from pulse.producer import SyntheticReadings
from tests.fuzz.harness import KEY_SEPARATOR, MAX_BYTES, RECORD_SEPARATOR
from tests.helpers.json_texts import (
    AROUND,
    COLONS,
    EDGE_NAMES,
    EDGE_NUMBERS,
    NAMES,
    OTHER_MEMBERS,
    OTHER_VALUES,
    SEPARATORS,
)

COMMON = [("device", '"dev-1"'), ("metric", '"temperature"'), ("value", "21.5")]
TS = ("ts", "1795315444.25")
EDGE_TIMES = [
    "0.0", "-0.0", "5e-7", "-5e-7", "1.5e-6", "-1e-6", "4000000000.0", "4000000000.0000005",
    "4000000000.000001", "1795315444.2500005", "1795315444.0000000001", "1.7953154442500001e9",
]  # fmt: skip
"""Event times at the edges of the common reading's range and of rounding to microseconds."""
EDGE_VALUES = [
    "1e300", "-1e300", "1.0000000000000001e300", "1e301", "123456789012345.0", "1234567890123456.0",
    "1e22", "1e23", "1e-22", "1e-23", "0.000000000000000000000001", "4.9e-324", "2.5e-324",
    "1.7976931348623157e308", "1.7976931348623159e308", "-0.0e0", "0e-5", "1E22", "1e+22",
    "123456789012345e-22", "9999999999999999e22", "21.50000000000000000000000000000000000000001",
]  # fmt: skip
"""Values at the edges of the range and of the scan's exact fast path (15 digits, 1e22)."""


def document(members: list[tuple[str, str]], separator: str = ",", colon: str = ":") -> bytes:
    return ("{" + separator.join(f'"{n}"{colon}{t}' for n, t in members) + "}").encode()


def fetch(*values: bytes) -> bytes:
    return RECORD_SEPARATOR.join(values)


def seeds() -> list[bytes]:
    """Every seed, in a fixed order."""
    out: list[bytes] = [b"", b"{}", RECORD_SEPARATOR]
    # The benchmark's dataset and the demo producer's readings (with tags: not the common
    # reading), one per input and as a fetch.
    dataset = [value for _, value, _ in generate(DatasetSpec(devices=10), limit=12)]
    produced = [value for _, value in SyntheticReadings(devices=4, count=4, start_ts=1.8e9)]
    out += dataset[:4] + produced[:2] + [fetch(*dataset), fetch(*dataset[:3], *produced)]
    # orjson's own output of the common reading and of its neighbours
    doc = {"device": "dev-1", "metric": "t", "value": 1.5, "ts": 1795315444.25}
    out += [orjson.dumps(doc), orjson.dumps({**doc, "value": 2}), orjson.dumps({**doc, "ts": 2})]
    out += [orjson.dumps({k: v for k, v in doc.items() if k != "ts"})]
    # the four members in every order
    for members in itertools.permutations([*COMMON, TS]):
        out.append(document(list(members)))
    # json_texts.py's edges: every number as value and ts, every name as device and metric,
    # other members, whitespace and what follows the object
    for number in EDGE_NUMBERS + EDGE_VALUES + EDGE_TIMES:
        for separator in (",", ", "):  # the scan's text, and orjson's on both sides
            out.append(document([*COMMON[:2], ("value", number), TS], separator))
            out.append(document([*COMMON, ("ts", number)], separator))
    for name in NAMES + EDGE_NAMES + ['"' + "d" * 128 + '"', '"' + "d" * 129 + '"']:
        out.append(document([("device", name), *COMMON[1:], TS]))
        out.append(document([COMMON[0], ("metric", name), COMMON[2], TS]))
    for member, value in itertools.product(OTHER_MEMBERS, OTHER_VALUES):
        out.append(document([*COMMON, TS, (member, value)]))
    for separator, colon in itertools.product(SEPARATORS, COLONS):
        out.append(document([*COMMON, TS], separator, colon))
    for before, after in AROUND:
        out.append(before.encode() + document([*COMMON, TS])[1:-1] + after.encode())
    out.append(document([*COMMON, TS, COMMON[0]]))  # a repeated member
    # keys: another device, none; a tombstone
    common = document([*COMMON, TS])
    out += [b"dev-2" + KEY_SEPARATOR + common, KEY_SEPARATOR + common, b"dev-1" + KEY_SEPARATOR]
    # the size limit: a value of exactly MAX_BYTES bytes, and one more
    padded = document([*COMMON[:2], ("value", "21.5" + "0" * (MAX_BYTES - len(common))), TS])
    out += [padded, padded[:-1] + b"0}"]
    # late readings: behind the watermark for one window, then for both
    late = [document([*COMMON, ("ts", t)]) for t in ("1795315444.25", "1795315439.0", "1.0")]
    out.append(fetch(*late))
    # aggregates records as the history and InfluxDB writers read them back (a fuzz input's
    # record goes through their readers too, its series known)
    aggregates = document(
        [("device", '"d"'), ("metric", '"m"'), ("window", '"10s"'), ("start", "1795315440"),
         ("end", "1795315450"), ("count", "2"), ("sum", "43.0"), ("min", "21.5"),
         ("max", "21.5"), ("mean", "21.5"), ("first", "21.5"), ("last", "21.5"),
         ("p50", "21.5"), ("p95", "21.5"), ("p99", "21.5"), ("tags", "{}")]
    )  # fmt: skip
    out += [
        aggregates,
        aggregates.replace(b"43.0", b"4.3e1"),
        aggregates.replace(b"{}", b'{"a":"b"}'),
    ]
    out += [aggregates.replace(b"1795315440", b"1795315440.5"), aggregates.replace(b"2,", b"0,", 1)]
    return out


def main(directory: str) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for seed in seeds():
        (path / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


if __name__ == "__main__":
    main(sys.argv[1])
