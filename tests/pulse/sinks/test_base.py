"""FlushBatch.newest_per_key: what a mirroring lane keeps while Redis is away."""

from __future__ import annotations

from models.outputs import ClosedWindow, DeadLetter, Latest, OpenView
from pulse.sinks._base import FlushBatch, NewestPerKey

S = 1_000_000


def closed(device: str, start_s: int, count: int) -> ClosedWindow:
    return ClosedWindow(device, "t", "10s", start_s * S, (start_s + 10) * S, [count])


def view(device: str, start_s: int, count: int | None) -> OpenView:
    state = None if count is None else [count]
    return OpenView(device, "t", "10s", start_s * S, (start_s + 10) * S, state)


def test_one_entry_per_key_the_newest_and_no_dead_letters() -> None:
    letter = DeadLetter("late", "", "readings", 0, 5, b"k", b"{}", 100)
    first = FlushBatch(
        closed=[closed("a", 0, 3), closed("b", 10, 1)],
        open_views=[view("a", 10, 1), view("b", 20, 2)],
        latest=[Latest("a", "t", 1 * S, 1.0, 7), Latest("a", "u", 1 * S, 5.0, 7)],
        dead_letters=[letter],
        sliding=[view("a", 0, 1)],
    )
    second = FlushBatch(
        # a merged batch may close several windows of a series: the latest start is kept
        closed=[closed("a", 20, 2), closed("a", 10, 4)],
        open_views=[view("a", 20, None)],  # a's series has no open window any more
        latest=[Latest("a", "t", 2 * S, 2.0, 9)],
        sliding=[view("a", 5, 2)],
    )
    folded = FlushBatch.newest_per_key([first, second])
    assert folded == FlushBatch(
        closed=[closed("a", 20, 2), closed("b", 10, 1)],
        open_views=[view("a", 20, None), view("b", 20, 2)],
        latest=[Latest("a", "t", 2 * S, 2.0, 9), Latest("a", "u", 1 * S, 5.0, 7)],
        dead_letters=(),
        sliding=[view("a", 5, 2)],
    )
    # Folding again changes nothing: its size is bounded by the keys.
    assert FlushBatch.newest_per_key([folded, folded]) == folded


def test_folding_one_batch_at_a_time_keeps_the_same_entries() -> None:
    # A mirroring lane folds each flush's batch as it comes (NewestPerKey.add).
    batches = [
        FlushBatch(
            closed=[closed("a", 10 * n, n)],
            open_views=[view("a", 10 * n + 10, n), view(f"d{n % 3}", 0, n)],
            latest=[Latest(f"d{n % 3}", "t", n * S, float(n), n)],
        )
        for n in range(1, 7)
    ]
    folded = NewestPerKey()
    for batch in batches:
        folded.add(batch)
    assert folded.batch() == FlushBatch(
        closed=[closed("a", 60, 6)],
        open_views=[view("a", 70, 6), view("d1", 0, 4), view("d2", 0, 5), view("d0", 0, 6)],
        latest=[
            Latest("d1", "t", 4 * S, 4.0, 4),
            Latest("d2", "t", 5 * S, 5.0, 5),
            Latest("d0", "t", 6 * S, 6.0, 6),
        ],
        dead_letters=(),
        sliding=[],
    )
