"""Window definitions and window math, in integer microseconds of event time.

Pure: no I/O. Event time is carried as integer microseconds since the epoch so that window
assignment is exact (a float ``ts`` of ``1795315444.3`` would otherwise fall on either side of
a 100 ms boundary depending on rounding).

Tumbling window of size S (epoch-aligned)::

    event time  ──0─────────S─────────2S────────3S──▶
    windows       [ w0     )[ w1     )[ w2     )
    a reading at t belongs to [k*S, (k+1)*S) with k = floor(t / S)

Hopping window SIZE/STEP: windows ``[k*STEP, k*STEP + SIZE)`` for every k, so a reading belongs
to ``SIZE / STEP`` windows (rounded up when STEP does not divide SIZE)::

    SIZE=3, STEP=1   t=4.5
    [2,5) [3,6) [4,7) contain t; [1,4) and [5,8) do not
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

US_PER_SECOND = 1_000_000

_UNITS_US = {
    "ms": 1_000,
    "s": US_PER_SECOND,
    "m": 60 * US_PER_SECOND,
    "h": 3600 * US_PER_SECOND,
    "d": 86400 * US_PER_SECOND,
}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")

WindowKind = Literal["tumbling", "hopping", "sliding"]


class WindowSpecError(ValueError):
    """A window specification that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One configured window: its label as written, and its size and step in microseconds."""

    label: str
    kind: WindowKind
    size_us: int
    step_us: int

    def starts_containing(self, t_us: int) -> range:
        """Starts of the windows of this spec that contain event time ``t_us``, oldest first.

        Windows are half-open ``[start, start + size)``.
        """
        step = self.step_us
        last = t_us // step * step
        # The oldest window containing t starts after t - size.
        first = (t_us - self.size_us) // step * step + step
        return range(first, last + 1, step)


def parse_duration_us(text: str) -> int:
    """``"10s"`` -> 10_000_000. Units: ms, s, m, h, d; a whole positive number."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise WindowSpecError(
            f"{text!r} is not a duration: write a whole number and a unit (ms, s, m, h, d), "
            "e.g. 10s or 5m"
        )
    amount = int(match.group(1))
    if amount == 0:
        raise WindowSpecError(f"{text!r}: a window size or step must be greater than zero")
    return amount * _UNITS_US[match.group(2)]


def parse_window_spec(text: str) -> WindowSpec:
    """Parse one spec: ``10s`` (tumbling), ``5m/1m`` (hopping), ``sliding:1m`` (sliding)."""
    label = text.strip()
    if not label:
        raise WindowSpecError("empty window specification")
    if label.startswith("sliding:"):
        size = parse_duration_us(label.removeprefix("sliding:"))
        return WindowSpec(label=label, kind="sliding", size_us=size, step_us=size)
    if "/" in label:
        size_text, _, step_text = label.partition("/")
        size = parse_duration_us(size_text)
        step = parse_duration_us(step_text)
        if step > size:
            raise WindowSpecError(
                f"{label!r}: the step ({step_text}) is larger than the size ({size_text}), "
                "so some readings would belong to no window"
            )
        if step == size:
            return WindowSpec(label=label, kind="tumbling", size_us=size, step_us=size)
        return WindowSpec(label=label, kind="hopping", size_us=size, step_us=step)
    size = parse_duration_us(label)
    return WindowSpec(label=label, kind="tumbling", size_us=size, step_us=size)


def parse_windows(text: str) -> tuple[WindowSpec, ...]:
    """Parse a comma-separated list of window specs, rejecting duplicates."""
    specs = tuple(parse_window_spec(part) for part in text.split(","))
    seen: dict[tuple[str, int, int], str] = {}
    for spec in specs:
        identity = (spec.kind, spec.size_us, spec.step_us)
        if identity in seen:
            raise WindowSpecError(
                f"{spec.label!r} repeats the window {seen[identity]!r}: each window once"
            )
        seen[identity] = spec.label
    return specs
