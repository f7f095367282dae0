"""Settings.from_env: defaults, and every bad value stops with a message naming the variable."""

from __future__ import annotations

import pytest

from pulse.settings import (
    VARIABLES,
    Settings,
    SettingsError,
    redis_cluster_nodes,
    redis_is_cluster,
    redis_uses_tls,
)
from tables.windows import WindowSpec

S = 1_000_000


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.broker == "kafka://127.0.0.1:9092"
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.influx_url == "http://127.0.0.1:8086"
    assert settings.app_id == "pulse"
    assert settings.windows == (
        WindowSpec("10s", "tumbling", 10 * S, 10 * S),
        WindowSpec("1m", "tumbling", 60 * S, 60 * S),
    )
    assert settings.grace == 5.0
    assert settings.grace_us == 5 * S
    assert settings.idle_close == 10.0
    assert settings.topic_readings == "readings"
    assert settings.topic_aggregates == "aggregates"
    assert settings.topic_dlq == "readings-dlq"
    assert settings.topic_alerts == "alerts"
    assert settings.redis_prefix == "pulse"
    assert settings.state_ttl == 86400
    assert settings.flush_interval == 0.25
    assert settings.max_message_bytes == 65536
    assert settings.web_port == 6066
    assert settings.changelog_topic == "pulse-readings-state"


def test_every_variable_is_prefixed_and_has_a_parseable_default() -> None:
    names = [var.name for var in VARIABLES]
    assert len(names) == len(set(names))
    assert all(name.startswith("PULSE_") for name in names)
    settings = Settings.from_env({})
    assert Settings.from_env(settings.env()) == settings


def test_values_are_read_and_stripped() -> None:
    settings = Settings.from_env(
        {
            "PULSE_BROKER": " kafka://a:1,b:2 ",
            "PULSE_WINDOWS": "10s, 5m/1m,sliding:1m",
            "PULSE_GRACE": "0",
            "PULSE_IDLE_CLOSE": "0.5",
            "PULSE_STATE_TTL": "60",
            "PULSE_APP_ID": "plant-a",
            "PULSE_WEB_PORT": "8080",
        }
    )
    assert settings.bootstrap_servers == "a:1,b:2"
    assert [s.label for s in settings.windows] == ["10s", "5m/1m", "sliding:1m"]
    assert settings.grace == 0.0
    assert settings.idle_close == 0.5
    assert settings.state_ttl == 60
    assert settings.changelog_topic == "plant-a-readings-state"
    assert settings.web_port == 8080


CLUSTER_FORM = "redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]"


@pytest.mark.parametrize(
    ("url", "nodes", "tls"),
    [
        ("redis+cluster://h1:7000", [("h1", 7000)], False),
        ("redis+cluster://h1:7000,10.0.0.2:7001/0", [("h1", 7000), ("10.0.0.2", 7001)], False),
        ("rediss+cluster://u:p%40ss@h1:7000,[::1]:7001/", [("h1", 7000), ("::1", 7001)], True),
    ],
)
def test_a_redis_cluster_url_names_its_nodes(
    url: str, nodes: list[tuple[str, int]], tls: bool
) -> None:
    settings = Settings.from_env({"PULSE_REDIS_URL": url})
    assert redis_is_cluster(settings.redis_url)
    assert redis_cluster_nodes(settings.redis_url) == nodes
    assert redis_uses_tls(settings.redis_url) is tls
    assert settings.redis_password == ("p@ss" if "@" in url else "")


