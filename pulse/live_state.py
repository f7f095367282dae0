"""Reading Pulse's live state back from Redis (for ``pulse state`` and the HTTP API).

The hashes Pulse writes also hold the versions that fence them (a window's ``v``, a device's
``{metric}:v``: pulse/sinks/redis.py); readers here leave those out, so what they show is the
contract's fields only.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from pulse.settings import Settings
from pulse.sinks.redis import RedisKeys


def _number(raw: Any) -> int | float:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return int(text)
    except ValueError:
        return float(text)


def _numbers(mapping: Any) -> dict[str, int | float]:
    """A window's hash as numbers, without its version (field ``v``)."""
    return {_text(key): _number(value) for key, value in mapping.items() if _text(key) != "v"}


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def device_state(client: aioredis.Redis, settings: Settings, device: str) -> dict[str, Any]:
    """``{"device", "latest": {metric: {"value", "ts"}}, "open": {...}, "closed": {...}}``.

    ``open`` and ``closed`` map ``window -> metric -> fields``; windows with no data are left
    out. Everything comes from one pipelined round trip after reading the device hash.
    """
    keys = RedisKeys(settings.redis_prefix)
    raw = await client.hgetall(keys.device(device))
    # Per metric: its value, {metric}:ts and its version {metric}:v (left out).
    fields = {
        name: _number(value)
        for name, value in ((_text(k), v) for k, v in raw.items())
        if not name.endswith(":v")
    }
    metrics = sorted(name for name in fields if not name.endswith(":ts"))
    latest = {m: {"value": fields[m], "ts": fields.get(f"{m}:ts")} for m in metrics}
    labels = [spec.label for spec in settings.windows if spec.kind != "sliding"]
    pipe = client.pipeline(transaction=False)
    wanted = [
        (kind, label, metric)
        for kind in ("open", "closed")
        for label in labels
        for metric in metrics
    ]
    for kind, label, metric in wanted:
        key = (
            keys.open(label, device, metric)
            if kind == "open"
            else keys.closed(label, device, metric)
        )
        pipe.hgetall(key)
    results = await pipe.execute() if wanted else []
    out: dict[str, Any] = {"device": device, "latest": latest, "open": {}, "closed": {}}
    for (kind, label, metric), mapping in zip(wanted, results, strict=True):
        if mapping:
            out[kind].setdefault(label, {})[metric] = _numbers(mapping)
    return out


async def top_devices(
    client: aioredis.Redis, settings: Settings, window: str, metric: str, limit: int = 10
) -> list[tuple[str, float]]:
    """Devices with the highest mean in their latest closed ``window`` of ``metric``."""
    rows: Any = await client.zrevrange(
        RedisKeys(settings.redis_prefix).top(window, metric), 0, limit - 1, withscores=True
    )
    return [(_text(member), float(score)) for member, score in rows]
