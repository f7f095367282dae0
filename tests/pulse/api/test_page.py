"""The live page in a real browser: Debian's Chromium, headless, driven by Playwright, against
a real worker that serves the API (``PULSE_WORKER_SERVES_API=true``) while readings stamped
with the wall clock flow through it.

What a person at the wall screen sees is checked against what Redis holds (read here with
redis-py) and, for a window that closes while the page is open, against the independent
reference (tests/reference.py): the numbers, a new closed window arriving without a reload,
the device search, the sign-in with ``PULSE_API_TOKEN``, the active alerts following the
transitions the worker's alerts writer reads from its alerts topic, and no sideways
scrolling on a 390x844 phone. Screenshots of each step are kept in
``test-artifacts/page/{test}/`` in the repository (ignored by git), replaced by each run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaProducer

from models.alerts import AlertTransition
from tests.helpers import kafka
from tests.helpers.alerts import absence_alert, alert_of, window_alert
from tests.helpers.redis_windows import window_text
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import pipeline_env
from tests.reference import Expected, Record, Valid, assert_window_fields, compute

# Playwright's package never fetches a browser of its own here: it drives Debian's.
os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
from playwright.sync_api import Browser, Page, sync_playwright

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WINDOWS = "2s,10s,sliding:10s"
WINDOWS_US: dict[str, int | tuple[int, int]] = {"2s": 2_000_000, "10s": 10_000_000}
SLIDING_US = {"sliding:10s": 10_000_000}
GRACE = 0.5
METRICS = ("temperature", "humidity")
PERIOD = 0.25
"""Seconds between two readings of each device and metric."""
FIELDS = ("count", "mean", "min", "max", "p50", "p95", "p99", "first", "last")


def devices_of(prefix: str) -> list[str]:
    return [f"{prefix}-north-1", f"{prefix}-north-2", f"{prefix}-south-1", f"{prefix}-west-1"]


# ---- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed (scripts/setup installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    folder = ROOT / "test-artifacts" / "page" / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def watch_errors(page: Page) -> list[str]:
    """Every error the page's scripts raise or log, and every policy violation."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on(
        "console",
        lambda message: (
            errors.append(f"console: {message.text}")
            if message.type == "error" and "401" not in message.text
            else None
        ),
    )
    return errors


def run_apart(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Runs ``coroutine`` to its end on a thread of its own: Playwright's sync API keeps an
    event loop running on the test's thread, where ``asyncio.run`` cannot start another."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coroutine)))
    thread.start()
    thread.join(60)
    assert result, "the coroutine failed or did not finish (see the thread's exception above)"
    return result[0]


def poll(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ---- readings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    reading: Valid


class LiveProducer:
    """Each device's readings of each metric every :data:`PERIOD` seconds, stamped with the
    wall clock, from a thread; :meth:`hold` stops it. A few records that break the contract
    go first, so that the dead letters have counts. Every acknowledged reading is kept with
    its partition and offset, for the reference."""

    INVALID = ((b"{not json", "invalid_json"), (b'{"device": 5}', "invalid_reading"))

    def __init__(self, broker: str, topic: str, devices: list[str]) -> None:
        self.broker = broker
        self.topic = topic
        self.devices = devices
        self.sent: list[Sent] = []
        self.dead_letters = {"invalid_json": 3, "invalid_reading": 2}
        self.error: BaseException | None = None
        self._go = threading.Event()
        self._go.set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="live-producer", daemon=True)

    def start(self) -> LiveProducer:
        self._thread.start()
        return self

    def hold(self) -> None:
        self._go.clear()

    def close(self) -> None:
        self._stop = True
        self._go.set()
        self._thread.join(10)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"producer failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:
            self.error = exc

    @staticmethod
    def value(device_index: int, metric_index: int, tick: int) -> float:
        """Quarters (exact in binary), different per device, metric and tick."""
        return 20.0 * metric_index + device_index + ((tick * 7 + device_index * 3) % 20) / 4

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap(self.broker), acks="all")
        await producer.start()
        try:
            key = self.devices[0].encode()
            for invalid, reason in self.INVALID:
                for _ in range(self.dead_letters[reason]):
                    await producer.send_and_wait(self.topic, value=invalid, key=key)
            tick = 0
            while not self._stop:
                if not self._go.is_set():
                    await asyncio.sleep(0.05)
                    continue
                ts = round(time.time(), 3)
                for d, device in enumerate(self.devices):
                    for m, metric in enumerate(METRICS):
                        value = self.value(d, m, tick)
                        tags = {"site": device.rsplit("-", 2)[-2]}
                        doc = {"device": device, "metric": metric, "value": value, "ts": ts}
                        meta = await producer.send_and_wait(
                            self.topic,
                            value=json.dumps({**doc, "tags": tags}).encode(),
                            key=device.encode(),
                        )
                        reading = Valid(device, metric, value, round(ts * 1_000_000), tags)
                        self.sent.append(Sent(meta.partition, meta.offset, reading))
                tick += 1
                await asyncio.sleep(max(0.0, ts + PERIOD - time.time()))
        finally:
            await producer.stop()


