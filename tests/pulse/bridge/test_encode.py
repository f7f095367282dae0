"""The bridge's round encoding: the C functions (pulse/bridge/_encode.c) give the bytes of
their Python definitions (pulse/bridge/_encode_py.py), and the batches they make are Kafka
record batches that aiokafka reads back as the records models.entries defines."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.entries import EntryReader, RejectedEntry, entry_record
from pulse.bridge import _encode_py, encoding

MAX_BYTES = 1024
FUTURE_US = 30_000_000
PARTITIONS = 5
STREAM = b"pulse:ingest:gw-7"
LEASE = b"42"
NOW_MS = 1_796_323_010_059

c_module: ModuleType | None = None
if encoding.IN_C:
    from pulse.bridge import _encode as c_module  # type: ignore[attr-defined,no-redef]

needs_c = pytest.mark.skipif(c_module is None, reason="the C extension is not built")


def encode_all(
    module: Any, entries: list[Any], reader: EntryReader, limit: int = 1_000_000
) -> tuple[list[bytearray], list[int], list[bytes], list[bytes], int]:
    """What a round makes of ``entries`` (the service's loop, dead letters left out):
    each partition's records and stats, the ids encoded, the ids rejected, and where it
    stopped."""
    buffers = [bytearray() for _ in range(PARTITIONS)]
    stats = [0] * (3 * PARTITIONS)
    ids: list[bytes] = []
    rejected: list[bytes] = []
    partitions: dict[bytes, int] = {}
    index = 0
    while index < len(entries):
        index, status = module.encode_entries(
            entries,
            index,
            len(entries),
            reader.names,
            reader.tags,
            MAX_BYTES,
            FUTURE_US,
            partitions,
            PARTITIONS,
            buffers,
            stats,
            STREAM,
            LEASE,
            limit,
            ids,
        )
        if status == encoding.DONE or status == encoding.FULL:
            break
        entry_id, fields = entries[index]
        try:
            key, value, ts = reader.record(entry_id, fields)
        except RejectedEntry:
            rejected.append(entry_id)
            index += 1
            continue
        partition = _encode_py.murmur2_partition(key, PARTITIONS)
        if not module.append_record(
            buffers, stats, partition, key, value, ts, (STREAM, entry_id, LEASE), limit
        ):
            break
        ids.append(entry_id)
        index += 1
    return buffers, stats, ids, rejected, index


names = st.sampled_from([b"dev-1", b"dev-22", b"temperature", b"a.b_c", b"bad name", b"\xff"])
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.integers(min_value=-(10**25), max_value=10**25).map(lambda i: str(i).encode()),
    st.sampled_from([b"1e400", b"-0", b"0.5e-3", b"01", b"1.", b" 1", b"+1", b"abc", b""]),
)
times = st.one_of(
    st.integers(min_value=-5, max_value=9_300_000_000).map(lambda s: str(s).encode()),
    st.floats(min_value=-1, max_value=9.3e9).map(lambda f: repr(f).encode()),
    st.sampled_from([b"2026-12-03T10:00:00Z", b"1796323010.059", b"1796323050", b"1e9"]),
)
tags = st.lists(
    st.tuples(
        st.sampled_from([b"tag.site", b"tag.line", b"tag.window", b"tag."]),
        st.sampled_from([b"a", b"plant-7", b"x\ny", b""]),
    ),
    max_size=3,
)


@st.composite
def entry(draw: Any) -> list[Any]:
    ms = draw(st.sampled_from([NOW_MS, NOW_MS + 1, 1, 9_223_372_036_854, 10**17]))
    entry_id = b"%d-%d" % (ms, draw(st.integers(0, 3)))
    kind = draw(st.sampled_from(["fields", "fields", "fields", "json", "odd"]))
    if kind == "json":
        doc = {"device": "dev-1", "metric": "m", "value": draw(st.integers(-5, 5))}
        return [entry_id, [b"json", orjson.dumps(doc)]]
    fields: list[bytes] = [b"device", draw(names)]
    if draw(st.integers(0, 9)):
        fields += [b"metric", draw(names)]
    if draw(st.integers(0, 9)):
        fields += [b"value", draw(numbers)]
    if draw(st.booleans()):
        fields += [b"ts", draw(times)]
    for name, value in draw(tags):
        fields += [name, value]
    if draw(st.integers(0, 9)) == 0:
        fields += [b"device", b"dev-1"]  # repeated
    if draw(st.integers(0, 9)) == 0:
        fields += [b"other", b"ignored"]
    if kind == "odd":
        fields.append(b"dangling")
    order = draw(st.permutations(range(len(fields) // 2)))
    pairs = [fields[2 * i : 2 * i + 2] for i in order]
    return [entry_id, [f for pair in pairs for f in pair] + fields[len(pairs) * 2 :]]


def learned_reader() -> EntryReader:
    """A reader that has seen some names and tags valid (as the bridge's, after a while)."""
    reader = EntryReader(MAX_BYTES, FUTURE_US)
    for fields in (
        [b"device", b"dev-1", b"metric", b"temperature", b"value", b"1"],
        [b"device", b"dev-22", b"metric", b"a.b_c", b"value", b"1", b"tag.site", b"a"],
        [b"device", b"dev-1", b"metric", b"temperature", b"value", b"1", b"tag.site", b"plant-7"],
    ):
        reader.record(b"%d-0" % NOW_MS, fields)
    return reader


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.lists(entry(), max_size=30), st.sampled_from([1_000_000, 400]))
def test_c_encodes_as_the_python_definitions(entries: list[Any], limit: int) -> None:
    in_c = encode_all(c_module, entries, learned_reader(), limit)
    in_python = encode_all(_encode_py, entries, learned_reader(), limit)
    assert in_c == in_python


@settings(max_examples=200, deadline=None)
@given(st.lists(entry(), max_size=30))
def test_batches_read_back_as_the_entries_records(entries: list[Any]) -> None:
    module = c_module if c_module is not None else _encode_py
    buffers, stats, ids, rejected, index = encode_all(module, entries, learned_reader())
    assert index == len(entries)
    assert len(ids) + len(rejected) == len(entries)
    partitioner = DefaultPartitioner()
    every = list(range(PARTITIONS))
    wanted: dict[int, list[tuple[bytes, bytes, int, bytes]]] = {}
    for entry_id, fields in entries:
        if entry_id in rejected and entry_id not in ids:
            continue
        try:
            made = entry_record(entry_id, fields, MAX_BYTES, FUTURE_US)
        except RejectedEntry:
            continue
        partition = partitioner(made.key, every, every)
        wanted.setdefault(partition, []).append((made.key, made.value, made.timestamp_ms, entry_id))
    found: dict[int, list[tuple[bytes, bytes, int, bytes]]] = {}
    for partition in range(PARTITIONS):
        count, first, greatest = stats[3 * partition : 3 * partition + 3]
        if not count:
            assert not buffers[partition]
            continue
        raw = encoding.batch(buffers[partition], count, first, greatest)
        batch = DefaultRecordBatch(raw)
        assert batch.validate_crc()
        assert batch.magic == 2 and batch.compression_type == 0
        assert batch.producer_id == -1
        assert batch.first_timestamp == first and batch.max_timestamp == greatest
        records = list(batch)
        assert [r.offset for r in records] == list(range(count))
        for record in records:
            headers = dict(record.headers)
            assert headers["pulse-stream"] == STREAM and headers["pulse-lease"] == LEASE
            assert record.key is not None and record.value is not None
            found.setdefault(partition, []).append(
                (record.key, record.value, record.timestamp, headers["pulse-entry"])
            )
    assert found == wanted


def test_a_full_partition_stops_the_round() -> None:
    reader = learned_reader()
    fields = [b"device", b"dev-1", b"metric", b"temperature", b"value", b"1.5"]
    entries = [[b"%d-%d" % (NOW_MS, i), fields] for i in range(100)]
    for module in filter(None, (c_module, _encode_py)):
        buffers, _, ids, _, index = encode_all(module, entries, reader, limit=2000)
        assert 0 < index < 100 and len(ids) == index
        size = len(buffers[_encode_py.murmur2_partition(b"dev-1", PARTITIONS)])
        assert encoding.HEADER_SIZE + size <= 2000


# Decimals at the edges of the C encoder's fast path (an integer up to 2**53 over a power of
# ten up to 1e22) and of its range check by digits (290 before the point): the C encoder
# must take or leave each entry as the definition does, with the same ts.
EDGE_DECIMALS = [
    b"9007199254740992",
    b"9007199254740993",
    b"900719925474099.3",
    b"9007199254740993.5",
    b"1796323010.059",
    b"1796323010.0590001",
    b"1796323010.05900000000000000000001",
    b"0.0000000000000000000001",
    b"0.00000000000000000000001",
    b"-0.0",
    b"-0.0000004",
    b"-0.0000006",
    b"1796323010.0000005",
    b"1796323010.0000015",
    b"12345678901234567",
    b"123456789012345678",
    b"1796323010.5e0",
    b"17963230105E-1",
    b"9" * 290,
    b"9" * 291,
    b"9" * 290 + b".9",
    b"1e290",
    b"1.0000000000000001e290",
    b"-1e290",
]


@needs_c
@pytest.mark.parametrize("text", EDGE_DECIMALS)
def test_c_reads_edge_decimals_as_python(text: bytes) -> None:
    base = [b"device", b"dev-1", b"metric", b"temperature"]
    entries = [
        [b"%d-0" % NOW_MS, [*base, b"value", text]],
        [b"%d-1" % NOW_MS, [*base, b"value", b"1", b"ts", text]],
    ]
    # no ts: the entry's time, written as seconds with six decimals and read back
    for ms in (NOW_MS, 1, 9_007_199_254_740, 9_007_199_254_741, 9_223_372_036_854):
        entries.append([b"%d-0" % ms, [*base, b"value", b"2"]])
    for one in entries:
        in_c = encode_all(c_module, [one], learned_reader())
        in_python = encode_all(_encode_py, [one], learned_reader())
        assert in_c == in_python


def test_a_sealed_buffer_is_the_batch() -> None:
    reader = learned_reader()
    fields = [b"device", b"dev-1", b"metric", b"temperature", b"value", b"1.5"]
    entries = [[b"%d-%d" % (NOW_MS, i), fields] for i in range(10)]
    buffers, stats, _, _, _ = encode_all(_encode_py, entries, reader)
    for partition, records in enumerate(buffers):
        count, first, greatest = stats[3 * partition : 3 * partition + 3]
        if count:
            sealed = bytearray(encoding.HEADER_SIZE) + records
            encoding.seal(sealed, count, first, greatest)
            assert bytes(sealed) == encoding.batch(records, count, first, greatest)
            assert DefaultRecordBatch(bytes(sealed)).validate_crc()


def test_an_encoded_produce_request_is_aiokafkas() -> None:
    from aiokafka.protocol.produce import ProduceRequest

    from pulse.bridge._kafka import EncodedProduce

    topics: dict[str, list[tuple[int, bytes | bytearray]]] = {
        "readings": [(0, b"batch-0"), (3, bytearray(b"batch-three"))],
        "dlq": [(1, b"x")],
    }
    listed = [(topic, [(p, bytes(b)) for p, b in batches]) for topic, batches in topics.items()]
    for version in range(3, 8):
        versions = {0: (0, version)}
        ours = EncodedProduce(-1, 30_000, topics).prepare(versions)
        theirs = ProduceRequest(None, -1, 30_000, listed).prepare(versions)
        assert ours.API_VERSION == theirs.API_VERSION == version
        assert ours.encode() == theirs.encode()
        assert ours.RESPONSE_TYPE is theirs.RESPONSE_TYPE
