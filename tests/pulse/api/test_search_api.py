"""``GET /api/search/{kind}``, ``GET /api/stats/{kind}`` and ``pulse search`` on a real
OpenSearch.

Dead letters, alert transitions and windows of six hours, made by the worker's own types and
indexed by the indexer's sink; every answer is compared with what is computed here from the
same records: the documents newest first (time, then id, descending) page by page through
the cursors, each filter and the full text, and the counts per term and hour (and the mean
of the windows' means per site) of the aggregation endpoint. ``pulse search --json`` prints
the same documents and refuses a bad parameter as the API does; OpenSearch away is a 503.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from models.outputs import DeadLetter
from pulse.local.stack import free_port
from pulse.search.documents import Document, alert_document, dead_letter_document, window_document
from pulse.settings import Settings
from pulse.sinks.search import SearchSink
from tests.helpers.alerts import window_alert
from tests.helpers.api import serving

pytestmark = pytest.mark.integration

HOUR = 3_600_000
BASE = (int(time.time() * 1000) // HOUR - 8) * HOUR
"""The first of the six hours of the dataset (epoch ms), eight hours ago."""
REASONS = ("invalid_json", "invalid_reading", "late", "too_large")
DETAILS = {
    "invalid_json": "not JSON: unexpected character",
    "invalid_reading": "value is not a number",
    "late": "its window closed before it arrived",
    "too_large": "record of 70000 bytes over the limit",
}
SITES = ("plant-a", "plant-b", "plant-c")


def settings_for(prefix: str, search_url: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_SEARCH_URL": search_url,
            "PULSE_SEARCH_PREFIX": prefix,
            "PULSE_SEARCH_REPLICAS": "0",
            "PULSE_SEARCH_RETENTION_DAYS": "0",
            "PULSE_SEARCH_WINDOWS": "1m",
            "PULSE_WINDOWS": "10s,1m",
        }
    )


def dataset(p: str) -> dict[str, list[Document]]:
    rng = random.Random(5)
    letters = []
    for i in range(240):
        reason = rng.choice(REASONS)
        device, site = f"{p}-dev-{rng.randrange(6)}", rng.choice(SITES)
        value = orjson.dumps(
            {"device": device, "metric": "t", "value": "x", "tags": {"site": site}}
        )
        t = BASE + rng.randrange(6 * HOUR)
        letter = DeadLetter(
            reason, DETAILS[reason], "readings", i % 4, i, device.encode(), value, 100_000, t
        )
        letters.append(dead_letter_document(orjson.dumps(letter.document()), 0))
    alerts = []
    for i in range(60):
        rule, device = f"r{i % 4}", f"{p}-dev-{i % 6}"
        k = (BASE + i * 350_000) // 10_000 - 170_000_000  # one every 350 s
        transition = window_alert(
            rule, device, "t", "10s", 10, k, rng.choice(("firing", "resolved")),
            80 + rng.random(), site=SITES[i % 3], severity=rng.choice(("warning", "page")),
        )  # fmt: skip
        alerts.append(alert_document(transition.json()))
    windows = []
    for i in range(150):
        start_ms = BASE + (i * 7 % 360) * 60_000  # (device, start) never twice
        mean = rng.uniform(-50, 50)
        record = orjson.dumps(
            {
                "device": f"{p}-dev-{i % 6}", "metric": "t", "window": "1m",
                "start": start_ms // 1000, "end": start_ms // 1000 + 60, "count": 3,
                "sum": mean * 3, "min": mean - 1, "max": mean + 1, "mean": mean,
                "first": mean, "last": mean, "p50": mean, "p95": mean, "p99": mean,
                "tags": {"site": SITES[i % 3]},
            }
        )  # fmt: skip
        document = window_document(record, {"1m"})
        assert document is not None
        windows.append(document)
    return {"dead-letters": letters, "alerts": alerts, "windows": windows}


async def index(settings: Settings, documents: dict[str, list[Document]]) -> None:
    from opensearchpy import AsyncOpenSearch

    for kind, docs in documents.items():
        sink = SearchSink(settings, kind)
        await sink.start()
        try:
            await sink.write_records(docs, [None] * len(docs))
            assert sink.indexed == len(docs)
        finally:
            await sink.stop()
    client = AsyncOpenSearch(hosts=[settings.search_url])
    try:
        await client.indices.refresh(index=f"{settings.search_prefix}-*")
    finally:
        await client.close()


def newest_first(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: (d["time"], d["id"]), reverse=True)


def sources(documents: list[Document]) -> list[dict[str, Any]]:
    return [orjson.loads(d.source) for d in documents]


@pytest.fixture(scope="module")
def indexed(search_url: str) -> tuple[Settings, dict[str, list[dict[str, Any]]]]:
    prefix = f"apisearch{os.getpid()}"
    settings = settings_for(prefix, search_url)
    documents = dataset(prefix)
    asyncio.run(index(settings, documents))
    return settings, {kind: sources(docs) for kind, docs in documents.items()}


async def _get(settings: Settings, *paths: str) -> list[tuple[int, Any]]:
    out = []
    async with serving(settings) as (url, session):
        for path in paths:
            async with session.get(url + path) as response:
                out.append((response.status, await response.json()))
    return out


def get(settings: Settings, path: str) -> Any:
    ((status, body),) = asyncio.run(_get(settings, path))
    assert status == 200, body
    return body


def test_search_pages_through_every_document_newest_first(
    indexed: tuple[Settings, dict[str, list[dict[str, Any]]]],
) -> None:
    settings, docs = indexed
    for kind in ("dead-letters", "alerts", "windows"):
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = get(
                settings, f"/api/search/{kind}?limit=37" + (f"&cursor={cursor}" if cursor else "")
            )
            assert page["kind"] == kind
            assert (page["total"], page["total_exact"]) == (len(docs[kind]), True)
            seen += page["documents"]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert seen == newest_first(docs[kind]), kind


def test_filters_time_ranges_and_full_text_select_exactly(
    indexed: tuple[Settings, dict[str, list[dict[str, Any]]]],
) -> None:
    settings, docs = indexed
    since, until = BASE + HOUR, BASE + 3 * HOUR
    letters = docs["dead-letters"]
    want = [
        d for d in letters
        if d["reason"] == "late" and d["site"] == "plant-a" and since <= d["time"] < until
    ]  # fmt: skip
    page = get(
        settings,
        f"/api/search/dead-letters?reason=late&site=plant-a&since={since / 1000}"
        f"&until={since / 1000 + 2 * 3600}&limit=500",
    )
    assert want and page["documents"] == newest_first(want)
    # Full text over the detail: "number" is in one reason's detail only.
    page = get(settings, "/api/search/dead-letters?q=number&limit=500")
    assert page["documents"] == newest_first([d for d in letters if "number" in d["detail"]])
    page = get(settings, "/api/search/dead-letters?q=window%20closed&limit=500")
    assert page["documents"] == newest_first([d for d in letters if d["reason"] == "late"])
    alerts = docs["alerts"]
    page = get(settings, "/api/search/alerts?rule=r1&state=firing&limit=500")
    assert page["documents"] == newest_first(
        [d for d in alerts if d["rule"] == "r1" and d["state"] == "firing"]
    )
    windows = docs["windows"]
    page = get(settings, "/api/search/windows?site=plant-b&limit=500")
    assert page["documents"] == newest_first([d for d in windows if d["tags"]["site"] == "plant-b"])


def _stats(
    docs: list[dict[str, Any]], term: Any, since: int, hours: int, value: Any = None
) -> list[dict[str, Any]]:
    """The stats answer's intervals computed here: per hour, counts per term (top 10 by count,
    then key), the others' count, and the mean of ``value`` per term."""
    out = []
    for h in range(hours):
        start = since + h * HOUR
        inside = [d for d in docs if start <= d["time"] < start + HOUR]
        counts = Counter(term(d) for d in inside)
        values = defaultdict(list)
        for d in inside:
            if value is not None:
                values[term(d)].append(value(d))
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        terms = []
        for key, count in top:
            entry: dict[str, Any] = {"key": key, "count": count}
            if value is not None:
                entry["value"] = sum(values[key]) / len(values[key])
            terms.append(entry)
        out.append({
            "start": start / 1000, "count": len(inside), "terms": terms,
            "other": len(inside) - sum(c for _, c in top), "error_bound": 0,
        })  # fmt: skip
    return out