# ---- what the page shows ---------------------------------------------------------------------

PAGE_NUMBERS = """() => {
  const cell = (node) => [Number(node.dataset.value), node.textContent];
  const devices = {};
  for (const item of document.querySelectorAll("#devices li[data-device]")) {
    const latest = {};
    for (const span of item.querySelectorAll(".latest [data-metric]")) {
      latest[span.dataset.metric] = cell(span.querySelector("[data-value]"));
    }
    devices[item.dataset.device] = latest;
  }
  const rows = {};
  for (const row of document.querySelectorAll("#windows tbody tr")) {
    const fields = {};
    for (const td of row.querySelectorAll("td.num[data-field][data-value]")) {
      fields[td.dataset.field] = cell(td);
    }
    rows[[row.dataset.metric, row.dataset.kind, row.dataset.window || ""].join("|")] = fields;
  }
  const top = [...document.querySelectorAll("#top tbody tr[data-device]")].map(
    (row) => [row.dataset.device, ...cell(row.querySelector("td[data-field=mean]"))]);
  const deadLetters = {};
  for (const row of document.querySelectorAll("#dead-letters tr[data-reason]")) {
    deadLetters[row.dataset.reason] = cell(row.querySelector("td[data-field=count]"));
  }
  return {devices, rows, top, deadLetters,
          topWindow: document.querySelector("#top").dataset.window,
          topMetric: document.querySelector("#top").dataset.metric};
}"""


def shown(value: float) -> str:
    """The page's text for a number: rounded half away from zero to three decimals of its
    shortest decimal form, trailing zeros dropped (Intl.NumberFormat, maximumFractionDigits
    3, without grouping)."""
    rounded = Decimal(repr(float(value))).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)
    text = format(rounded, "f").rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _number(raw: bytes) -> float:
    return float(raw.decode())


def redis_numbers(client: redis.Redis, prefix: str, devices: list[str], device: str) -> dict:
    """What the page should show, read from Redis: each device's latest values, the selected
    device's closed and sliding windows (no window is open once the readings stop), the top
    board of 2s temperature and the dead-letter counts."""
    latest = {}
    for name in devices:
        held: dict[bytes, bytes] = client.hgetall(f"{prefix}:device:{name}")  # type: ignore[assignment]
        latest[name] = {m: _number(held[m.encode()]) for m in METRICS}
    rows: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        rows[f"{metric}|latest|"] = {"value": latest[device][metric]}
        for label in WINDOWS_US:
            window = window_text(client.hgetall(f"{prefix}:closed:{label}:{device}:{metric}"))
            rows[f"{metric}|closed|{label}"] = {
                f: _number(window[f].encode()) for f in FIELDS if window is not None
            }
            assert not client.exists(f"{prefix}:open:{label}:{device}:{metric}")
        for label in SLIDING_US:
            key = f"{prefix}:sliding:{label.removeprefix('sliding:')}:{device}:{metric}"
            window = window_text(client.hgetall(key))
            rows[f"{metric}|sliding|{label.removeprefix('sliding:')}"] = {
                f: _number(window[f].encode()) for f in FIELDS if window is not None
            }
    ranked: list[tuple[bytes, float]] = client.zrevrange(  # type: ignore[assignment]
        f"{prefix}:top:2s:temperature", 0, 9, withscores=True
    )
    counts: dict[bytes, bytes] = client.hgetall(f"{prefix}:dlq:counts")  # type: ignore[assignment]
    return {
        "devices": latest,
        "rows": rows,
        "top": [(member.decode(), score) for member, score in ranked],
        "deadLetters": {k.decode(): int(v) for k, v in counts.items()},
    }


