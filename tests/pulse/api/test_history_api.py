"""``GET /api/history/{device}/{metric}`` and ``pulse history``, on real Redis and
VictoriaMetrics.

A series of 12 windows is in the store (written as the InfluxDB writer writes them), its
newest 5 in Redis (as the history writer writes them). The API, on a free port, must answer
exactly those windows in the range, each with its source; the CLI the same (by then the
older part from the cache); bad parameters a 400 naming them; a store away with nothing in
Redis a 503.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from pulse.history import VictoriaStore
from pulse.local.stack import free_port
from pulse.settings import Settings
from pulse.sinks.history import HistorySink
from tests.helpers.api import serving
from tests.helpers.history import START, closed_window, document, records, write_to_influx

S = START // 1_000_000
LENGTH = 5


def settings_for(prefix: str, redis_url: str, influx_url: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_REDIS_URL": redis_url,
            "PULSE_REDIS_PREFIX": prefix,
            "PULSE_INFLUX_URL": influx_url,
            "PULSE_HISTORY_STORE": "victoria",
            "PULSE_HISTORY_LENGTH": str(LENGTH),
            "PULSE_WINDOWS": "10s,1m,sliding:30s",
        }
    )


def assert_windows(found: list[dict[str, Any]], want: list[tuple[dict[str, Any], str]]) -> None:
    """Each window equal to its document (to 12 significant digits from the store, which
    VictoriaMetrics keeps) and from the named source."""
    assert [(w["start"], w["source"]) for w in found] == [(d["start"], s) for d, s in want]
    for got, (doc, source) in zip(found, want, strict=True):
        assert set(got) == {*doc, "source"}
        for name, value in doc.items():
            if source == "redis":
                assert got[name] == value, name
            else:
                assert got[name] == pytest.approx(value, rel=1e-11, abs=1e-9), name


def test_history_from_redis_and_the_store_by_the_api_and_the_cli(
    redis_url: str, influx_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    device, metric = f"{p}-d", "rt"
    series = [
        closed_window(device, metric, "10s", 10, k, [float(k), k * 1.5 + 0.1]) for k in range(12)
    ]
    docs = [document(w) for w in series]
    settings = settings_for(p, redis_url, influx_url)
    since, until = S + 20, S + 110
    older = [(d, "store") for d in docs[2:7]]
    recent = [(d, "redis") for d in docs[7:11]]

    async def run() -> dict[str, Any]:
        await write_to_influx(influx_url, series)
        sink = HistorySink(redis_url, p, LENGTH, 3600)
        await sink.write_records([sink.read_record(v) for v in records(series)], [None] * 12)
        await sink.stop()
        path = f"/api/history/{device}/{metric}"
        query = {"window": "10s", "since": str(since), "until": str(until)}
        async with serving(settings, VictoriaStore(influx_url)) as (url, http):
            deadline = time.monotonic() + 30
            while True:  # VictoriaMetrics shows a new series about a second after the write
                # Each try a range of its own (an empty answer is cached too); the same windows.
                q = {**query, "since": str(since - (time.monotonic() % 1) / 1e3)}
                async with http.get(f"{url}{path}", params=q) as response:
                    assert response.status == 200, await response.text()
                    body = await response.json()
                if body["sources"]["store"] == 5 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            async with http.get(f"{url}{path}", params=query) as response:
                body = await response.json()
            assert body == {
                "device": device,
                "metric": metric,
                "window": "10s",
                "since": since,
                "until": until,
                "windows": body["windows"],
                "sources": {"redis": 4, "store": 5, "cache": 0},
                "store_error": None,
            }
            assert_windows(body["windows"], older + recent)

            # ISO-8601 and a duration: the same range, or everything Redis holds up to now.
            iso = {**query, "since": "2023-11-14T22:13:40Z", "until": "2023-11-14T22:15:10+00:00"}
            async with http.get(f"{url}{path}", params=iso) as response:
                again = await response.json()
            assert [(w["start"], w["source"]) for w in again["windows"]] == [
                (d["start"], "cache" if s == "store" else s) for d, s in older + recent
            ]

            for params, status, parameter in [
                ({"window": "7s"}, 404, "window"),  # not configured: no such series
                ({"window": "sliding:30s"}, 404, "window"),  # no history
                ({"since": "yesterday"}, 400, "since"),
                ({"until": "soon"}, 400, "until"),
            ]:
                async with http.get(f"{url}{path}", params=params) as response:
                    assert response.status == status, params
                    error = await response.json()
                    assert error["parameter"] == parameter and error["error"], (params, error)
            # since after until: an empty range.
            swapped = {"since": str(until), "until": str(since)}
            async with http.get(f"{url}{path}", params=swapped) as response:
                empty = await response.json()
            assert (empty["windows"], empty["sources"]) == (
                [],
                {"redis": 0, "store": 0, "cache": 0},
            )
            async with http.get(f"{url}/api/history/bad:device/{metric}") as response:
                assert response.status == 400
                assert (await response.json())["parameter"] == "device"
        # The store away and nothing in Redis for the series: nothing to answer.
        away = f"http://127.0.0.1:{free_port()}"
        async with serving(settings, VictoriaStore(away)) as (url, http):
            async with http.get(f"{url}/api/history/{p}-nothing/{metric}") as response:
                assert response.status == 503
                error = await response.json()
                assert error["error"].startswith("the time-series store is unavailable: ")
            # A range read before is still answered whole, from the cache.
            async with http.get(f"{url}{path}", params=query) as response:
                cached = await response.json()
            assert cached["sources"] == {"redis": 4, "store": 0, "cache": 5}
            assert cached["store_error"] is None
            # Another range: what Redis holds, and why the older windows are missing.
            async with http.get(f"{url}{path}", params={**query, "since": str(S + 10)}) as response:
                partial = await response.json()
            assert partial["sources"] == {"redis": 4, "store": 0, "cache": 0}
            assert_windows(partial["windows"], recent)
            assert partial["store_error"].startswith(f"VictoriaMetrics {away}: ")
        return body

    body = asyncio.run(run())

    cli_env = {**os.environ, **settings.env()}
    args = ["--window", "10s", "--since", str(since), "--until", str(until)]
    shown = subprocess.run(
        [sys.executable, "-m", "pulse", "history", device, metric, *args, "--json"],
        env=cli_env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    cli = orjson.loads(shown.stdout)
    assert cli == {
        **body,
        "windows": [
            {**w, "source": "cache" if w["source"] == "store" else w["source"]}
            for w in body["windows"]
        ],
        "sources": {"redis": 4, "store": 0, "cache": 5},
    }
    table = subprocess.run(
        [sys.executable, "-m", "pulse", "history", device, metric, *args],
        env=cli_env,
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    ).stdout.splitlines()
    assert table[0] == (
        f"{device} {metric} 10s: 9 windows from 2023-11-14T22:13:40.000Z to "
        "2023-11-14T22:15:10.000Z"
    )
    assert len(table) == 2 + 9
    last = docs[10]
    assert table[-1].split() == [
        "2023-11-14T22:15:00.000Z",
        "redis",
        str(last["count"]),
        *[f"{last[n]:.6g}" for n in ("mean", "min", "max", "first", "last", "p95")],
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "pulse", "history", "bad:device", metric],
        env=cli_env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ")
