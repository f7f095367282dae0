"""One fuzz input through both twins of the batch parser: the C extension's apply_common
(tables/_speedups.c: scan_common, scan_float and scan_name, or orjson when the scan is unsure)
and its Python definition (tables/_speedups_py.py, always orjson); and each of its records
through both twins of the aggregates records' readers (aggregates_entry, aggregates_line),
its series known. :func:`check` raises
:class:`Disagreement` unless the two return (or raise) the same and leave the same state, and
:class:`ReferenceLeak` if the C keeps a reference to what it was given.

scripts/fuzz runs it under atheris on an AddressSanitizer build of the extension
(tests/fuzz/fuzz_parser.py); tests/fuzz/test_corpus.py replays the committed corpus through
it with the normal build.

An input is a fetch of records: their values separated by 0x1E (the separator of RFC 7464
JSON text sequences), offsets 0, 1, 2... A record's key is the bytes before a 0x1F in its
text, if there is one (none when empty), else the device a producer keys it by: the text of
the first ``"device":"..."`` member, raw, or ``dev-1``; nothing after the 0x1F is a
tombstone (no value). So a seed is readable JSON, and the fuzzer reaches a matching key, a
mismatched one, none, and a record without a value.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
from types import ModuleType
from typing import Any, NamedTuple

import orjson
from aiokafka.structs import ConsumerRecord

from tables import _speedups_py as py
from tables.aggregators import QuantileSketch
from tables.partition_state import NO_DEADLINE, NO_WATERMARK, PartitionState
from tables.windows import parse_windows

RECORD_SEPARATOR = b"\x1e"
KEY_SEPARATOR = b"\x1f"
MAX_RECORDS = 64
"""Records of one input read at most (the rest is ignored): a fetch, not a flood."""
MAX_BYTES = 160
"""PULSE_MAX_MESSAGE_BYTES of the run: a reading with tags fits, and the fuzzer reaches the
limit (a longer value is not the common reading)."""
DEFAULT_KEY = b"dev-1"
_DEVICE = re.compile(rb'"device"\s*:\s*"([^"\\]*)"')

SPECS = PartitionState(parse_windows("10s,1m"), 0)._spec_math
"""The benchmark's windows, as apply_common takes them."""
GRACE_US = 2_000_000
MAX_FUTURE_US = 30_000_000
"""PULSE_MAX_FUTURE's default: a reading more than 30 s ahead of its record's timestamp is
left to parse_reading (dead-lettered), on both sides."""
RECORD_TIMESTAMP_MS = 1_800_000_000_000
"""Every record's broker timestamp, in epoch ms: the seeds' readings are behind it, so they
take the common path, and a fuzzed ts far ahead of it takes the future rule's."""

KNOWN_NAMES = (
    *(f"dev-{n:05d}" for n in range(10)),  # bench/dataset.py's devices (DatasetSpec(devices=10))
    *(f"dev-{n:04d}" for n in range(4)),  # pulse/producer.py's
    *("dev-1", "dev-2", "d1", "d2", "t", "m", "temperature", "humidity"),  # the tests'
    "d" * 128,  # the longest name
)
"""Names validated before (models.reading.VALID_NAMES): any other is new to the parse, which
leaves its record to parse_reading."""
VALID_NAMES = {name: name for name in KNOWN_NAMES}
"""VALID_NAMES of every run: both sides only read it, and hand out its strs."""


class Disagreement(AssertionError):
    """The C extension and its Python definition differ on an input."""


class ReferenceLeak(AssertionError):
    """The C kept a reference to an object it was given after its results were dropped: a
    leak LeakSanitizer cannot see, since the object stays reachable from its owner."""


