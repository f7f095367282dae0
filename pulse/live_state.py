"""Reading Pulse's live state back from Redis (for ``pulse state`` and the HTTP API).

The hashes Pulse writes also hold the versions that fence them (a window's ``v``, a device's
``{metric}:v``: pulse/sinks/redis.py); readers here leave those out, so what they show is the
contract's fields only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson

from pulse.redis_clients import RedisClient
from pulse.settings import Settings
from pulse.sinks.redis import RedisKeys, read_window


def _number(raw: Any) -> int | float:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return int(text)
    except ValueError:
        return float(text)


def _numbers(mapping: Any) -> dict[str, int | float] | None:
    """A window's hash as numbers, without its version (None: no window there)."""
    window = read_window(mapping)
    return None if window is None else {name: _number(text) for name, text in window.items()}


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class KnownMetrics:
    """The metric names each device's hash held when it was last read, for the devices read
    lately (at most ``size``; the least recently read are forgotten). A reader that knows a
    device's metrics reads its windows in the same round trip as its hash: only a guess, what
    the hash holds decides the answer (:func:`device_state`)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._names: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def get(self, device: str) -> tuple[str, ...]:
        names = self._names.get(device)
        if names is None:
            return ()
        self._names.move_to_end(device)
        return names

    def put(self, device: str, names: tuple[str, ...]) -> None:
        self._names[device] = names
        self._names.move_to_end(device)
        if len(self._names) > self.size:
            self._names.popitem(last=False)


def _window_keys(
    settings: Settings, keys: RedisKeys, device: str, metrics: Iterable[str]
) -> dict[tuple[str, str, str], str]:
    """The keys of a device's windows (open and closed per window, or sliding) for
    ``metrics``, by (kind, window label, metric), in the order of the windows, then metrics."""
    out = {}
    for spec in settings.windows:
        for metric in metrics:
            if spec.kind == "sliding":
                out[("sliding", spec.label, metric)] = keys.sliding(spec.label, device, metric)
            else:
                out[("open", spec.label, metric)] = keys.open(spec.label, device, metric)
                out[("closed", spec.label, metric)] = keys.closed(spec.label, device, metric)
    return out


async def device_state(
    client: RedisClient, settings: Settings, device: str, known: KnownMetrics | None = None
) -> dict[str, Any]:
    """``{"device", "latest": {metric: {"value", "ts"}}, "open": {...}, "closed": {...},
    "sliding": {...}}``.

    ``open`` and ``closed`` map ``window -> metric -> fields``, ``sliding`` maps ``size ->
    metric -> fields``; windows with no data are left out, and so are the windows of metrics
    the device hash does not hold. The hash and the windows of the metrics ``known`` names
    for the device are read in one pipelined round trip; the windows of metrics it did not
    name, in a second.
    """
    keys = RedisKeys(settings.redis_prefix)
    guessed = _window_keys(settings, keys, device, known.get(device) if known is not None else ())
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.device(device))
    for key in guessed.values():
        pipe.hgetall(key)
    replies = await pipe.execute()
    latest = _latest(replies[0])
    metrics = sorted(latest)
    if known is not None:
        known.put(device, tuple(metrics))
    found = dict(zip(guessed, replies[1:], strict=True))
    wanted = _window_keys(settings, keys, device, metrics)
    missing = [where for where in wanted if where not in found]
    if missing:
        pipe = client.pipeline(transaction=False)
        for where in missing:
            pipe.hgetall(wanted[where])
        found.update(zip(missing, await pipe.execute(), strict=True))
    out: dict[str, Any] = {
        "device": device,
        "latest": latest,
        "open": {},
        "closed": {},
        "sliding": {},
    }
    for kind, label, metric in wanted:
        window = _numbers(found[(kind, label, metric)])
        if window is not None:
            name = label.removeprefix("sliding:")
            out[kind].setdefault(name, {})[metric] = window
    return out


def _latest(raw: Any) -> dict[str, dict[str, int | float | None]]:
    """A device hash's latest values: ``{metric: {"value", "ts"}}`` by metric name, without
    the versions (``{metric}:v``)."""
    fields = {
        name: _number(value)
        for name, value in ((_text(k), v) for k, v in raw.items())
        if not name.endswith(":v")
    }
    return {
        m: {"value": fields[m], "ts": fields.get(f"{m}:ts")}
        for m in sorted(fields)
        if not m.endswith(":ts")
    }


async def devices_page(
    client: RedisClient,
    settings: Settings,
    prefix: str,
    after: tuple[float, str] | None,
    limit: int,
    scan_limit: int = 10_000,
) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
    """Known devices whose name starts with ``prefix``, most recently seen first (by
    ``P:devices``: last event time, then name, both descending), after the position
    ``after`` (the last one of the previous page), at most ``limit``, each with its latest
    values. Returns the page and the position to continue from (None at the end). At most
    ``scan_limit`` entries are read per call, so a rare prefix answers a short page with a
    position rather than walking the whole index."""
    key = RedisKeys(settings.redis_prefix).devices
    found: list[tuple[str, float]] = []
    top = "+inf" if after is None else repr(after[0])
    chunk = max(limit, 500)
    offset = scanned = 0
    position = after
    exhausted = False
    while len(found) < limit and scanned < scan_limit:
        rows: Any = await client.zrevrangebyscore(
            key, top, "-inf", start=offset, num=chunk, withscores=True
        )
        offset += len(rows)
        last = len(rows) - 1
        for index, (raw_member, raw_score) in enumerate(rows):
            member, score = _text(raw_member), float(raw_score)
            if after is not None and not (
                score < after[0] or (score == after[0] and member < after[1])
            ):
                continue  # at or before the position: the previous pages'
            scanned += 1
            position = (score, member)
            if member.startswith(prefix):
                found.append((member, score))
            if len(found) == limit or scanned >= scan_limit:
                last = index
                break
        if len(rows) < chunk and last == len(rows) - 1:
            exhausted = True
            break
    pipe = client.pipeline(transaction=False)
    keys = RedisKeys(settings.redis_prefix)
    for device, _ in found:
        pipe.hgetall(keys.device(device))
    hashes = await pipe.execute() if found else []
    page = [
        {"device": device, "last_seen": score, "latest": _latest(raw)}
        for (device, score), raw in zip(found, hashes, strict=True)
    ]
    return page, (None if exhausted else position)


async def dead_letters(client: RedisClient, settings: Settings, recent: int = 20) -> dict[str, Any]:
    """``{"by_reason": {reason: count}, "recent": [record, ...]}`` (newest first): the
    dead-letter monitor's keys (agents/dead_letters.py)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(f"{settings.redis_prefix}:dlq:counts")
    pipe.lrange(f"{settings.redis_prefix}:dlq:recent", 0, recent - 1)
    counts, records = await pipe.execute()
    shown = []
    for raw in records:
        try:
            shown.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            shown.append({"unreadable": _text(raw)[:200]})
    return {
        "by_reason": {_text(k): int(v) for k, v in sorted(counts.items())},
        "recent": shown,
    }


