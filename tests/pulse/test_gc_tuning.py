"""freeze_startup: what a process made before it is never scanned by a collection again, and
the process's thresholds are set (each in a process of its own: both are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

FREEZE = """
import gc, json
from pulse.gc_tuning import freeze_startup
made = [[n] for n in range(50_000)]  # start-up's objects, tracked by the collector
before = gc.get_freeze_count()
freeze_startup((123_456, 7, 89))
print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(), gc.get_count()[0]]))
"""


def test_startup_objects_are_frozen_and_the_thresholds_set() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", FREEZE], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, thresholds, young = json.loads(shown.stdout.splitlines()[-1])
    assert before == 0
    assert after >= 50_000  # the lists made above, and what the imports made
    assert thresholds == [123_456, 7, 89]
    assert young < 100  # the collection before the freeze left nothing young behind