def page_matches(found: dict, want: dict) -> list[str]:
    """The differences between what the page shows and Redis (empty: none), numbers compared
    exactly and their text as the page rounds it."""
    problems: list[str] = []

    def same(where: str, cell: list[Any], value: float) -> None:
        number, text = cell
        if number != value or text != shown(value):
            problems.append(f"{where}: page {number!r} {text!r}, Redis {value!r}")

    if set(found["devices"]) != set(want["devices"]):
        problems.append(
            f"devices: page {sorted(found['devices'])}, Redis {sorted(want['devices'])}"
        )
    for device, metrics in want["devices"].items():
        for metric, value in metrics.items():
            cell = found["devices"].get(device, {}).get(metric)
            if cell is None:
                problems.append(f"{device} {metric}: not shown")
            else:
                same(f"{device} {metric}", cell, value)
    if set(found["rows"]) != set(want["rows"]):
        problems.append(f"rows: page {sorted(found['rows'])}, Redis {sorted(want['rows'])}")
    for row, fields in want["rows"].items():
        page_fields = found["rows"].get(row, {})
        if set(page_fields) != set(fields):
            problems.append(f"{row}: page fields {sorted(page_fields)}, Redis {sorted(fields)}")
        for name, value in fields.items():
            if name in page_fields:
                same(f"{row} {name}", page_fields[name], value)
    if (found["topWindow"], found["topMetric"]) != ("2s", "temperature"):
        problems.append(f"top board of {found['topWindow']} {found['topMetric']}")
    if [row[0] for row in found["top"]] != [device for device, _ in want["top"]]:
        problems.append(f"top: page {found['top']}, Redis {want['top']}")
    for row, (device, mean) in zip(found["top"], want["top"], strict=False):
        same(f"top {device}", row[1:], mean)
    if set(found["deadLetters"]) != set(want["deadLetters"]):
        problems.append(f"dead letters: page {found['deadLetters']}, Redis {want['deadLetters']}")
    for reason, count in want["deadLetters"].items():
        if reason in found["deadLetters"]:
            same(f"dead letters {reason}", found["deadLetters"][reason], count)
    return problems


def chart_last(page: Page, metric: str) -> dict[str, Any]:
    """The chart of ``metric``: its point count and its 'last closed' line."""
    return page.evaluate(
        """(metric) => {
          const chart = document.querySelector(`#charts .chart[data-metric="${metric}"]`);
          if (!chart) return null;
          const last = chart.querySelector(".last");
          return {points: Number(chart.dataset.points), window: chart.dataset.window,
                  canvas: chart.querySelector("canvas") !== null,
                  start: Number(last.dataset.start), end: Number(last.dataset.end),
                  mean: Number(last.dataset.mean), text: last.textContent};
        }""",
        metric,
    )


def listed(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#devices li[data-device]", "(items) => items.map((i) => i.dataset.device)"
    )


# ---- the worker ------------------------------------------------------------------------------