async def top_devices(
    client: RedisClient,
    settings: Settings,
    window: str,
    metric: str,
    limit: int = 10,
    descending: bool = True,
) -> list[tuple[str, float]] | None:
    """Devices with the highest (or lowest) mean in their latest closed ``window`` of
    ``metric``; None when no window of that metric has closed (the key does not exist)."""
    key = RedisKeys(settings.redis_prefix).top(window, metric)
    pipe = client.pipeline(transaction=False)
    pipe.exists(key)
    if descending:
        pipe.zrevrange(key, 0, limit - 1, withscores=True)
    else:
        pipe.zrange(key, 0, limit - 1, withscores=True)
    exists, rows = await pipe.execute()
    if not exists:
        return None
    return [(_text(member), float(score)) for member, score in rows]


async def active_alerts(
    client: RedisClient,
    settings: Settings,
    *,
    include_silenced: bool = False,
    device: str | None = None,
    site: str | None = None,
    severity: str | None = None,
) -> list[dict[str, Any]]:
    """The alerts firing now (``P:alerts:active``, pulse/sinks/alerts.py): each one's firing
    transition as the ``alerts`` topic holds it, the most recent first (by end, then rule,
    device, metric, window). Silenced ones only with ``include_silenced``; ``device``,
    ``site`` and ``severity`` keep only the alerts of that device, site or severity. An
    entry that is not a JSON object (not written by Pulse) is left out."""
    raw = await client.hvals(RedisKeys(settings.redis_prefix).alerts_active)
    alerts = []
    for value in raw:
        try:
            alert = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(alert, dict):
            continue
        if (
            (include_silenced or alert.get("silenced") is not True)
            and (device is None or alert.get("device") == device)
            and (site is None or alert.get("site") == site)
            and (severity is None or alert.get("severity") == severity)
        ):
            alerts.append(alert)

    def order(alert: dict[str, Any]) -> tuple[float, list[str]]:
        end = alert.get("end")
        names = [str(alert.get(name) or "") for name in ("rule", "device", "metric", "window")]
        return (-float(end) if isinstance(end, int | float) else 0.0, names)

    return sorted(alerts, key=order)