def test_environment_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_GRACE", "2.5")
    assert Settings.from_env().grace_us == 2_500_000


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("PULSE_BROKER", "http://h:9092", "must be kafka://HOST:PORT[,HOST:PORT...]"),
        ("PULSE_BROKER", "kafka://h", "must be kafka://HOST:PORT[,HOST:PORT...]"),
        ("PULSE_BROKER", "kafka://h:1,", "must be kafka://HOST:PORT[,HOST:PORT...]"),
        (
            "PULSE_REDIS_URL",
            "http://h:6379",
            "must be a URL with scheme redis, rediss or unix, or a Redis Cluster's "
            "redis+cluster://HOST:PORT[,HOST:PORT...] (rediss+cluster:// with TLS)",
        ),
        (
            "PULSE_REDIS_URL",
            "unix://",
            "must name the socket's path: unix:///PATH/TO/redis.sock[?db=N]",
        ),
        *(
            ("PULSE_REDIS_URL", url, f"node {node!r} is not HOST:PORT ({CLUSTER_FORM})")
            for url, node in (
                ("redis+cluster://h1", "h1"),
                ("redis+cluster://h1:7000,h2", "h2"),
                ("redis+cluster://h1:7000,", ""),
                ("rediss+cluster://:7000", ":7000"),
                ("redis+cluster://u@h1:70000", "h1:70000"),
            )
        ),
        (
            "PULSE_REDIS_URL",
            "redis+cluster://h1:7000,h2:7001/1",
            f"a Redis Cluster has only database 0: leave '/1' out ({CLUSTER_FORM})",
        ),
        ("PULSE_INFLUX_URL", "localhost:8086", "must be a URL with scheme http or https"),
        ("PULSE_INFLUX_ORG", "", "must be a non-empty name without spaces, '/', ':' or ','"),
        ("PULSE_INFLUX_BUCKET", "a b", "must be a non-empty name without spaces, '/', ':' or ','"),
        ("PULSE_APP_ID", "a/b", "must be a non-empty name without spaces, '/', ':' or ','"),
        ("PULSE_TOPIC_READINGS", "a:b", "must be a non-empty name without spaces, '/', ':' or ','"),
        (
            "PULSE_TOPIC_AGGREGATES",
            "a,b",
            "must be a non-empty name without spaces, '/', ':' or ','",
        ),
        ("PULSE_TOPIC_DLQ", " ", "must be a non-empty name without spaces, '/', ':' or ','"),
        ("PULSE_TOPIC_ALERTS", "a/b", "must be a non-empty name without spaces, '/', ':' or ','"),
        *(
            (
                "PULSE_REDIS_PREFIX",
                prefix,
                "must be a non-empty name without spaces, '/', ':', ',', '{' or '}'",
            )
            for prefix in ("p q", "p:q", "{p}", "p}", "")
        ),
        (
            "PULSE_WINDOWS",
            "10x",
            "'10x' is not a duration: write a whole number and a unit "
            "(ms, s, m, h, d), e.g. 10s or 5m",
        ),
        (
            "PULSE_WINDOWS",
            "1m/5m",
            "'1m/5m': the step (5m) is larger than the size (1m), so some "
            "readings would belong to no window",
        ),
        ("PULSE_WINDOWS", "10s,10s/10s", "'10s/10s' repeats the window '10s': each window once"),
        ("PULSE_WINDOWS", "0s", "'0s': a window size or step must be greater than zero"),
        ("PULSE_WINDOWS", "", "empty window specification"),
        ("PULSE_GRACE", "-1", "must be a number at least 0"),
        ("PULSE_GRACE", "five", "is not a number"),
        ("PULSE_GRACE", "nan", "must be a number at least 0"),
        ("PULSE_GRACE", "inf", "must be a number at least 0"),
        ("PULSE_IDLE_CLOSE", "0", "must be a number greater than 0"),
        ("PULSE_STATE_TTL", "0", "must be a whole number of at least 1"),
        ("PULSE_STATE_TTL", "1.5", "is not a whole number"),
        ("PULSE_STATE_TTL", "", "is not a whole number"),
        ("PULSE_FLUSH_INTERVAL", "0", "must be a number at least 0.001"),
        ("PULSE_MAX_MESSAGE_BYTES", "0", "must be a whole number of at least 1"),
        ("PULSE_MAX_MESSAGE_BYTES", "64k", "is not a whole number"),
        ("PULSE_WEB_PORT", "0", "must be a whole number from 1 to 65535"),
        ("PULSE_WEB_PORT", "http", "is not a whole number"),
        ("PULSE_PARTITIONS", "0", "must be a whole number of at least 1"),
        ("PULSE_SESSION_TIMEOUT", "0.5", "must be a number at least 1"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert str(info.value) == f"{name}={value!r}: {reason}"


def test_the_state_ttl_is_at_least_the_session_timeout() -> None:
    # A removed Redis key's tombstone lives as long as the TTL (see pulse/sinks/redis.py).
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PULSE_STATE_TTL": "5", "PULSE_SESSION_TIMEOUT": "6.5"})
    assert str(info.value) == "PULSE_STATE_TTL='5': must be at least PULSE_SESSION_TIMEOUT (6.5)"
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PULSE_SESSION_TIMEOUT": "6"}, state_ttl=3)
    assert str(info.value) == "PULSE_STATE_TTL='3': must be at least PULSE_SESSION_TIMEOUT (6)"
    settings = Settings.from_env({"PULSE_STATE_TTL": "6", "PULSE_SESSION_TIMEOUT": "6"})
    assert (settings.state_ttl, settings.session_timeout) == (6, 6.0)


@pytest.mark.parametrize("value", ["kafka://h:99999", "kafka://h:port"])
def test_bad_broker_port_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PULSE_BROKER": value})
    assert str(info.value).startswith(f"PULSE_BROKER={value!r}: ")


@pytest.mark.parametrize("value", ["65536", "70000"])
def test_web_port_beyond_65535_is_a_bad_value(value: str) -> None:
    """A TCP port is at most 65535: the worker could never listen on this one, so startup
    should stop here with the variable named, not later at bind time."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PULSE_WEB_PORT": value})
    assert str(info.value).startswith(f"PULSE_WEB_PORT={value!r}: ")


def test_web_port_65535_is_fine() -> None:
    assert Settings.from_env({"PULSE_WEB_PORT": "65535"}).web_port == 65535