def page_env(prefix: str, broker: str, redis_url: str, influx_url: str) -> dict[str, str]:
    env = pipeline_env(prefix, broker, redis_url, influx_url)
    env.update(
        PULSE_WINDOWS=WINDOWS,
        PULSE_GRACE=str(GRACE),
        PULSE_CLOSE_SPREAD="0",
        PULSE_IDLE_CLOSE="2",
        PULSE_PARTITIONS="2",
        PULSE_WORKER_SERVES_API="true",
        PULSE_HISTORY_STORE="victoria",
    )
    return env


@pytest.fixture
def live(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., tuple[WorkerProcess, LiveProducer, dict[str, str]]]]:
    """Starts a worker serving the API (with the extra ``PULSE_*`` given) and the producer."""
    started: list[tuple[WorkerProcess, LiveProducer]] = []

    def start(**extra: str) -> tuple[WorkerProcess, LiveProducer, dict[str, str]]:
        env = {**page_env(topic_prefix, broker, redis_url, influx_url), **extra}
        run_apart(kafka.create_topics(broker, {env["PULSE_TOPIC_READINGS"]: 2}))
        worker = WorkerProcess(env, tmp_path).start()
        producer = LiveProducer(broker, env["PULSE_TOPIC_READINGS"], devices_of(topic_prefix))
        started.append((worker, producer))
        worker.wait_ready()
        producer.start()
        return worker, producer, env

    yield start
    for worker, producer in started:
        producer.close()
        worker.stop()


def reference(producer: LiveProducer) -> Expected:
    """The reference's outputs for the readings acknowledged so far."""
    records = [Record(s.partition, s.offset, s.reading) for s in list(producer.sent)]
    return compute(records, WINDOWS_US, int(GRACE * 1_000_000), SLIDING_US)


def wait_for_history(client: redis.Redis, prefix: str, device: str, windows: int) -> None:
    key = f"{prefix}:history:2s:{device}:temperature"
    poll(lambda: client.zcard(key) >= windows, f"{windows} closed 2s windows in {key}", 30)


def assert_files_served(base: str) -> None:
    """The page and its files need no token, carry their content type and a validator, and
    a copy the browser holds is confirmed without a body; no other path is served."""
    types = {
        "/": "text/html; charset=utf-8",
        "/static/app.js": "text/javascript; charset=utf-8",
        "/static/app.css": "text/css; charset=utf-8",
        "/static/vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
        "/static/vendor/uPlot.min.css": "text/css; charset=utf-8",
        "/static/vendor/uPlot.LICENSE": "text/plain; charset=utf-8",
    }
    for path, content_type in types.items():
        with urllib.request.urlopen(base + path, timeout=5) as response:
            body = response.read()
            assert response.headers["Content-Type"] == content_type, path
            assert response.headers["Cache-Control"] == "no-cache", path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
            etag = response.headers["ETag"]
            if path == "/":
                assert "default-src 'none'" in response.headers["Content-Security-Policy"]
                assert b'<script src="static/app.js"></script>' in body
        again = urllib.request.Request(base + path, headers={"If-None-Match": etag})
        with pytest.raises(urllib.error.HTTPError) as unchanged:
            urllib.request.urlopen(again, timeout=5)
        assert (unchanged.value.code, unchanged.value.read()) == (304, b""), path
    for path in ("/static/index.html", "/static/nothing.js", "/static/../../pyproject.toml"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + path, timeout=5)
        assert missing.value.code == 404, path


# ---- the tests -------------------------------------------------------------------------------


