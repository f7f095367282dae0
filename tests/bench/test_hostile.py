"""bench.hostile: the hostile corpus interleaved as it says, every record of it rejected."""

from __future__ import annotations

from bench.dataset import DatasetSpec, consumer_records
from bench.hostile import hostile_records, interleaved, run


def test_one_hostile_record_after_every_hundred_clean_ones_each_dead_lettered() -> None:
    spec = DatasetSpec(readings=4_000, devices=100, partitions=4, span_seconds=20)
    clean = consumer_records(spec, "readings")
    mixed, added = interleaved(clean, 100)
    assert added == sum(len(records) // 100 for records in clean.values())
    corpus = hostile_records()
    assert len(corpus) >= 100
    hostile = 0
    for partition, records in mixed.items():
        assert [r.offset for r in records] == list(range(len(records)))
        clean_values = [r.value for r in clean[partition]]
        assert [r.value for i, r in enumerate(records) if i % 101 != 100] == clean_values
        for record in records[100::101]:
            assert (record.key, record.value) == corpus[hostile][:2]
            hostile += 1
    assert hostile == added
    # The clean readings are all applied; each hostile record is a dead letter (the ones
    # that are readings are late: their event times are years before the dataset's).
    assert run(clean, 500)[1] == 0
    assert run(mixed, 500)[1] == added