def test_stats_count_per_term_and_hour_as_computed_here(
    indexed: tuple[Settings, dict[str, list[dict[str, Any]]]],
) -> None:
    settings, docs = indexed
    since, until = BASE / 1000, BASE / 1000 + 6 * 3600
    answer = get(
        settings, f"/api/stats/dead-letters?by=reason&interval=1h&since={since}&until={until}"
    )
    assert answer == {
        "kind": "dead-letters", "by": "reason", "interval": 3600, "since": since, "until": until,
        "aggregate": None, "total": len(docs["dead-letters"]),
        "intervals": _stats(docs["dead-letters"], lambda d: d["reason"], BASE, 6),
    }  # fmt: skip
    answer = get(
        settings, f"/api/stats/alerts?by=site&interval=1h&since={since}&until={until}&state=firing"
    )
    firing = [d for d in docs["alerts"] if d["state"] == "firing"]
    assert answer["intervals"] == _stats(firing, lambda d: d["site"], BASE, 6)
    path = f"/api/stats/windows?by=site&interval=1h&since={since}&until={until}"
    answer = get(settings, path)
    # The same question again: OpenSearch 2.19's request cache would refuse its own cached
    # answer of a flat_object aggregation (pulse/api/_search.py keeps stats out of it).
    assert get(settings, path) == answer
    assert answer["aggregate"] == "mean"
    want = _stats(docs["windows"], lambda d: d["tags"]["site"], BASE, 6, lambda d: d["mean"])
    for found, expected in zip(answer["intervals"], want, strict=True):
        values = [t.pop("value") for t in found["terms"]]
        wanted = [t.pop("value") for t in expected["terms"]]
        assert found == expected
        assert values == pytest.approx(wanted, rel=1e-12, abs=1e-9)