def test_the_page_shows_what_redis_holds_and_follows_the_stream(
    live: Callable[..., tuple[WorkerProcess, LiveProducer, dict[str, str]]],
    browser: Browser,
    redis_url: str,
    topic_prefix: str,
    artifacts: Path,
) -> None:
    worker, producer, _ = live()
    devices = devices_of(topic_prefix)
    device = devices[0]
    client = redis.Redis.from_url(redis_url)
    wait_for_history(client, topic_prefix, device, 2)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = watch_errors(page)
    page.goto(f"http://127.0.0.1:{worker.port}/#device={device}")
    poll(lambda: sorted(listed(page)) == sorted(devices), "every device listed")
    page.select_option("#chart-window", "2s")
    page.select_option("#top-window", "2s")
    page.select_option("#top-metric", "temperature")
    poll(
        lambda: (c := chart_last(page, "temperature")) and c["points"] >= 2 and c["canvas"],
        "a chart of two windows",
    )
    page.screenshot(path=artifacts / "1-loaded.png", full_page=True)

    # A new closed window arrives over /api/live and is drawn without a reload.
    page.evaluate("window.__sameDocument = true")
    before = chart_last(page, "temperature")
    after = poll(
        lambda: (c := chart_last(page, "temperature"))["points"] > before["points"] and c,
        "a new closed window on the chart",
    )
    assert after["points"] == before["points"] + 1
    assert (after["start"], after["end"]) == (before["start"] + 2, before["end"] + 2)
    assert page.evaluate("window.__sameDocument") is True
    held: list[bytes] = client.zrangebyscore(  # type: ignore[assignment]
        f"{topic_prefix}:history:2s:{device}:temperature", after["start"], after["start"]
    )
    assert len(held) == 1
    window = json.loads(held[0])
    assert after["mean"] == window["mean"]
    # Closed: every reading of it was produced before, so the reference knows it whole.
    expected = reference(producer)
    agg = expected.windows[(device, "temperature", "2s", int(after["start"]) * 1_000_000)]
    assert_window_fields({f: window[f] for f in FIELDS}, {f: agg[f] for f in FIELDS}, window)
    assert after["text"].endswith(
        f": mean {shown(window['mean'])}, min {shown(window['min'])}, max {shown(window['max'])}"
    )
    page.screenshot(path=artifacts / "2-new-window.png", full_page=True)

    # The search narrows the list to exactly the devices whose id starts with it.
    page.fill("#search", f"{topic_prefix}-north")
    poll(lambda: sorted(listed(page)) == devices[:2], "the north devices only")
    assert page.text_content("#devices-note") == "2 devices"
    page.screenshot(path=artifacts / "3-search.png", full_page=True)
    page.fill("#search", f"{topic_prefix}-so")
    poll(lambda: listed(page) == [devices[2]], "the south device only")
    page.fill("#search", "")
    poll(lambda: sorted(listed(page)) == sorted(devices), "every device again")

    # The readings stop: once idle close has closed every window and the page has read the
    # API again, every number it shows equals Redis's.
    producer.hold()
    producer.check()

    def settled() -> list[str] | None:
        if any(client.scan_iter(f"{topic_prefix}:open:*")):
            return ["windows still open"]
        want = redis_numbers(client, topic_prefix, devices, device)
        problems = page_matches(page.evaluate(PAGE_NUMBERS), want)
        return problems or None

    deadline = time.monotonic() + 30
    while (problems := settled()) and time.monotonic() < deadline:
        time.sleep(0.5)
    page.screenshot(path=artifacts / "4-settled.png", full_page=True)
    assert not problems, "\n".join(problems)
    # Redis's content is the reference's: the engine was exact on what the page shows.
    expected = reference(producer)
    for metric in METRICS:
        newest = max(s for d, m, w, s in expected.windows if (d, m, w) == (device, metric, "2s"))
        agg = expected.windows[(device, metric, "2s", newest)]
        row = page.evaluate(PAGE_NUMBERS)["rows"][f"{metric}|closed|2s"]
        assert_window_fields(
            {f: row[f][0] for f in FIELDS}, {f: agg[f] for f in FIELDS}, (device, metric)
        )
    assert producer.dead_letters == {
        k: v[0] for k, v in page.evaluate(PAGE_NUMBERS)["deadLetters"].items()
    }
    assert errors == []

    # A phone: nothing scrolls sideways.
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone_errors = watch_errors(phone)
    phone.goto(f"http://127.0.0.1:{worker.port}/#device={device}")
    poll(lambda: (c := chart_last(phone, "temperature")) and c["canvas"], "a chart on the phone")
    poll(lambda: len(listed(phone)) == len(devices), "the devices on the phone")
    poll(
        lambda: len(phone.query_selector_all("#top tbody tr[data-device]")) == len(devices),
        "the top board on the phone",
    )
    phone.screenshot(path=artifacts / "5-phone.png", full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert phone.evaluate("document.body.scrollWidth") <= 390
    assert phone_errors == []
    phone.close()
    page.close()
    client.close()


def test_the_page_signs_in_when_the_api_needs_a_token(
    live: Callable[..., tuple[WorkerProcess, LiveProducer, dict[str, str]]],
    browser: Browser,
    redis_url: str,
    topic_prefix: str,
    artifacts: Path,
) -> None:
    token = secrets.token_urlsafe(24)
    worker, _, _ = live(PULSE_API_TOKEN=token)
    devices = devices_of(topic_prefix)
    client = redis.Redis.from_url(redis_url)
    wait_for_history(client, topic_prefix, devices[0], 1)
    base = f"http://127.0.0.1:{worker.port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/devices", timeout=5)
    assert refused.value.code == 401
    assert_files_served(base)

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(base + "/")  # the page itself needs no token
    page.wait_for_selector("#signin", state="visible")
    assert page.is_hidden("#app")
    page.screenshot(path=artifacts / "1-sign-in.png", full_page=True)

    page.fill("#token", token + "x")
    page.click("#signin button")
    poll(lambda: page.text_content("#signin-error") == "That token is not the API's.", "a refusal")
    assert page.is_hidden("#app")

    page.fill("#token", token)
    page.click("#signin button")
    page.wait_for_selector("#app", state="visible")
    poll(lambda: sorted(listed(page)) == sorted(devices), "every device listed")
    first = poll(lambda: (c := chart_last(page, "temperature")) and c["points"] >= 1 and c, "chart")
    # Live events come through the cookie too (EventSource sends no header).
    poll(lambda: chart_last(page, "temperature")["points"] > first["points"], "a live window")
    page.screenshot(path=artifacts / "2-signed-in.png", full_page=True)

    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "pulse_session",
        True,
        "Strict",
    )
    assert token not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    assert errors == []
    context.close()
    client.close()