def extension(path: str | None = None) -> ModuleType:
    """The C extension configured as tables.aggregators configures it: the normal build
    (``tables._speedups``), or the build at ``path`` (scripts/fuzz's AddressSanitizer build,
    kept out of tables/)."""
    if path is None:
        module = importlib.import_module("tables._speedups")
    else:
        loader = importlib.machinery.ExtensionFileLoader("tables._speedups", path)
        spec = importlib.util.spec_from_file_location("tables._speedups", path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    module.configure(
        QuantileSketch.GAMMA,
        QuantileSketch.INV_LOG_GAMMA,
        QuantileSketch.MIN_MAGNITUDE,
        QuantileSketch.ZERO,
        QuantileSketch.NEGATIVE,
        QuantileSketch._LAST_POSITIVE,
        QuantileSketch.MAX_BUCKETS,
        QuantileSketch._collapse,
    )
    return module


def records_of(data: bytes) -> list[ConsumerRecord]:
    """The fetch an input stands for (see the module's docstring)."""
    records = []
    for offset, text in enumerate(data.split(RECORD_SEPARATOR)[:MAX_RECORDS]):
        key: bytes | None
        value: bytes | None
        key, separated, value = text.partition(KEY_SEPARATOR)
        if not separated:
            value = text
            device = _DEVICE.search(value)
            key = device.group(1) if device else DEFAULT_KEY
        else:
            key = key or None
            value = value or None
        size = -1 if value is None else len(value)
        records.append(
            ConsumerRecord(
                "readings", 0, offset, RECORD_TIMESTAMP_MS, 0, key, value, None, 0, size, ()
            )
        )
    return records


def run(apply_common: Any, records: list[ConsumerRecord]) -> str:
    """The batch path over ``records`` with one side's apply_common, as the worker calls it
    (tables/partition_state.py, agents/ingest.py): from the first record, and again after
    each record it leaves to the caller, which the worker parses one by one and skips here.
    Returns the repr of every call's outcome (its result, or its exception's type: the
    exception's text is not part of the contract) and of the state at the end."""
    position = [0, NO_WATERMARK, NO_WATERMARK, NO_DEADLINE]
    state: tuple[Any, ...] = ({}, set(), {}, [], {}, set(), {}, {}, set(), {}, None)
    outcomes: list[Any] = []
    begin = 0
    while begin < len(records):
        try:
            stop = apply_common(
                records, begin, MAX_BYTES, MAX_FUTURE_US, VALID_NAMES, orjson.loads, SPECS,
                GRACE_US, position, *state,
            )  # fmt: skip
        except Exception as exc:
            outcomes.append(("raised", type(exc)))
            break
        outcomes.append(("returned", stop))
        if stop < len(records):  # left to parse_reading, which handles it: skip it
            position[0] = max(position[0], records[stop].offset + 1)
        begin = stop + 1
    return repr((outcomes, position, state))


class Entry(NamedTuple):
    """A history entry's shape (pulse.sinks.history.HistoryEntry)."""

    key: str
    start: float
    readings: int
    member: bytes
    event: bytes


def read_back(module: Any, records: list[ConsumerRecord]) -> str:
    """Each record's value through one side's aggregates_entry and aggregates_line, its
    series (the text before ``,"start":``) known to both; the repr of their outcomes."""
    outcomes: list[Any] = []
    for record in records:
        value = record.value
        if value is None:
            continue
        at = value.find(b',"start":')
        series = {value[:at]: "p:history:10s:d:m"} if at >= 0 else {}
        heads = {value[:at]: "m,device=d,window=10s "} if at >= 0 else {}
        for function, args in (
            (module.aggregates_entry, (value, series, Entry)),
            (module.aggregates_line, (value, heads)),
        ):
            try:
                outcomes.append(("returned", function(*args)))
            except Exception as exc:
                outcomes.append(("raised", type(exc)))
    return repr(outcomes)


def check(c: ModuleType, data: bytes) -> None:
    """Raises :class:`Disagreement` unless C's apply_common and its Python definition return
    the same and leave the same state on the input ``data``, and :class:`ReferenceLeak` if
    the C holds on to a name, a key or a value of the input once its state is dropped."""
    records = records_of(data)
    given = [x for r in records for x in (r.key, r.value) if x is not None]
    given += VALID_NAMES.values()
    before = [sys.getrefcount(x) for x in given]
    in_c = run(c.apply_common, records)
    read_in_c = read_back(c, records)
    after = [sys.getrefcount(x) for x in given]
    if after != before:
        held = [x for x, b, a in zip(given, before, after, strict=True) if a != b]
        raise ReferenceLeak(f"C holds on to {held!r} after {data!r}")
    in_python = run(py.apply_common, records)
    read_in_python = read_back(py, records)
    if read_in_c != read_in_python:
        raise Disagreement(
            f"C and Python read {data!r} back differently:\n  C:      {read_in_c}\n"
            f"  Python: {read_in_python}"
        )
    if in_c != in_python:
        raise Disagreement(
            f"C and Python differ on {data!r}:\n  C:      {in_c}\n  Python: {in_python}"
        )
