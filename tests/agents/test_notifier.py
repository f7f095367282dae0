"""The notifier: the alerts topic delivered to the registry's webhooks.

Real servers: the session's tansu broker, Redis and PostgreSQL (a migrated database per
test, where the webhooks are added with RegistryStore as ``pulse notify add`` does), and a
real HTTP receiver (tests/helpers/webhooks.py) that records every request and answers as
planned: 500, 408, 429 and 503 with ``Retry-After``, 400, or nothing at all (a closed port).
Transitions are built with models.alerts.AlertTransition and produced keyed by device, with
a worker's repeat of a partition's tail and a silenced one. The receiver must get, per
webhook and device, exactly the matching transitions that are not silenced, in topic order,
each with its Idempotency-Key; refused and undeliverable ones are dead letters with the
receiver's answer. Then ``pulse notifier`` itself, killed with SIGKILL mid-stream and
started again, delivers every transition at least once, repeats with the same key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from agents.notifier import Notifier
from models.alerts import AlertTransition
from pulse.local.stack import free_port
from pulse.registry.store import RegistryStore
from pulse.settings import Settings
from tests.helpers import kafka
from tests.helpers.alerts import absence_alert, keyed, window_alert
from tests.helpers.webhooks import Received, Receiver, Reply


def env_for(p: str, broker: str, redis_url: str, postgres_url: str, app: str) -> dict[str, str]:
    return {
        "PULSE_BROKER": broker,
        "PULSE_REDIS_URL": redis_url,
        "PULSE_REDIS_PREFIX": p,
        "PULSE_POSTGRES_URL": postgres_url,
        "PULSE_APP_ID": app,
        "PULSE_TOPIC_READINGS": f"{p}-readings",
        "PULSE_TOPIC_AGGREGATES": f"{p}-aggregates",
        "PULSE_TOPIC_ALERTS": f"{p}-alerts",
        "PULSE_TOPIC_DLQ": f"{p}-dlq",
        "PULSE_TOPIC_OUTPUT_DLQ": f"{p}-output-dlq",
        "PULSE_PARTITIONS": "2",
        "PULSE_SESSION_TIMEOUT": "2",
        "PULSE_NOTIFIER_MAX_ATTEMPTS": "3",
        "PULSE_NOTIFIER_RETRY_DELAY": "0.05",
        "PULSE_NOTIFIER_MAX_RETRY_DELAY": "0.2",
        "PULSE_NOTIFIER_TIMEOUT": "5",
    }


Hook = tuple[str, str | None, str | None]


async def add_webhooks(settings: Settings, hooks: Iterable[Hook]) -> list[int]:
    """Add each ``(url, rule, severity)`` as ``pulse notify add`` does; their ids."""
    store = RegistryStore(settings)
    await store.open()
    try:
        return [(await store.add_webhook(url, rule, severity))[0] for url, rule, severity in hooks]
    finally:
        await store.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


def doc(request: Received) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(request.body)
    return loaded


def per_device(values: Iterable[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for value in values:
        out.setdefault(orjson.loads(value)["device"], []).append(value)
    return out


def scenario(p: str) -> tuple[list[AlertTransition], list[AlertTransition]]:
    """Partition 0 (device ``{p}-a``) and 1 (devices ``{p}-b``, ``{p}-c``), in topic order."""
    a, b, c = f"{p}-a", f"{p}-b", f"{p}-c"
    hot = window_alert("hot", a, "t", "10s", 10, 1, "firing", 91.5)
    hot_resolved = window_alert("hot", a, "t", "10s", 10, 3, "resolved", 65.25)
    hot_again = window_alert("hot", a, "t", "10s", 10, 5, "firing", 88.0)
    quiet = absence_alert("quiet", a, "t", "firing", 0, 30)
    quiet_resolved = absence_alert("quiet", a, "t", "resolved", 25, 30)
    quiet_again = absence_alert("quiet", a, "t", "firing", 25, 30)
    partition_0 = [hot, quiet, hot_resolved, quiet_resolved]
    partition_0 += [*partition_0, hot_again, quiet_again]  # a worker's repeat, then on
    muted = window_alert("hot", b, "t", "10s", 10, 2, "firing", 99.0, silenced=True)
    hot_c = window_alert("hot", c, "t", "10s", 10, 1, "firing", 85.0, site=None, labels={})
    hot_c_resolved = window_alert("hot", c, "t", "10s", 10, 2, "resolved", 70.0)
    cold = window_alert("cold", b, "h", "1m", 60, 1, "firing", 10.0, aggregate="min")
    cold_resolved = window_alert("cold", b, "h", "1m", 60, 2, "resolved", 35.0, aggregate="min")
    boil = window_alert("boil", b, "t", "1m", 60, 1, "firing", 120.0, severity="critical")
    boil_resolved = window_alert(
        "boil", b, "t", "1m", 60, 4, "resolved", 90.0, severity=boil.severity
    )
    partition_1 = [muted, hot_c, cold, boil, hot_c_resolved, cold_resolved, boil_resolved]
    return partition_0, partition_1


def test_each_matching_transition_reaches_its_webhooks_in_order_or_a_dead_letter(
    broker: str, redis_url: str, registry_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    partition_0, partition_1 = scenario(p)
    transitions = [*partition_0, *partition_1]
    topic = f"{p}-alerts"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    produced: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        *[(0, k, v, None) for k, v in keyed(partition_0)],
        *[(1, k, v, None) for k, v in keyed(partition_1)],
    ]
    asyncio.run(kafka.produce(broker, topic, produced))
    settings = Settings.from_env(env_for(p, broker, redis_url, registry_url, f"{p}app"))

    with Receiver() as receiver:
        closed = free_port()  # nothing listens there: every try is a connection refused
        origin = receiver.url("").removeprefix("http://")
        everything = f"http://pulse:s3cret@{origin}/all?token=t0k"
        ids = asyncio.run(
            add_webhooks(
                settings,
                [
                    (everything, None, None),
                    (receiver.url("/hot"), "hot", None),
                    (receiver.url("/crit"), None, "critical"),
                    (receiver.url("/boil"), "boil", None),
                    (f"http://127.0.0.1:{closed}/cold", "cold", None),
                    (receiver.url("/info"), None, "info"),
                ],
            )
        )
        all_id, hot_id, crit_id, boil_id, cold_id, info_id = ids
        receiver.plan(
            "/hot",
            Reply(500, body="busy"),
            Reply(408),
            Reply(429, {"Retry-After": "1"}, "slow down"),
            Reply(503, {"Retry-After": "0"}, "maintenance"),
        )
        receiver.always("/boil", Reply(400, body="no boil here"))

        async def run() -> Notifier:
            notifier = Notifier(settings)
            await notifier.start()
            try:
                await until(
                    lambda: notifier.written >= len(produced) or notifier.crashed, "all handled"
                )
                assert not notifier.crashed, notifier.crash_reason
                assert notifier.written == len(produced)
                assert notifier.readiness().ready
            finally:
                await notifier.stop()
            return notifier

        notifier = asyncio.run(run())
        requests = receiver.received()

    assert notifier.group_id == f"{p}app-notifier"
    loud = [t for t in transitions if not t.silenced]

    def matching(keep: Callable[[AlertTransition], bool]) -> dict[str, list[bytes]]:
        return per_device(t.json() for t in loud if keep(t))

    # Every request: the transition's JSON as the topic holds it, and its headers.
    by_value = {t.json(): t for t in transitions}
    for request in requests:
        t = by_value[request.body]
        assert request.headers["Content-Type"] == "application/json"
        assert request.key == f"{t.id}:{t.state}"
        assert request.headers["Pulse-Alert-Id"] == t.id
        assert request.headers["Pulse-Alert-State"] == t.state
        assert request.headers["User-Agent"] == "pulse-notifier"
        assert not t.silenced  # a silenced transition is sent nowhere
    # Per webhook and device, the transitions delivered (2xx), in topic order; repeats in the
    # topic are delivered again, with the same key.
    delivered = {
        path: per_device(r.body for r in requests if r.path == path and r.status == 200)
        for path in ("/all", "/hot", "/crit", "/boil", "/cold", "/info")
    }
    assert delivered == {
        "/all": matching(lambda t: True),
        "/hot": matching(lambda t: t.rule == "hot"),
        "/crit": matching(lambda t: t.severity == "critical"),
        "/boil": {},
        "/cold": {},
        "/info": {},
    }
    assert {r.path for r in requests} == {"/all", "/hot", "/crit", "/boil"}
    every = [r for r in requests if r.path == "/all"]
    assert {r.headers["Authorization"] for r in every} == {
        "Basic " + base64.b64encode(b"pulse:s3cret").decode()
    }
    assert {r.query for r in every} == {"token=t0k"}

    # /hot: 500 and 408 are failed tries, 429 and 503 with Retry-After are waited out as
    # asked; each transition's tries carry one body and one key.
    hot = [r for r in requests if r.path == "/hot"]
    assert [r.status for r in hot if r.status != 200] == [500, 408, 429, 503]
    asked = next(r for r in hot if r.status == 429)
    after = next(r for r in hot if r.at > asked.at and r.key == asked.key)
    assert after.at - asked.at >= 0.9
    for key in {r.key for r in hot}:
        assert len({r.body for r in hot if r.key == key}) == 1
    # /boil answers 400: one try each, then a dead letter.
    boils = [t for t in loud if t.rule == "boil"]
    assert [r.body for r in requests if r.path == "/boil"] == [t.json() for t in boils]

    letters = [
        orjson.loads(r.value or b"") for r in asyncio.run(kafka.read_all(broker, f"{p}-output-dlq"))
    ]
    assert "s3cret" not in json.dumps(letters)
    refused = [letter for letter in letters if letter["reason"] == "refused"]
    assert refused == [
        {
            "reason": "refused",
            "sink": "webhooks",
            "target": f"webhook {boil_id} {receiver.url('/boil')}",
            "answer": "HTTP 400 Bad Request: no boil here",
            "key": f"{p}-b",
            "output": t.json().decode(),
        }
        for t in boils
    ]
    colds = [t for t in loud if t.rule == "cold"]
    undeliverable = [letter for letter in letters if letter["reason"] == "undeliverable"]
    assert [letter["output"] for letter in undeliverable] == [t.json().decode() for t in colds]
    for letter in undeliverable:
        assert letter["sink"] == "webhooks" and letter["key"] == f"{p}-b"
        assert letter["target"] == f"webhook {cold_id} http://127.0.0.1:{closed}/cold"
        assert letter["answer"].startswith("3 tries failed; the last: ClientConnectorError: ")
    assert len(letters) == len(refused) + len(undeliverable)

    counts = notifier.webhook_counts()
    assert counts[hot_id] == {
        "delivered": sum(len(v) for v in delivered["/hot"].values()),
        "failed": 2,
        "waited": 2,
        "dead_lettered": 0,
        "cancelled": 0,
    }
    assert counts[boil_id] == {
        "delivered": 0, "failed": 2, "waited": 0, "dead_lettered": 2, "cancelled": 0
    }  # fmt: skip
    assert counts[cold_id] == {
        "delivered": 0, "failed": 6, "waited": 0, "dead_lettered": 2, "cancelled": 0
    }  # fmt: skip
    assert counts[all_id]["delivered"] == len(loud) and counts[crit_id]["failed"] == 0
    assert info_id not in counts  # no transition matched it
    assert notifier.silenced == 1
    health = {h.name: h.document() for h in notifier.sink_health}
    assert set(health) == {"webhooks", *(f"webhook-{i}" for i in ids if i != info_id)}
    assert {name: h["state"] for name, h in health.items()} == dict.fromkeys(health, "ok")
    assert health[f"webhook-{boil_id}"]["dead_letters"] == 2


Process = subprocess.Popen[bytes]


def test_a_notifier_killed_mid_stream_delivers_every_transition_at_least_once(
    broker: str, redis_url: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    p = topic_prefix
    devices = [f"{p}-{i}" for i in range(6)]
    transitions = [
        window_alert("hot", device, "t", "10s", 10, k, "firing" if k % 2 == 0 else "resolved", 90.0)
        for k in range(40)
        for device in devices
    ]  # fmt: skip
    first, second = transitions[:60], transitions[60:]
    topic = f"{p}-alerts"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    env = env_for(p, broker, redis_url, registry_url, f"{p}app")
    settings = Settings.from_env(env)

    with Receiver(delay=0.02) as receiver:
        (hook_id,) = asyncio.run(add_webhooks(settings, [(receiver.url("/all"), None, None)]))
        port = free_port()
        env = {**os.environ, **env, "PULSE_NOTIFIER_PORT": str(port),
               "PULSE_NOTIFIER_CONCURRENCY": "2"}  # fmt: skip

        def start(name: str) -> subprocess.Popen[bytes]:
            log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - the child's
            process = subprocess.Popen(
                [sys.executable, "-m", "pulse", "notifier", "-l", "info"],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
            return process

        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except OSError:
                return 0, b""

        def written() -> int:
            status, body = get("/health/ready")
            return int(json.loads(body)["written"]) if status in (200, 503) else -1

        def lag() -> dict[str, int]:
            status, body = get("/health/ready")
            return dict(json.loads(body)["lag"]) if status in (200, 503) else {}

        def wait(condition: Callable[[], bool], what: str, process: Process) -> None:
            deadline = time.monotonic() + 90
            while not condition():
                log = (tmp_path / "notifier.log").read_text(errors="replace")[-3000:]
                assert process.poll() is None, f"the notifier exited:\n{log}"
                assert time.monotonic() < deadline, f"timed out waiting until {what}:\n{log}"
                time.sleep(0.05)

        def distinct() -> set[str]:
            return {r.key for r in receiver.received()}

        asyncio.run(kafka.produce(broker, topic, [(None, k, v, None) for k, v in keyed(first)]))
        process = start("notifier")
        try:
            wait(lambda: written() == len(first), "the first part is committed", process)
            assert len(receiver.received()) == len(first)  # committed after delivery: once each
            asyncio.run(
                kafka.produce(broker, topic, [(None, k, v, None) for k, v in keyed(second)])
            )
            wait(lambda: len(receiver.received()) >= len(first) + 40, "mid-stream", process)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert len(distinct()) < len(transitions)  # killed with deliveries still to make

            process = start("notifier")
            wait(lambda: distinct() >= {f"{t.id}:{t.state}" for t in transitions}, "all", process)
            wait(lambda: lag() == {"0": 0, "1": 0}, "the rest is committed", process)
            status, body = get("/health/ready")
            assert status == 200, body
            health = json.loads(body)
            assert health["registry"]["state"] == "ok" and health["ready"]
            assert health["sinks"]["webhooks"]["state"] == "ok"
            status, metrics = get("/metrics")
            assert status == 200
            assert (
                f'pulse_notifier_deliveries_total{{result="delivered",webhook="{hook_id}"}}'
                in metrics.decode()
            )
            assert 'pulse_sink_state{sink="webhooks",state="ok"} 1.0' in metrics.decode()
        finally:
            process.terminate()
            process.wait(30)

        requests = receiver.received()

    expected = {f"{t.id}:{t.state}": t.json() for t in transitions}
    # Every transition at least once; a repeat is the same request (same key, same body).
    assert {r.key for r in requests} == set(expected)
    assert all(r.body == expected[r.key] for r in requests)
    assert len(requests) > len(transitions)  # some were delivered again after the kill
    # The committed first part was not delivered again.
    first_keys = {f"{t.id}:{t.state}" for t in first}
    assert sum(r.key in first_keys for r in requests) == len(first)
    # Per device, the first delivery of each transition follows the topic's order.
    firsts: dict[str, list[bytes]] = {}
    seen: set[str] = set()
    for r in requests:
        if r.key not in seen:
            seen.add(r.key)
            firsts.setdefault(doc(r)["device"], []).append(r.body)
    assert firsts == per_device(t.json() for t in transitions)


def test_registry_changes_reach_the_notifier_a_removed_webhook_stops_being_tried(
    broker: str, redis_url: str, registry_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    device = f"{p}-a"
    fire = window_alert("hot", device, "t", "10s", 10, 1, "firing", 91.0)
    resolve = window_alert("hot", device, "t", "10s", 10, 2, "resolved", 60.0)
    later = window_alert("hot", device, "t", "10s", 10, 3, "firing", 95.0)
    topic = f"{p}-alerts"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    env = env_for(p, broker, redis_url, registry_url, f"{p}app")
    settings = Settings.from_env({**env, "PULSE_NOTIFIER_MAX_ATTEMPTS": "1000"})
    closed = free_port()

    with Receiver() as receiver:

        async def run() -> Notifier:
            (dead,) = await add_webhooks(settings, [(f"http://127.0.0.1:{closed}/", None, None)])
            notifier = Notifier(settings)
            await notifier.start()
            store = RegistryStore(settings)
            await store.open()
            try:
                await kafka.produce(broker, topic, [(0, k, v, None) for k, v in keyed([fire])])
                await kafka.produce(broker, topic, [(0, k, v, None) for k, v in keyed([resolve])])
                counts = notifier.webhook_counts
                await until(lambda: counts().get(dead, {}).get("failed", 0) >= 3, "tries fail")
                assert notifier.written == 0  # nothing committed while it is tried
                # Removed: the delivery being tried is given up (and the resolution after it,
                # if the same fetch holds it; a later fetch matches no webhook), and the
                # fetches are committed.
                await store.remove_webhook(dead)
                await until(lambda: notifier.written == 2, "the fetch is committed")
                assert counts()[dead]["cancelled"] in (1, 2)
                assert counts()[dead]["dead_lettered"] == counts()[dead]["delivered"] == 0
                # Added: the transitions from then on reach it.
                late, _ = await store.add_webhook(receiver.url("/late"))
                await until(lambda: notifier.cache.version == 3, "the new webhook is loaded")
                await kafka.produce(broker, topic, [(0, k, v, None) for k, v in keyed([later])])
                await until(lambda: notifier.written == 3, "the later one is handled")
                assert counts()[late]["delivered"] == 1
            finally:
                await store.close()
                await notifier.stop()
            return notifier

        asyncio.run(run())
        assert [r.body for r in receiver.received()] == [later.json()]