ALERT_ROWS = """() => [...document.querySelectorAll("#alerts tbody tr[data-alert]")].map((row) => ({
  alert: row.dataset.alert, device: row.dataset.device, severity: row.dataset.severity,
  silenced: row.dataset.silenced === "true", end: Number(row.dataset.end),
  value: ((v) => v === undefined ? null : Number(v))(
    row.querySelector("td[data-field=value]").dataset.value),
  threshold: Number(row.querySelector("td[data-field=threshold]").dataset.value),
}))"""


def alert_rows(client: redis.Redis, prefix: str, silenced: bool) -> list[dict[str, Any]]:
    """What the alerts table should show, read from Redis's active alerts: each alert's
    firing transition, silenced ones only when asked, the most recent first."""
    held: dict[bytes, bytes] = client.hgetall(f"{prefix}:alerts:active")  # type: ignore[assignment]
    rows = []
    for field, value in held.items():
        doc = json.loads(value)
        if doc["silenced"] and not silenced:
            continue
        rows.append(
            {
                "alert": field.decode(),
                "device": doc["device"],
                "severity": doc["severity"],
                "silenced": doc["silenced"],
                "end": doc["end"],
                "value": doc["value"],
                "threshold": doc["threshold"],
            }
        )
    return sorted(
        rows,
        key=lambda r: (-r["end"], *r["alert"].split(":")),  # end, rule, device, ...
    )


