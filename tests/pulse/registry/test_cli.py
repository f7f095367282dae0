"""The registry's commands (``pulse db upgrade``, ``pulse devices|rules|silence|notify``)
in real processes on a real PostgreSQL: what each prints and changes, and every bad input
stopped with exit 2 and a message naming the field."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.integration


def _pulse(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PULSE_POSTGRES_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "pulse", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _ok(url: str, *args: str) -> str:
    done = _pulse(url, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_db_upgrade_then_each_command_makes_a_version(postgres_url: str) -> None:
    assert _ok(postgres_url, "db", "upgrade") == (
        "registry schema upgraded from nothing to revision 0001\n"
    )
    assert _ok(postgres_url, "db", "upgrade") == "registry schema at revision 0001: nothing to do\n"
    url = postgres_url
    assert _ok(url, "devices", "add", "dev-0", "--site", "plant-a", "--label", "rack=r1") == (
        "device dev-0 added: registry version 1\n"
    )
    assert _ok(url, "devices", "add", "dev-1", "--disabled") == (
        "device dev-1 added: registry version 2\n"
    )
    assert _ok(url, "devices", "set", "dev-1", "--site", "plant-b", "--enable") == (
        "device dev-1 changed: registry version 3\n"
    )
    assert _ok(
        url, "rules", "add", "hot", "--metric", "temperature", "--window", "10s",
        "--aggregate", "p95", "--op", ">=", "--threshold", "30", "--clear", "28.5",
        "--for", "3", "--site", "plant-a", "--severity", "critical",
    ) == "rule hot added: registry version 4\n"  # fmt: skip
    assert _ok(url, "rules", "add", "quiet", "--metric", "temperature", "--absent-for", "5m") == (
        "absence rule quiet added: registry version 5\n"
    )
    assert _ok(url, "silence", "add", "--rule", "hot", "--device", "dev-0", "--until",
               "2030-01-01T00:00:00Z") == "silence 1 added: registry version 6\n"  # fmt: skip
    assert _ok(url, "notify", "add", "http://127.0.0.1:9/hook", "--severity", "critical") == (
        "webhook 1 added: registry version 7\n"
    )
    assert _ok(url, "devices", "rm", "dev-1") == "device dev-1 removed: registry version 8\n"

    assert orjson.loads(_ok(url, "devices", "list", "--json")) == {
        "version": 8,
        "devices": [{"id": "dev-0", "site": "plant-a", "labels": {"rack": "r1"}, "enabled": True}],
    }
    assert orjson.loads(_ok(url, "devices", "list", "--json", "--version", "3"))["devices"] == [
        {"id": "dev-0", "site": "plant-a", "labels": {"rack": "r1"}, "enabled": True},
        {"id": "dev-1", "site": "plant-b", "labels": {}, "enabled": True},
    ]
    assert orjson.loads(_ok(url, "rules", "list", "--json")) == {
        "version": 8,
        "rules": [
            {
                "name": "hot", "metric": "temperature", "window": "10s", "aggregate": "p95",
                "comparison": ">=", "threshold": 30.0, "clear_threshold": 28.5, "for_count": 3,
                "selector": {"device": None, "site": "plant-a"}, "severity": "critical",
                "enabled": True,
            }
        ],
        "absence_rules": [
            {
                "name": "quiet", "metric": "temperature", "duration_us": 300_000_000,
                "selector": {"device": None, "site": None}, "severity": "warning",
                "enabled": True,
            }
        ],
    }  # fmt: skip
    assert _ok(url, "rules", "list").splitlines() == [
        "registry version 8: 1 alert rules, 1 absence rules",
        "hot                  p95(temperature, 10s) >= 30.0 clear 28.5 for 3 site=plant-a critical",
        "quiet                no temperature for 300 s all warning",
    ]
    assert orjson.loads(_ok(url, "silence", "list", "--json"))["silences"] == [
        {"id": 1, "rule": "hot", "device": "dev-0", "site": None,
         "until_us": 1_893_456_000_000_000}
    ]  # fmt: skip
    assert _ok(url, "silence", "list").splitlines() == [
        "registry version 8: 1 silences",
        "1      hot                  device=dev-0 until 2030-01-01T00:00:00.000Z",
    ]
    assert orjson.loads(_ok(url, "notify", "list", "--json"))["webhooks"] == [
        {"id": 1, "url": "http://127.0.0.1:9/hook", "rule": None, "severity": "critical"}
    ]
    assert _ok(url, "silence", "rm", "1") == "silence 1 removed: registry version 9\n"
    assert _ok(url, "notify", "rm", "1") == "webhook 1 removed: registry version 10\n"
    assert _ok(url, "rules", "rm", "quiet") == "rule quiet removed: registry version 11\n"
    assert _ok(url, "devices", "list").splitlines() == [
        "registry version 11: 1 devices",
        "dev-0                    plant-a          enabled   rack=r1",
    ]
    # A rule without --clear keeps none (the threshold); a silence of a rule on every device.
    assert _ok(url, "rules", "add", "cold", "--metric", "temperature", "--window", "10s",
               "--aggregate", "min", "--op", "<", "--threshold", "-5") == (
        "rule cold added: registry version 12\n"
    )  # fmt: skip
    assert orjson.loads(_ok(url, "rules", "list", "--json"))["rules"][0]["clear_threshold"] is None
    assert _ok(url, "silence", "add", "--rule", "cold", "--until", "1893456000.25") == (
        "silence 2 added: registry version 13\n"
    )
    assert orjson.loads(_ok(url, "silence", "list", "--json"))["silences"] == [
        {"id": 2, "rule": "cold", "device": None, "site": None, "until_us": 1_893_456_000_250_000}
    ]


def _rule(*options: str) -> list[str]:
    """``pulse rules add r --metric m`` with ``options``."""
    return ["rules", "add", "r", "--metric", "m", *options]


def _mean_rule(op: str, threshold: str, *options: str) -> list[str]:
    """An alert rule on the 10s window's mean."""
    return _rule("--window", "10s", "--aggregate", "mean", "--op", op, "--threshold", threshold,
                 *options)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["devices", "add", "dev 0"], "Error: id: 'dev 0' is not a name"),
        (["devices", "add", "dev-9", "--site", "a/b"], "Error: site: 'a/b' is not a name"),
        (["devices", "add", "dev-9", "--label", "rack"], "Error: labels: 'rack' is not KEY=VALUE"),
        (["devices", "add", "dev-0"], "Error: id: device 'dev-0' is already registered"),
        (["devices", "set", "dev-0", "--site", "s", "--no-site"], "Error: site: give --site"),
        (
            _rule("--window", "10s", "--aggregate", "avg", "--op", ">", "--threshold", "1"),
            "Error: aggregate: 'avg' is not one of count, sum, min, max, mean, first, last, "
            "p50, p95, p99",
        ),
        (_mean_rule("=", "1"), "Error: comparison: '=' is not one of >, >=, <, <="),
        (_mean_rule(">", "hot"), "Error: threshold: 'hot' is not a number"),
        (
            _mean_rule("<", "5", "--clear", "4"),
            "Error: clear_threshold: must be at least the threshold (5.0) for comparison '<', "
            "not 4.0",
        ),
        (_rule("--window", "10s"), "Error: aggregate: an alert"),
        (_rule("--absent-for", "soon"), "Error: absent-for: 'soon'"),
        (
            _rule("--absent-for", "1m", "--severity", "loud"),
            "Error: severity: 'loud' is not one of info, warning, critical",
        ),
        (["silence", "add", "--device", "dev-0"], "Error: until: give --until or --for"),
        (["silence", "add", "--for", "1h"], "Error: target: a silence mutes a rule, a device"),
        (
            ["silence", "add", "--device", "d", "--site", "s", "--for", "1h"],
            "Error: target: a silence is for a device or a site, not both",
        ),
        (
            _rule("--absent-for", "1m", "--device", "d", "--site", "s"),
            "Error: selector: a rule is for a device or a site, not both",
        ),
        (
            _rule("--absent-for", "0s"),
            "Error: duration: must be more than 0 and at most a year",
        ),
        (
            ["silence", "add", "--site", "s", "--until", "noon"],
            "Error: until: 'noon' is not a time",
        ),
        (["notify", "add", "mailto:a@b"], "Error: url: 'mailto:a@b' is not an http"),
        (
            ["notify", "add", "http://x", "--rule", "r", "--severity", "info"],
            "Error: severity: a webhook is for a rule or a severity, not both",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    registry_url: str, args: list[str], message: str
) -> None:
    _ok(registry_url, "devices", "add", "dev-0")
    done = _pulse(registry_url, *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(message), done.stderr
    assert orjson.loads(_ok(registry_url, "devices", "list", "--json"))["version"] == 1


def test_unknown_entries_and_postgres_away_exit_1(registry_url: str) -> None:
    done = _pulse(registry_url, "devices", "rm", "dev-9")
    assert (done.returncode, done.stderr) == (1, "Error: id: no device 'dev-9' in the registry\n")
    done = _pulse(registry_url, "devices", "list", "--version", "7")
    assert (done.returncode, done.stderr) == (
        1, "Error: version: no registry version 7 (newest: 0)\n"
    )  # fmt: skip
    away = "postgresql://pulse:s3cret@127.0.0.1:1/pulse"
    done = _pulse(away, "devices", "list")
    assert done.returncode == 1
    assert done.stderr.startswith(
        "Error: cannot use the registry: PostgreSQL (postgresql://pulse:<redacted>@127.0.0.1:1/"
        "pulse): "
    ), done.stderr
    assert "s3cret" not in done.stderr
