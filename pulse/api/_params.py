"""Validation of the API's and the CLI's parameters: one definition of each, so that both
answer a bad value with the same message. Each raises :class:`ApiError` (status 400 unless
said) naming the parameter; names are checked against the reading contract's pattern before
they reach Redis."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from models.reading import NAME_PATTERN
from pulse.api._errors import ApiError
from pulse.settings import Settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_INTEGER = re.compile(r"^-?[0-9]{1,12}$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _name(text: str, parameter: str, what: str) -> str:
    if NAME_PATTERN.match(text) is None or text.endswith("\n"):
        raise ApiError(
            400,
            f"{parameter}: {text[:140]!r} is not a {what} name (1-128 of A-Z a-z 0-9 _ . -)",
            parameter,
        )
    return text


def device_name(text: str, parameter: str = "device") -> str:
    return _name(text, parameter, "device")


def metric_name(text: str, parameter: str = "metric") -> str:
    return _name(text, parameter, "metric")


def window_label(
    settings: Settings, text: str, parameter: str = "window", status: int = 400
) -> str:
    """A configured tumbling or hopping window's label (``PULSE_WINDOWS``); ``status`` 404 for
    a window named in the path, where an unknown one is an unknown resource."""
    labels = [spec.label for spec in settings.windows if spec.kind != "sliding"]
    if text not in labels:
        raise ApiError(
            status,
            f"{parameter}: {text[:40]!r} is not a configured window (configured: "
            f"{', '.join(labels)})",
            parameter,
        )
    return text


def time_bound(text: str, parameter: str, now: float) -> float:
    """Epoch seconds from epoch seconds (``1796300000.5``), ISO-8601 (``2026-12-03T14:00:00Z``;
    no zone means UTC) or a duration before ``now`` (``90s``, ``15m``, ``1h``, ``2d``)."""
    text = text.strip()
    duration = _DURATION.match(text)
    if duration:
        return now - float(duration.group(1)) * _UNIT_SECONDS[duration.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value) and 0 <= value < 1e11:
            return value
        raise ApiError(400, f"{parameter}: {text[:40]!r} is out of range", parameter)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            400,
            f"{parameter}: {text[:40]!r} is not a time (epoch seconds, ISO-8601, or a duration "
            "before now such as 15m, 1h, 2d)",
            parameter,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def duration(text: str, parameter: str) -> float:
    """Seconds from a duration such as ``90s``, ``15m``, ``1h``, ``2d``."""
    found = _DURATION.match(text.strip())
    if found is None:
        raise ApiError(
            400, f"{parameter}: {text[:40]!r} is not a duration (90s, 15m, 1h, 2d)", parameter
        )
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def limit(text: str | None, parameter: str, default: int, maximum: int) -> int:
    """A whole number from 1 to ``maximum`` in decimal digits (``default`` when absent)."""
    if text is None:
        return default
    if _INTEGER.match(text) is None:
        raise ApiError(400, f"{parameter}: {text[:40]!r} is not a whole number", parameter)
    value = int(text)
    if not 1 <= value <= maximum:
        raise ApiError(400, f"{parameter}: must be from 1 to {maximum}, not {value}", parameter)
    return value


def choice(text: str | None, parameter: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when absent)."""
    if text is None:
        return choices[0]
    if text not in choices:
        raise ApiError(400, f"{parameter}: must be one of {', '.join(choices)}", parameter)
    return text


def term_name(text: str, parameter: str) -> str:
    """A name of the reading contract's pattern given for ``parameter`` (a search filter)."""
    return _name(text, parameter, parameter)


def site_name(text: str, parameter: str = "site") -> str:
    """A site of the registry: a name of the reading contract's pattern."""
    return _name(text, parameter, "site")


def severity_name(text: str, parameter: str = "severity") -> str:
    """A rule's severity: a name of the reading contract's pattern."""
    return _name(text, parameter, "severity")


def flag(text: str | None, parameter: str) -> bool:
    """``true`` or ``false`` (false when absent)."""
    return choice(text, parameter, ("false", "true")) == "true"


def event_kinds(text: str | None, parameter: str, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of some of ``kinds`` (all of them when absent), in the order of
    ``kinds``."""
    if text is None:
        return kinds
    asked = text.split(",")
    if not asked or any(kind not in kinds for kind in asked):
        wanted = ", ".join(kinds)
        raise ApiError(400, f"{parameter}: one or more of {wanted}, comma-separated", parameter)
    return tuple(kind for kind in kinds if kind in asked)