def test_the_page_shows_the_active_alerts_and_follows_their_events(
    live: Callable[..., tuple[WorkerProcess, LiveProducer, dict[str, str]]],
    browser: Browser,
    redis_url: str,
    topic_prefix: str,
    artifacts: Path,
) -> None:
    worker, _, env = live()
    devices = devices_of(topic_prefix)
    topic = env["PULSE_TOPIC_ALERTS"]
    client = redis.Redis.from_url(redis_url)

    def send(*transitions: AlertTransition) -> None:
        """Transitions into the worker's alerts topic, as its flush writes them; its alerts
        writer takes them into Redis."""
        records: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
            (None, t.device.encode(), t.json(), None) for t in transitions
        ]
        run_apart(kafka.produce(worker.env["PULSE_BROKER"], topic, records))

    def active() -> set[str]:
        return {f.decode() for f in client.hkeys(f"{topic_prefix}:alerts:active")}  # type: ignore[union-attr]

    hot = window_alert("hot", devices[0], "temperature", "2s", 2, 1, "firing", 29.5)
    quiet = absence_alert("quiet", devices[2], "humidity", "firing", 3, 30, site="south")
    send(hot, quiet)
    poll(lambda: active() == {alert_of(hot), alert_of(quiet)}, "two alerts in Redis")
    for device in devices:  # closed windows to chart and rank (else the page meets 404s)
        wait_for_history(client, topic_prefix, device, 1)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = watch_errors(page)
    page.goto(f"http://127.0.0.1:{worker.port}/")
    poll(
        lambda: page.evaluate(ALERT_ROWS) == alert_rows(client, topic_prefix, False),
        "the two alerts shown",
    )
    assert page.text_content("#alerts-count") == "(2)"
    page.screenshot(path=artifacts / "1-alerts.png", full_page=True)

    # Transitions arrive over /api/live: shown without a reload, as Redis then holds them.
    page.evaluate("window.__sameDocument = true")
    muted = window_alert(
        "hot", devices[1], "temperature", "2s", 2, 2, "firing", 31.0, silenced=True
    )
    cold = window_alert(
        "cold", devices[3], "humidity", "10s", 10, 1, "firing", -2.25, severity="page"
    )
    hot_resolved = window_alert("hot", devices[0], "temperature", "2s", 2, 4, "resolved", 20.0)
    send(muted, cold, hot_resolved)
    poll(lambda: active() == {alert_of(t) for t in (quiet, muted, cold)}, "the alerts in Redis")
    want = alert_rows(client, topic_prefix, False)
    assert [row["alert"] for row in want] == [alert_of(quiet), alert_of(cold)]  # ends 33, 20 s
    poll(lambda: page.evaluate(ALERT_ROWS) == want, "the new alert, the resolved one gone")
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=artifacts / "2-alert-events.png", full_page=True)

    # Silenced ones on request; a click on an alert selects its device.
    page.check("#alerts-all")
    poll(
        lambda: page.evaluate(ALERT_ROWS) == alert_rows(client, topic_prefix, True),
        "the silenced alert too",
    )
    assert page.text_content("#alerts-count") == "(3)"
    quiet_resolved = absence_alert("quiet", devices[2], "humidity", "resolved", 40, 30)
    send(quiet_resolved)
    poll(
        lambda: (
            page.evaluate(ALERT_ROWS) == alert_rows(client, topic_prefix, True)
            and len(page.evaluate(ALERT_ROWS)) == 2
        ),
        "the absence resolved",
    )
    page.click(f'#alerts tr[data-alert="{alert_of(cold)}"]')
    poll(lambda: page.text_content("#device-name") == devices[3], "the alert's device selected")
    page.screenshot(path=artifacts / "3-silenced-too.png", full_page=True)
    assert errors == []

    # A phone: the alerts table scrolls inside its box, the page never sideways.
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(f"http://127.0.0.1:{worker.port}/")
    poll(lambda: len(phone.evaluate(ALERT_ROWS)) == 1, "the alert on the phone")
    phone.screenshot(path=artifacts / "4-phone.png", full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.close()
    page.close()
    client.close()
