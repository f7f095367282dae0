"""The worker's app: what building ``pulse.app:app`` does to the process."""

from __future__ import annotations

import json
import subprocess
import sys

from pulse.app import GC_THRESHOLDS

SHOW_GC = """
import gc, json
before = gc.get_threshold()
import pulse.app
pulse.app.app  # what `pulse worker` and `faust -A pulse.app:app worker` load
print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))
"""


def test_the_worker_app_tunes_the_cyclic_gc_for_a_large_state() -> None:
    # In a process of its own: the thresholds and the freeze are process-wide.
    shown = subprocess.run(
        [sys.executable, "-c", SHOW_GC], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, frozen = json.loads(shown.stdout.splitlines()[-1])
    assert before == [700, 10, 10]
    assert tuple(after) == GC_THRESHOLDS == (20_000, 20, 100)
    assert frozen > 10_000  # the start-up objects (modules, Faust, aiokafka) are frozen