def test_bad_parameters_are_named_and_opensearch_away_is_a_503(
    indexed: tuple[Settings, dict[str, list[dict[str, Any]]]],
) -> None:
    settings, _ = indexed
    answers = asyncio.run(
        _get(
            settings,
            "/api/search/readings",
            "/api/search/alerts?reason=late",
            "/api/search/dead-letters?cursor=nope",
            "/api/search/dead-letters?limit=0",
            "/api/stats/dead-letters",
            "/api/stats/dead-letters?by=rule",
            "/api/stats/dead-letters?by=reason&interval=0.5s",
            "/api/stats/alerts?by=rule&aggregate=mean",
            "/api/stats/dead-letters?by=reason&interval=1m&since=2d",
        )
    )
    assert [(status, body.get("parameter")) for status, body in answers[:-1]] == [
        (404, "kind"), (400, "reason"), (400, "cursor"), (400, "limit"), (400, "by"),
        (400, "by"), (400, "interval"), (400, "aggregate"),
    ]  # fmt: skip
    # A range of more than 500 intervals is cut to the latest 500.
    status, body = answers[-1]
    assert status == 200 and body["until"] - body["since"] == 500 * 60
    assert len(body["intervals"]) in (500, 501)
    away = Settings.from_env(
        {**settings.env(), "PULSE_SEARCH_URL": f"http://127.0.0.1:{free_port()}"}
    )
    ((status, body),) = asyncio.run(_get(away, "/api/search/alerts"))
    assert status == 503 and body["error"].startswith("OpenSearch is unavailable")


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.env()}
    return subprocess.run(
        [sys.executable, "-m", "pulse", "search", *args],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_pulse_search_prints_what_the_api_answers(
    indexed: tuple[Settings, dict[str, list[dict[str, Any]]]],
) -> None:
    settings, _ = indexed
    done = _cli(settings, "dead-letters", "--reason", "late", "--limit", "500", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == get(
        settings, "/api/search/dead-letters?reason=late&limit=500"
    )
    since = str(BASE / 1000)
    done = _cli(settings, "alerts", "--by", "rule", "--since", since, "--json")
    assert done.returncode == 0, done.stderr
    found = orjson.loads(done.stdout)
    assert (
        found["intervals"] == get(settings, f"/api/stats/alerts?by=rule&since={since}")["intervals"]
    )
    table = _cli(settings, "dead-letters", "--limit", "3")
    assert table.returncode == 0 and "more: --cursor" in table.stdout, table.stderr
    bad = _cli(settings, "alerts", "--reason", "late")
    assert bad.returncode == 2 and "reason: not a filter of alerts" in bad.stderr
