"""``GET /api/alerts``, ``pulse alerts`` and the alert events of ``/api/live``, on real Redis.

The alerts sink writes transitions built with models.alerts.AlertTransition as the alerts
writer does; the API (served as ``pulse api`` serves it) must answer exactly the alerts that
fire, computed here from the transitions (each alert's last transition, the firing ones,
newest first, silenced ones only with ``?all=true``), filtered by device, site and severity;
``pulse alerts --json`` must print the same document and refuse a bad parameter as the API
does; an SSE client must get each transition as ``event: alert`` with its record, beside
the closed windows, and only the kinds it asks for.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from models.alerts import AlertTransition
from pulse.api import _live
from pulse.settings import Settings
from pulse.sinks.alerts import AlertsSink, alert_record
from pulse.sinks.history import HistorySink
from tests.helpers.alerts import absence_alert, window_alert
from tests.helpers.api import serving
from tests.helpers.history import closed_window, records
from tests.pulse.api.test_live_api import SseClient


def transitions(p: str) -> list[AlertTransition]:
    a, b, c = f"{p}-a", f"{p}-b", f"{p}-c"
    return [
        window_alert("hot", a, "t", "10s", 10, 1, "firing", 91.5, site="north"),
        window_alert("hot", a, "t", "10s", 10, 4, "resolved", 60.0, site="north"),
        window_alert("hot", a, "t", "10s", 10, 7, "firing", 95.0, site="north"),
        window_alert("hot", b, "t", "10s", 10, 2, "firing", 85.0, site="south", silenced=True),
        window_alert("cold", b, "t", "1m", 60, 0, "firing", 1.5, severity="page", site="south"),
        absence_alert("quiet", c, "h", "firing", 20, 30, site=None),
        window_alert("low", c, "h", "10s", 10, 3, "firing", -4.0, severity="page", site=None),
        window_alert("low", c, "h", "10s", 10, 5, "resolved", 2.0, severity="page", site=None),
    ]


def firing(sent: list[AlertTransition], **only: Any) -> list[dict[str, Any]]:
    """What /api/alerts answers, from the transitions: each alert's last one, if firing,
    matching ``only`` (silenced ones only with ``silenced=None``), newest end first, then by
    rule, device, metric, window."""
    last: dict[tuple[str, str, str, str], AlertTransition] = {}
    for t in sent:
        last[(t.rule, t.device, t.metric, t.window or "")] = t
    include_silenced = only.pop("silenced", False) is None
    docs = [
        orjson.loads(t.json())
        for t in last.values()
        if t.state == "firing"
        and (include_silenced or not t.silenced)
        and all(getattr(t, name) == value for name, value in only.items())
    ]
    return sorted(
        docs, key=lambda d: (-d["end"], d["rule"], d["device"], d["metric"], d["window"] or "")
    )


async def write_alerts(redis_url: str, prefix: str, sent: list[AlertTransition]) -> None:
    sink = AlertsSink(redis_url, prefix, 3600)
    try:
        found = [alert_record(t.json()) for t in sent]
        await sink.write_records(found, [None] * len(found))
    finally:
        await sink.stop()


def test_the_api_and_the_cli_list_the_alerts_that_fire(redis_url: str, topic_prefix: str) -> None:
    p = topic_prefix
    sent = transitions(p)
    asyncio.run(write_alerts(redis_url, p, sent))
    env = {"PULSE_REDIS_URL": redis_url, "PULSE_REDIS_PREFIX": p}
    settings = Settings.from_env(env)
    # Spelled out: a's second firing, b's cold alert, c's absence; b's hot one is silenced.
    assert [(d["rule"], d["device"]) for d in firing(sent)] == [
        ("hot", f"{p}-a"),  # ends at 80 s
        ("cold", f"{p}-b"),  # 60 s
        ("quiet", f"{p}-c"),  # 50 s
    ]

    async def ask(**query: str) -> tuple[int, Any]:
        async with (
            serving(settings) as (url, http),
            http.get(f"{url}/api/alerts", params=query) as response,
        ):
            return response.status, await response.json()

    def answer(**query: str) -> Any:
        status, body = asyncio.run(ask(**query))
        assert status == 200, body
        return body

    assert answer() == {"alerts": firing(sent)}
    assert answer(all="false") == {"alerts": firing(sent)}
    assert answer(all="true") == {"alerts": firing(sent, silenced=None)}
    assert answer(all="true", device=f"{p}-b") == {
        "alerts": firing(sent, silenced=None, device=f"{p}-b")
    }
    assert answer(site="south") == {"alerts": firing(sent, site="south")}
    assert answer(severity="page") == {"alerts": firing(sent, severity="page")}
    assert answer(severity="page", site="north") == {"alerts": []}
    for query, parameter in (
        ({"all": "yes"}, "all"),
        ({"device": "a:b"}, "device"),
        ({"site": "north pole"}, "site"),
        ({"severity": "x" * 129}, "severity"),
    ):
        status, body = asyncio.run(ask(**query))
        assert (status, body["parameter"]) == (400, parameter), query

    # pulse alerts: the API's document, its validation and messages.
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pulse", "alerts", *args],
            env={**os.environ, **env, "COLUMNS": "200"},  # a wide terminal: rows unwrapped
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args, query in (
        (["--json"], {}),
        (["--json", "--all"], {"all": "true"}),
        (["--json", "--all", "--site", "south"], {"all": "true", "site": "south"}),
        (["--json", "--device", f"{p}-c", "--severity", "page"], {"device": f"{p}-c"}),
    ):
        shown = cli(*args)
        assert shown.returncode == 0, shown.stderr
        want = answer(**query)
        if "--severity" in args:
            want = {"alerts": [d for d in want["alerts"] if d["severity"] == "page"]}
        assert orjson.loads(shown.stdout) == want, args
    bad = cli("--device", "a:b")
    assert bad.returncode == 2
    assert "device: 'a:b' is not a device name" in bad.stderr
    table = cli("--all")
    assert table.returncode == 0, table.stderr
    assert "4 active alerts" in table.stdout
    for doc in firing(sent, silenced=None):
        assert doc["device"] in table.stdout and doc["rule"] in table.stdout
    none = cli("--device", f"{p}-nobody")
    assert (none.returncode, none.stdout) == (0, "no active alerts (silenced ones: --all)\n")


@pytest.fixture
def quick_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_live, "KEEP_ALIVE", 0.5)


@pytest.mark.usefixtures("quick_keep_alive")
def test_the_live_stream_passes_alert_transitions_on_as_alert_events(
    redis_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    sent = transitions(p)
    windows = [closed_window(f"{p}-a", "t", "10s", 10, k, [float(k)]) for k in range(3)]
    settings = Settings.from_env({"PULSE_REDIS_URL": redis_url, "PULSE_REDIS_PREFIX": p})

    async def run() -> None:
        history = HistorySink(redis_url, p, 360, 3600)
        async with serving(settings) as (url, http):
            streams = {
                "all": {"headers": {"Last-Event-ID": "0-0"}},
                "alerts": {"params": {"events": "alert"}, "headers": {"Last-Event-ID": "0-0"}},
                "windows": {"params": {"events": "window"}, "headers": {"Last-Event-ID": "0-0"}},
                "device": {"params": {"device": f"{p}-c"}, "headers": {"Last-Event-ID": "0-0"}},
            }
            # A window, then the alerts, then the other windows, then the alerts again (a
            # replay: no new event).
            await history.write_records([history.read_record(records(windows)[0])], [None])
            await write_alerts(redis_url, p, sent)
            rest = records(windows[1:])
            await history.write_records([history.read_record(v) for v in rest], [None, None])
            await write_alerts(redis_url, p, sent)
            got: dict[str, list[tuple[str, bytes]]] = {}
            for name, options in streams.items():
                async with http.get(f"{url}/api/live", **options) as response:  # type: ignore[arg-type]
                    assert response.status == 200
                    sse = SseClient(response)
                    count = {"all": 11, "alerts": 8, "windows": 3, "device": 3}[name]
                    events = await sse.events(count)
                    got[name] = [(e["event"], e["data"].encode()) for e in events]
                    with pytest.raises(TimeoutError):  # and nothing more
                        await sse.next_event(timeout=1.5)
            async with http.get(f"{url}/api/live", params={"events": "alarm"}) as bad:
                assert bad.status == 400
                assert (await bad.json())["parameter"] == "events"
        await history.stop()
        window_events = [("window", v) for v in records(windows)]
        alert_events = [("alert", t.json()) for t in sent]
        assert got["all"] == window_events[:1] + alert_events + window_events[1:]
        assert got["alerts"] == alert_events
        assert got["windows"] == window_events
        assert got["device"] == [e for e in alert_events if f'"{p}-c"'.encode() in e[1]]

    asyncio.run(run())
