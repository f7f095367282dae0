"""Pulse's configuration: every setting, its environment variable, its default and its check.

This module is the one place configuration is documented; ``docs/configuration.md`` is generated
from :data:`VARIABLES` (``pulse config``) and a test keeps the two equal.

Secrets (``Variable.secret``: the InfluxDB token, the Kafka SASL password; and the passwords in
``PULSE_REDIS_URL`` and ``PULSE_POSTGRES_URL``) are never shown: not in :class:`Settings`'
repr, not in :meth:`Settings.shown` (``pulse config``), not in an error message. Each may
instead be read from a file (``*_FILE``: one way for all, :func:`_read_secret_file`), which
keeps it out of the process environment. How the clients use these settings:
:mod:`pulse.kafka_clients`, :mod:`pulse.redis_clients`, :mod:`pulse.registry._db`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse, urlsplit

from tables import _native
from tables.windows import WindowSpec, WindowSpecError, parse_windows


class SettingsError(ValueError):
    """A configuration value that stops startup; the message names the variable."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    help: str
    parse: Callable[[str], Any] = field(repr=False)
    secret: bool = False
    """Taken verbatim (not stripped) and never shown: see the module's docstring."""
    mask: Callable[[str], str] | None = field(default=None, repr=False)
    """For a value that may hold a secret (a URL with a password): the value as it may be
    shown."""

    def shown(self, raw: str) -> str:
        """``raw`` as it may be printed or logged."""
        if self.secret:
            return REDACTED if raw else raw
        return self.mask(raw) if self.mask else raw


REDACTED = "<redacted>"
"""What stands for a secret wherever settings are shown."""

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-512")


def _number(
    minimum: float, *, strict: bool = False, maximum: float | None = None
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if (
            not math.isfinite(value)
            or value < minimum
            or (strict and value == minimum)
            or (maximum is not None and value > maximum)
        ):
            bound = "greater than" if strict else "at least"
            most = "" if maximum is None else f" and at most {maximum:g}"
            raise ValueError(f"must be a number {bound} {minimum:g}{most}")
        return value

    return parse


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise ValueError(f"must be a whole number {bounds}")
        return value

    return parse


def _broker(text: str) -> str:
    for part in text.split(","):
        url = urlparse(part if "://" in part else f"kafka://{part}")
        if url.scheme != "kafka" or not url.hostname or url.port is None:
            raise ValueError("must be kafka://HOST:PORT[,HOST:PORT...]")
    return text


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        url = urlparse(text)
        if url.scheme not in schemes or not url.hostname:
            raise ValueError(f"must be a URL with scheme {' or '.join(schemes)}")
        return text

    return parse


REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""The schemes of a ``PULSE_REDIS_URL`` that names a Redis Cluster (the second with TLS)."""


def redis_is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0] in REDIS_CLUSTER_SCHEMES


def redis_uses_tls(url: str) -> bool:
    """Whether ``url`` asks for TLS (``rediss://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0] in ("rediss", "rediss+cluster")


def redis_cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` of each node a ``redis+cluster://`` URL lists, in order: where a
    client starts to discover the cluster (any one that answers gives the whole layout).

    Raises ValueError saying what is wrong: a node without a host or a port, a database
    other than 0 (a cluster has no other), a URL that is not of a cluster.
    """
    form = "redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]"
    if not redis_is_cluster(url):
        raise ValueError(f"must be {form}")
    rest = url.partition("://")[2]
    netloc = _netloc(url)
    after = rest[len(netloc) :]
    path = after.split("?", 1)[0].split("#", 1)[0]
    if path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0: leave {path!r} out ({form})")
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for part in hosts.split(","):
        host, colon, port = part.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # an IPv6 address
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"node {part!r} is not HOST:PORT ({form})")
        nodes.append((host, int(port)))
    return nodes


def _redis_url(text: str) -> str:
    if redis_is_cluster(text):
        redis_cluster_nodes(text)
    elif text.startswith("unix://"):
        if not urlsplit(text).path.strip("/"):
            raise ValueError("must name the socket's path: unix:///PATH/TO/redis.sock[?db=N]")
    else:
        try:
            _url("redis", "rediss")(text)
        except ValueError:
            raise ValueError(
                "must be a URL with scheme redis, rediss or unix, or a Redis Cluster's "
                "redis+cluster://HOST:PORT[,HOST:PORT...] (rediss+cluster:// with TLS)"
            ) from None
    if "password" in parse_qs(urlsplit(text).query):
        raise ValueError(
            "must not hold a password parameter: give the password as the URL's user info "
            "(redis://[USER]:PASSWORD@HOST:PORT/DB) or in PULSE_REDIS_PASSWORD_FILE"
        )
    return text


def _postgres_url(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("postgresql", "postgres") or not url.hostname:
        raise ValueError(
            "must be postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?sslmode=...] "
            "(libpq's URL)"
        )
    if "password" in parse_qs(url.query):
        raise ValueError(
            "must not hold a password parameter: give the password as the URL's user info "
            "or in PULSE_POSTGRES_PASSWORD_FILE"
        )
    if url.path in ("", "/"):
        raise ValueError("must name the database: postgresql://USER@HOST:PORT/DATABASE")
    return text


def _url_password(url: str) -> str:
    """The password in ``url``'s user info, percent-decoded ("" when there is none)."""
    userinfo = _netloc(url).rpartition("@")[0]
    _, colon, password = userinfo.partition(":")
    return unquote(password) if colon else ""


def _mask_url_password(url: str) -> str:
    """``url`` with the password of its user info (and of a ``password`` parameter, which
    :func:`_redis_url` refuses) replaced by :data:`REDACTED`. Everything up to the last ``@``
    counts as user info here, so that a URL too malformed to parse (a password with an
    unescaped ``/``) does not show its password either."""
    url = _PASSWORD_PARAMETER.sub(rf"\g<1>{REDACTED}", url)
    scheme, separator, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not (separator and at and colon):
        return url
    return f"{scheme}://{user}:{REDACTED}@{host}"


_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&#]*")


def _netloc(url: str) -> str:
    # Up to the path, query or fragment, as urlsplit (and so redis-py) reads it.
    rest = url.partition("://")[2]
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return rest[: min(ends)] if ends else rest


def _name(text: str) -> str:
    if not text or any(c.isspace() or c in "/:," for c in text):
        raise ValueError("must be a non-empty name without spaces, '/', ':' or ','")
    return text


def _redis_prefix(text: str) -> str:
    if not text or any(c.isspace() or c in "/:,{}" for c in text):
        raise ValueError("must be a non-empty name without spaces, '/', ':', ',', '{' or '}'")
    return text


def _bridge_streams(text: str) -> str:
    for part in text.split(","):
        if text and (not part.strip() or any(c.isspace() or c in "{}" for c in part.strip())):
            raise ValueError(
                "must be comma-separated stream names or patterns, without spaces, '{' or '}'"
            )
    return ",".join(part.strip() for part in text.split(",")) if text else ""


def _windows(text: str) -> tuple[WindowSpec, ...]:
    try:
        return parse_windows(text)
    except WindowSpecError as exc:
        raise ValueError(str(exc)) from None


def _text(text: str) -> str:
    return text


def _choice(*choices: str, empty: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices and not (empty and text == ""):
            unset = " (or unset)" if empty else ""
            raise ValueError(f"must be one of {', '.join(choices)}{unset}")
        return text

    return parse


def _file(text: str) -> str:
    if text and not (os.path.isfile(text) and os.access(text, os.R_OK)):
        raise ValueError("must be the path of a readable file")
    return text


def _left_out(text: str) -> str:
    try:
        _native.left_out(text)
    except ValueError as exc:
        raise ValueError(str(exc).split(": ", 1)[1]) from None
    return text


def _search_url(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("must be http[s]://[USER:PASSWORD@]HOST:PORT")
    if url.path.strip("/") or url.query or url.fragment:
        raise ValueError("must be http[s]://[USER:PASSWORD@]HOST:PORT, without a path or query")
    return text


def _index_prefix(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", text):
        raise ValueError(
            "must be 1-64 characters of a-z 0-9 _ . - (an index name's), starting with a letter "
            "or digit"
        )
    return text


def _window_labels(text: str) -> tuple[str, ...]:
    if not text.strip():
        return ()
    labels = tuple(part.strip() for part in text.split(","))
    for label in labels:
        spec = _windows(label)[0]
        if spec.kind == "sliding":
            raise ValueError(f"{label} is a sliding window: only closed windows are indexed")
    if len(set(labels)) != len(labels):
        raise ValueError("names a window twice")
    return labels


SEARCH_VARIABLES = (
    Variable(
        "PULSE_SEARCH_URL",
        "http://127.0.0.1:9200",
        "OpenSearch (or Elasticsearch 8) that `pulse indexer` writes and the search API reads: "
        "`http[s]://[USER:PASSWORD@]HOST:PORT` (the password, percent-encoded, is never "
        "shown).",
        _search_url,
        mask=_mask_url_password,
    ),
    Variable(
        "PULSE_SEARCH_CAFILE",
        "",
        "PEM file of the CA certificates that verify OpenSearch's certificate (an `https` "
        "`PULSE_SEARCH_URL`); unset: the system's CAs. Host names are always verified.",
        _file,
    ),
    Variable(
        "PULSE_SEARCH_PREFIX",
        "pulse",
        "Prefix of the indices, aliases and index templates Pulse makes: "
        "`{PREFIX}-alerts`, `{PREFIX}-dead-letters`, `{PREFIX}-windows`, each an alias of "
        "daily indices `{PREFIX}-{kind}-YYYY.MM.DD`.",
        _index_prefix,
    ),
    Variable(
        "PULSE_SEARCH_WINDOWS",
        "",
        "Comma-separated labels of the windows of `PULSE_WINDOWS` whose closed windows the "
        "indexer indexes (e.g. `1m`); unset: none (alerts and dead letters are always indexed).",
        _window_labels,
    ),
    Variable(
        "PULSE_SEARCH_RETENTION_DAYS",
        "30",
        "Days of event time the search indices keep: a daily index older than this is "
        "deleted whole, and an older document is not indexed; 0 keeps everything.",
        _integer(0),
    ),
    Variable(
        "PULSE_SEARCH_REPLICAS",
        "1",
        "Replicas of each daily index (`number_of_replicas`); one node leaves them "
        "unassigned (health yellow) until another joins.",
        _integer(0),
    ),
    Variable(
        "PULSE_SEARCH_BULK_BYTES",
        "5000000",
        "Largest body of one bulk request of the indexer, in bytes (a larger document goes alone).",
        _integer(1024),
    ),
    Variable(
        "PULSE_SEARCH_BULK_DOCS",
        "5000",
        "Most documents in one bulk request of the indexer.",
        _integer(1),
    ),
    Variable(
        "PULSE_INDEXER_PORT",
        "6070",
        "Port of `pulse indexer`'s `/health` and `/metrics`.",
        _integer(1, 65535),
    ),
)


VARIABLES: tuple[Variable, ...] = (
    Variable("PULSE_BROKER", "kafka://127.0.0.1:9092", "Kafka bootstrap servers.", _broker),
    Variable(
        "PULSE_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis for live state: `redis://[[USER]:PASSWORD@]HOST:PORT/DB`, or `rediss://` for "
        "TLS (see `PULSE_REDIS_SSL_CAFILE`); a unix socket: `unix:///PATH?db=N`; a Redis "
        "Cluster: "
        "`redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]` (some or all of its "
        "nodes; `rediss+cluster://` for TLS). A password here is a secret: shown as "
        f"`{REDACTED}`; set it here or in `PULSE_REDIS_PASSWORD_FILE`, not both.",
        _redis_url,
        mask=_mask_url_password,
    ),
    Variable(
        "PULSE_REDIS_PASSWORD_FILE",
        "",
        "File holding the Redis password (e.g. a mounted secret), for a `PULSE_REDIS_URL` "
        "without one; one trailing newline is ignored. Read once at start-up.",
        _file,
    ),
    Variable(
        "PULSE_REDIS_SSL_CAFILE",
        "",
        "PEM file of the CA certificates that verify Redis's certificate (`rediss://` or "
        "`rediss+cluster://` only); "
        "unset: the system's CAs. The host name is always verified.",
        _file,
    ),
    Variable(
        "PULSE_REDIS_SSL_CERTFILE",
        "",
        "PEM client certificate (chain) for a Redis that requires one (`tls-auth-clients`); "
        "it may hold the private key too.",
        _file,
    ),
    Variable(
        "PULSE_REDIS_SSL_KEYFILE",
        "",
        "PEM private key (unencrypted) of `PULSE_REDIS_SSL_CERTFILE`, if not in that file.",
        _file,
    ),
    Variable(
        "PULSE_POSTGRES_URL",
        "postgresql://pulse@127.0.0.1:5433/pulse",
        "PostgreSQL of the device registry (`pulse db upgrade` makes its schema): "
        "`postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?sslmode=...]`, libpq's URL. A "
        f"password here is a secret: shown as `{REDACTED}`; set it here or in "
        "`PULSE_POSTGRES_PASSWORD_FILE`, not both.",
        _postgres_url,
        mask=_mask_url_password,
    ),
    Variable(
        "PULSE_POSTGRES_PASSWORD_FILE",
        "",
        "File holding the PostgreSQL password (e.g. a mounted secret), for a "
        "`PULSE_POSTGRES_URL` without one; one trailing newline is ignored. Read once at "
        "start-up.",
        _file,
    ),
    Variable(
        "PULSE_REGISTRY_CACHE_TTL",
        "300",
        "Seconds a registry snapshot read from PostgreSQL stays cached in Redis "
        "(`{PULSE_REDIS_PREFIX}:registry:snapshot`, and each version under "
        "`{PULSE_REDIS_PREFIX}:registry:version:V` for replays); a change drops the newest "
        "at once (NOTIFY), so the TTL only bounds how long a copy outlives a missed "
        "notification, and how long a version stays readable while PostgreSQL is away.",
        _integer(1),
    ),
    Variable(
        "PULSE_REGISTRY_REQUIRED",
        "false",
        "Whether the worker dead-letters the readings of devices that are not in the registry "
        "or are disabled (reason `unknown_device`), by the registry version each partition "
        "records in its changelog, so a replay rejects the same readings.",
        _choice("true", "false"),
    ),
    Variable(
        "PULSE_INFLUX_URL",
        "http://127.0.0.1:8086",
        "InfluxDB 2.x (or a server that accepts its /api/v2/write) for closed windows.",
        _url("http", "https"),
    ),
    Variable(
        "PULSE_INFLUX_TOKEN",
        "",
        "InfluxDB API token (secret: taken verbatim, never shown or logged); set it or "
        "`PULSE_INFLUX_TOKEN_FILE`, not both. Unset: writes carry no token.",
        _text,
        secret=True,
    ),
    Variable(
        "PULSE_INFLUX_TOKEN_FILE",
        "",
        "File holding the InfluxDB API token (e.g. a mounted secret); one trailing newline is "
        "ignored. Read once at start-up.",
        _file,
    ),
    Variable("PULSE_INFLUX_ORG", "pulse", "InfluxDB organisation.", _name),
    Variable("PULSE_INFLUX_BUCKET", "pulse", "InfluxDB bucket.", _name),
    Variable(
        "PULSE_INFLUX_WRITER",
        "on",
        "Whether `pulse worker` also runs the InfluxDB writers, which read the aggregates "
        "topic back into InfluxDB (consumer group `{PULSE_APP_ID}-influx`) and the alerts "
        "topic into its `alerts` measurement (`{PULSE_APP_ID}-alerts-influx`): `on`, or "
        "`off` where they run alone (`pulse influx-writer`).",
        _choice("on", "off"),
    ),
    Variable(
        "PULSE_ALERTS_WRITER",
        "on",
        "Whether `pulse worker` also runs the alerts writer, which reads the alerts topic "
        "back into Redis (`{PULSE_REDIS_PREFIX}:alerts:active` and the `/api/live` event "
        "stream; consumer group `{PULSE_APP_ID}-alerts`): `on`, or `off` where it runs alone "
        "(`pulse alerts-writer`).",
        _choice("on", "off"),
    ),
    Variable(
        "PULSE_ALERTS_HISTORY",
        "on",
        "Whether `pulse worker` also runs the alerts' history writer, which reads the alerts "
        "topic back into the registry's PostgreSQL table `alert_history` (one row per "
        "transition, a replay adds none; consumer group `{PULSE_APP_ID}-alerts-history`): "
        "`on`, or `off` where it runs alone (`pulse alerts-history-writer`).",
        _choice("on", "off"),
    ),
    Variable(
        "PULSE_NOTIFIER_PORT",
        "6068",
        "Port of `pulse notifier`'s health and metrics (`/health/live`, `/health/ready`, "
        "`/metrics`).",
        _integer(1, 65535),
    ),
    Variable(
        "PULSE_NOTIFIER_MAX_ATTEMPTS",
        "8",
        "Tries of one webhook delivery that fails (connection error, timeout, HTTP 5xx or "
        "408) before it goes to the output dead-letter topic with the receiver's answer; "
        "429, and 503 with `Retry-After`, are waited out and never count.",
        _integer(1, 1000),
    ),
    Variable(
        "PULSE_NOTIFIER_RETRY_DELAY",
        "0.5",
        "Seconds before the second try of a failed webhook delivery; each later wait doubles "
        "(with jitter: half to all of it), up to `PULSE_NOTIFIER_MAX_RETRY_DELAY`.",
        _number(0.001, maximum=3600),
    ),
    Variable(
        "PULSE_NOTIFIER_MAX_RETRY_DELAY",
        "30",
        "The longest wait between two tries of a webhook delivery (a `Retry-After` is "
        "honoured up to 300 s instead).",
        _number(0.001, maximum=3600),
    ),
    Variable(
        "PULSE_NOTIFIER_TIMEOUT",
        "10",
        "Seconds a webhook has to answer one delivery (connecting included); longer is a "
        "failed try.",
        _number(0.001, maximum=3600),
    ),
    Variable(
        "PULSE_NOTIFIER_CONCURRENCY",
        "8",
        "Deliveries in flight at once per webhook, each for another device (one device's "
        "transitions go to a webhook one after another, in the topic's order).",
        _integer(1, 1000),
    ),
    Variable(
        "PULSE_STATS_INTERVAL",
        "10",
        "Seconds between a worker's points of its pipeline's health in InfluxDB "
        "(`pulse_stats`, `pulse_stats_worker`, `pulse_stats_sink`: pulse/measurements.py); "
        "0 writes none.",
        _number(0),
    ),
    Variable(
        "PULSE_APP_ID",
        "pulse",
        "Application id: the readings consumer group, and the prefix of Pulse's internal topics.",
        _name,
    ),
    Variable(
        "PULSE_WINDOWS",
        "10s,1m",
        "Comma-separated window specs: tumbling `10s`, hopping "
        "`5m/1m` (size/step), sliding `sliding:1m`. Units ms, s, m, h, d.",
        _windows,
    ),
    Variable(
        "PULSE_GRACE",
        "5",
        "Seconds of event time a window stays open after its end for out-of-order readings.",
        _number(0),
    ),
    Variable(
        "PULSE_CLOSE_SPREAD",
        "9",
        "Seconds of event time over which windows that end together (every series' "
        "epoch-aligned window) are closed while readings arrive, instead of all at once: "
        "smooths the burst of outputs, and delays final results by up to this much. "
        "Up to the smallest window step (the default suits `10s` windows: each burst is "
        "spread until the next) a longer spread lowers the peak; beyond it, it only delays. "
        "0 closes them at once.",
        _number(0),
    ),
    Variable(
        "PULSE_IDLE_CLOSE",
        "10",
        "Seconds without a new record after which a caught-up "
        "partition's watermark advances to wall-clock time minus the grace.",
        _number(0, strict=True),
    ),
    Variable("PULSE_TOPIC_READINGS", "readings", "Input topic.", _name),
    Variable("PULSE_TOPIC_AGGREGATES", "aggregates", "Output topic of closed windows.", _name),
    Variable("PULSE_TOPIC_DLQ", "readings-dlq", "Dead-letter topic for rejected records.", _name),
    Variable(
        "PULSE_TOPIC_ALERTS",
        "alerts",
        "Output topic of alert transitions (firing, resolved), keyed by device.",
        _name,
    ),
    Variable(
        "PULSE_TOPIC_OUTPUT_DLQ",
        "aggregates-dlq",
        "Dead-letter topic for outputs their target refused for their content (a line "
        "InfluxDB will not take, a record Kafka refuses as too large), each with the "
        "target's answer.",
        _name,
    ),
    Variable(
        "PULSE_REDIS_PREFIX",
        "pulse",
        "Prefix of every Redis key Pulse writes (no braces: the versions kept beside a key, "
        "`{KEY}:v`, are in its Redis Cluster slot by a hash tag).",
        _redis_prefix,
    ),
    Variable(
        "PULSE_STATE_TTL",
        "86400",
        "TTL in seconds of every Redis key Pulse writes, and of the versions that fence "
        "them against a worker that lost its partitions: at least `PULSE_SESSION_TIMEOUT`.",
        _integer(1),
    ),
    Variable(
        "PULSE_FLUSH_INTERVAL",
        "0.25",
        "Longest time between flushes of state to Redis, InfluxDB, the output topics and the "
        "changelog; flushes come up to five times as often while the previous one is done. "
        "A fetch that finds no new record waits at most a fifth of it.",
        _number(0.001),
    ),
    Variable(
        "PULSE_CATCH_UP_FLUSH_INTERVAL",
        "2",
        "Flush interval while the worker is catching up (more than a fetch's worth of records "
        "waiting): each key is then written once per this interval instead of once per "
        "`PULSE_FLUSH_INTERVAL`, as Kafka Streams' record cache does; never below "
        "`PULSE_FLUSH_INTERVAL`.",
        _number(0.001),
    ),
    Variable(
        "PULSE_MAX_MESSAGE_BYTES",
        "65536",
        "Largest accepted reading; larger records go to the dead-letter topic as `too_large`.",
        _integer(1),
    ),
    Variable(
        "PULSE_MAX_FUTURE",
        "30",
        "Seconds a reading's `ts` may be ahead of its record's Kafka timestamp; a reading "
        "stamped later goes to the dead-letter topic as `invalid_reading`, so that no clock "
        "that runs ahead can move its partition's watermark past the readings still to come "
        "(which would make them `late`). The topics Pulse creates take the broker's "
        "log-append time as the timestamp (docs/operations.md).",
        _number(0, maximum=1e9),
    ),
    Variable(
        "PULSE_MAX_TAG_VALUES",
        "1000",
        "Values of a tag key in use at once in a partition, at most (each makes new InfluxDB "
        "series); a reading whose tag would be one more goes to the dead-letter topic as "
        "`too_many_tag_values`. A value is in use until the windows of its latest reading "
        "have closed. Kept in the partition's state and changelog, so a replay rejects the "
        "same readings. A partition also has at most 64 tag keys in use.",
        _integer(1),
    ),
    Variable(
        "PULSE_WEB_PORT",
        "6066",
        "Port of the worker's health and metrics (`/health/live`, `/health/ready`, `/metrics`), "
        "and of the API and live page when `PULSE_WORKER_SERVES_API=true`.",
        _integer(1, 65535),
    ),
    Variable(
        "PULSE_WORKER_SERVES_API",
        "false",
        "Whether `pulse worker` also serves the HTTP API and the live page on "
        "`PULSE_WEB_PORT` (for the demo and small setups). Off, the worker serves its health "
        "and metrics only, and `pulse api` serves the API in a process of its own, so that no "
        "request waits on the worker's event loop.",
        _choice("true", "false"),
    ),
    Variable(
        "PULSE_API_PORT",
        "6067",
        "Port `pulse api` serves the HTTP API and the live page on.",
        _integer(1, 65535),
    ),
    Variable(
        "PULSE_API_TOKEN",
        "",
        "Token every `/api` request must carry as `Authorization: Bearer TOKEN` (secret: "
        "taken verbatim, never shown or logged); the live page signs in with it once and then "
        "uses a session cookie. Set it or `PULSE_API_TOKEN_FILE`, not both. Unset: the API is "
        "open. Health and metrics are always open.",
        _text,
        secret=True,
    ),
    Variable(
        "PULSE_API_TOKEN_FILE",
        "",
        "File holding the API token (e.g. a mounted secret); one trailing newline is ignored. "
        "Read once at start-up.",
        _file,
    ),
    Variable(
        "PULSE_HISTORY_LENGTH",
        "360",
        "Closed windows kept in Redis per (window, device, metric) for `/api/history`; older "
        "ones are read from the time-series store.",
        _integer(1, 100_000),
    ),
    Variable(
        "PULSE_HISTORY_CACHE_TTL",
        "300",
        "Seconds a range of history read from the time-series store stays cached in Redis.",
        _integer(1),
    ),
    Variable(
        "PULSE_HISTORY_STORE",
        "influx",
        "How the API reads history older than Redis holds from `PULSE_INFLUX_URL`: `influx` "
        "(InfluxDB 2, a Flux query) or `victoria` (VictoriaMetrics standing in for it, as the "
        "local stack runs it: its export API).",
        _choice("influx", "victoria"),
    ),
    Variable(
        "PULSE_BRIDGE_STREAMS",
        "",
        "The Redis streams `pulse bridge` moves into the readings topic: comma-separated "
        "names or glob patterns (`*`, `?`, `[...]`; found by SCAN); unset: "
        "`{PULSE_REDIS_PREFIX}:ingest:*`. Names may not hold `{` or `}` (the bridge's keys "
        "beside a stream, `{STREAM}:lease` and `{STREAM}:bridge`, share its cluster slot).",
        _bridge_streams,
    ),
    Variable(
        "PULSE_BRIDGE_LEASE",
        "10",
        "Seconds a bridge's lease on a stream lasts unless renewed (every sixth of it): a "
        "bridge that stops (crash, pause) loses its streams this long after its last renewal, "
        "and stops producing half this long after it, whatever it is doing then "
        '(docs/architecture.md, "The Redis Streams bridge").',
        _number(0.3),
    ),
    Variable(
        "PULSE_BRIDGE_MAX_LAG",
        "100000",
        "Entries a stream may hold that are not yet in Kafka before `pulse bridge` reports it "
        "(its log, `/metrics` `pulse_bridge_streams_over_max_lag`): gateways write faster than "
        "the bridges move, or no bridge runs.",
        _integer(1),
    ),
    Variable(
        "PULSE_BRIDGE_PORT",
        "6069",
        "Port of `pulse bridge`'s health and metrics (`/health/live`, `/health/ready`, "
        "`/metrics`).",
        _integer(1, 65535),
    ),
    Variable(
        "PULSE_PARTITIONS",
        "8",
        "Partitions of the topics Pulse creates when they do not "
        "exist (readings, aggregates, dead letters, changelog).",
        _integer(1),
    ),
    Variable(
        "PULSE_TOPIC_REPLICATION",
        "1",
        "Replication factor of the topics Pulse creates. 1 suits a one-broker development "
        "stack; on a cluster use 3 (Pulse then sets `min.insync.replicas=2`, and its "
        "producers wait for every in-sync replica). See docs/operations.md.",
        _integer(1, 32),
    ),
    Variable(
        "PULSE_SESSION_TIMEOUT",
        "6",
        "Consumer group session timeout in seconds; heartbeats "
        "go every sixth of it. See docs/operations.md for production values.",
        _number(1),
    ),
    Variable(
        "PULSE_CHANGELOG_TRANSACTIONS",
        "auto",
        "Whether each input partition's changelog writes go through its own Kafka "
        "transaction (transactional id `{PULSE_APP_ID}-changelog-{partition}`), so that the "
        "broker refuses the writes of a worker that lost the partition: `on`, `off`, or "
        "`auto` (on when the broker supports transactions, checked once at start; the local "
        "tansu broker does not). Off, the changelog is exact all the same (docs/architecture.md).",
        _choice("auto", "on", "off"),
    ),
    Variable(
        "PULSE_NO_EXTENSIONS",
        "0",
        "Steps to run on their Python definitions instead of Pulse's C extension (same "
        "results, more CPU): `0` none, `1` all of them (the extension is not even loaded), or "
        "a comma-separated list of the function names in `tables/_native.py` (to measure "
        "each: `bench/native.py`). Read once when Pulse is imported. Without a built "
        "extension Pulse warns and runs on the Python definitions.",
        _left_out,
    ),
    Variable(
        "PULSE_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "How every Kafka client of Pulse (the worker's, `pulse produce`'s) connects: "
        "`PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or `SASL_SSL` (SASL over TLS). "
        'See docs/operations.md, "Connecting to a secured Kafka".',
        _choice(*SECURITY_PROTOCOLS),
    ),
    Variable(
        "PULSE_KAFKA_SASL_MECHANISM",
        "",
        "SASL mechanism, `PLAIN` or `SCRAM-SHA-512`; required with the `SASL_*` protocols, "
        "and only with them.",
        _choice(*SASL_MECHANISMS, empty=True),
    ),
    Variable(
        "PULSE_KAFKA_SASL_USERNAME",
        "",
        "SASL user name; required with the `SASL_*` protocols.",
        _text,
    ),
    Variable(
        "PULSE_KAFKA_SASL_PASSWORD",
        "",
        "SASL password (secret: taken verbatim, never shown or logged). With the `SASL_*` "
        "protocols set exactly one of it and `PULSE_KAFKA_SASL_PASSWORD_FILE`.",
        _text,
        secret=True,
    ),
    Variable(
        "PULSE_KAFKA_SASL_PASSWORD_FILE",
        "",
        "File holding the SASL password (e.g. a mounted secret); one trailing newline is "
        "ignored. Read once at start-up.",
        _file,
    ),
    Variable(
        "PULSE_KAFKA_SSL_CAFILE",
        "",
        "PEM file of the CA certificates that verify the brokers' certificates (`SSL`, "
        "`SASL_SSL`); unset: the system's CAs. Host names are always verified.",
        _file,
    ),
    Variable(
        "PULSE_KAFKA_SSL_CERTFILE",
        "",
        "PEM client certificate (chain) for brokers that require one (mutual TLS); it may "
        "hold the private key too.",
        _file,
    ),
    Variable(
        "PULSE_KAFKA_SSL_KEYFILE",
        "",
        "PEM private key (unencrypted) of `PULSE_KAFKA_SSL_CERTFILE`, if not in that file.",
        _file,
    ),
    *SEARCH_VARIABLES,
)


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Build with :meth:`from_env`; immutable afterwards."""

    broker: str
    redis_url: str = field(repr=False)
    """As given: it may hold the password (``shown()`` masks it)."""
    influx_url: str
    influx_token: str = field(repr=False)
    """The token itself, also when read from ``influx_token_file``."""
    influx_org: str
    influx_bucket: str
    influx_writer: str
    alerts_writer: str
    app_id: str
    windows: tuple[WindowSpec, ...]
    grace: float
    close_spread: float
    idle_close: float
    topic_readings: str
    topic_aggregates: str
    topic_dlq: str
    topic_alerts: str
    topic_output_dlq: str
    redis_prefix: str
    state_ttl: int
    flush_interval: float
    catch_up_flush_interval: float
    max_message_bytes: int
    max_future: float
    max_tag_values: int
    web_port: int
    worker_serves_api: str
    api_port: int
    api_token: str = field(repr=False)
    """The token itself, also when read from ``api_token_file``."""
    api_token_file: str
    history_length: int
    history_cache_ttl: int
    history_store: str
    partitions: int
    topic_replication: int
    session_timeout: float
    changelog_transactions: str
    no_extensions: str
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    """The password itself, also when read from ``kafka_sasl_password_file``."""
    kafka_sasl_password_file: str = ""
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    influx_token_file: str = ""
    redis_password_file: str = ""
    redis_ssl_cafile: str = ""
    redis_ssl_certfile: str = ""
    redis_ssl_keyfile: str = ""
    stats_interval: float = 10.0
    redis_password: str = field(default="", repr=False)
    """The Redis password: the one in ``redis_url``, or the content of ``redis_password_file``
    ("" for none). Not a variable of its own."""
    postgres_url: str = field(default="postgresql://pulse@127.0.0.1:5433/pulse", repr=False)
    """As given: it may hold the password (``shown()`` masks it)."""
    postgres_password_file: str = ""
    registry_cache_ttl: int = 300
    registry_required: str = "false"
    alerts_history: str = "on"
    notifier_port: int = 6068
    notifier_max_attempts: int = 8
    notifier_retry_delay: float = 0.5
    notifier_max_retry_delay: float = 30.0
    notifier_timeout: float = 10.0
    notifier_concurrency: int = 8
    postgres_password: str = field(default="", repr=False)
    """The PostgreSQL password from ``postgres_password_file`` ("" for none: then libpq takes
    the URL's own, or none). Not a variable of its own."""
    bridge_streams: str = ""
    bridge_lease: float = 10.0
    bridge_max_lag: int = 100_000
    bridge_port: int = 6069
    search_url: str = field(default="http://127.0.0.1:9200", repr=False)
    """As given: it may hold the password (``shown()`` masks it)."""
    search_cafile: str = ""
    search_prefix: str = "pulse"
    search_windows: tuple[str, ...] = ()
    search_retention_days: int = 30
    search_replicas: int = 1
    search_bulk_bytes: int = 5_000_000
    search_bulk_docs: int = 5_000
    indexer_port: int = 6070

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``PULSE_*`` variable; raise :class:`SettingsError` naming a bad one (or
        a bad combination of the ``PULSE_KAFKA_*`` ones), never showing a secret."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = source.get(var.name, var.default)
            try:
                values[_attr(var)] = var.parse(raw if var.secret else raw.strip())
            except ValueError as exc:
                reason = (
                    str(exc)
                    if not str(exc).startswith("could not convert")
                    else ("is not a number")
                )
                if str(exc).startswith("invalid literal"):
                    reason = "is not a whole number"
                raise SettingsError(f"{var.name}={_repr(var.shown(raw))}: {reason}") from None
        values.update(overrides)
        if values["state_ttl"] < values["session_timeout"]:
            # The TTL is also how long a removed key's tombstone fences it (pulse/sinks/redis.py)
            raw = source.get("PULSE_STATE_TTL", str(values["state_ttl"]))
            if "state_ttl" in overrides:
                raw = str(values["state_ttl"])
            raise SettingsError(
                f"PULSE_STATE_TTL={raw!r}: must be at least PULSE_SESSION_TIMEOUT "
                f"({values['session_timeout']:g})"
            )
        _check_kafka_security(values)
        _check_influx(values)
        _check_redis(values)
        _check_postgres(values)
        _check_api(values)
        _check_search(values)
        return cls(**values)

    @property
    def bootstrap_servers(self) -> str:
        """``kafka://a:1,kafka://b:2`` -> ``a:1,b:2`` for Kafka clients."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker.split(","))

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-readings-state"

    @property
    def bridge_patterns(self) -> list[str]:
        """The streams ``pulse bridge`` moves (``PULSE_BRIDGE_STREAMS``): names or patterns."""
        if not self.bridge_streams:
            return [f"{self.redis_prefix}:ingest:*"]
        return self.bridge_streams.split(",")

    @property
    def grace_us(self) -> int:
        return round(self.grace * 1_000_000)

    @property
    def max_future_us(self) -> int:
        return round(self.max_future * 1_000_000)

    @property
    def close_spread_us(self) -> int:
        return round(self.close_spread * 1_000_000)

    def env(self) -> dict[str, str]:
        """The ``PULSE_*`` environment that reproduces these settings, secrets included (a
        password read from a file stays in its file)."""
        out = {}
        for var in VARIABLES:
            value = getattr(self, _attr(var))
            if var.name == "PULSE_WINDOWS":
                value = ",".join(spec.label for spec in value)
            if var.name == "PULSE_SEARCH_WINDOWS":
                value = ",".join(value)
            if var.name in _SECRET_FILES and getattr(self, _attr_of(_SECRET_FILES[var.name])):
                value = ""
            out[var.name] = str(value)
        return out

    def shown(self) -> dict[str, str]:
        """:meth:`env` with every secret that is set replaced by :data:`REDACTED`, a URL's
        password too (wherever a secret's text appears): what may be printed or logged
        (``pulse config``)."""
        shown = {var.name: var.shown for var in VARIABLES}
        return {name: self.redact(shown[name](value)) for name, value in self.env().items()}

    def redact(self, text: str) -> str:
        """``text`` with every secret of these settings replaced by :data:`REDACTED`: for
        messages built from what a client or server said, which Pulse does not control."""
        for secret in self._secrets():
            text = text.replace(secret, REDACTED)
        return text

    def _secrets(self) -> list[str]:
        """Every secret set, longest first (so that one inside another goes too), each also
        as it is percent-encoded in a URL."""
        values = [getattr(self, _attr(var)) for var in VARIABLES if var.secret]
        values.append(self.redis_password)
        values.append(self.postgres_password)
        values.append(_url_password(self.postgres_url))
        values.append(_url_password(self.search_url))
        forms = {form for value in values if value for form in (value, quote(value, safe=""))}
        return sorted(forms, key=len, reverse=True)


def _attr(var: Variable) -> str:
    return _attr_of(var.name)


def _attr_of(name: str) -> str:
    return name.removeprefix("PULSE_").lower()


def _repr(shown: str) -> str:
    return shown if shown == REDACTED else repr(shown)


_SECRET_FILES = {
    "PULSE_KAFKA_SASL_PASSWORD": "PULSE_KAFKA_SASL_PASSWORD_FILE",
    "PULSE_INFLUX_TOKEN": "PULSE_INFLUX_TOKEN_FILE",
    "PULSE_API_TOKEN": "PULSE_API_TOKEN_FILE",
}
"""Secret variable -> the variable of the file it may be read from instead."""


def _read_secret_file(variable: str, path: str) -> str:
    """The secret in the file ``path`` (of ``variable``): its content without one trailing
    newline. A file that cannot be read, is not UTF-8 or holds nothing is a
    :class:`SettingsError` naming the variable and the path, never the content."""
    try:
        with open(path, encoding="utf-8") as secret:
            value = secret.read().removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "is not UTF-8 text"
        raise SettingsError(f"{variable}={path!r}: {reason}") from None
    if not value:
        raise SettingsError(f"{variable}={path!r}: the file is empty")
    return value


def _check_influx(values: dict[str, Any]) -> None:
    """Read ``PULSE_INFLUX_TOKEN_FILE`` into the token; both set is an error."""
    path = values["influx_token_file"]
    if path and values["influx_token"]:
        raise SettingsError(
            "PULSE_INFLUX_TOKEN and PULSE_INFLUX_TOKEN_FILE are both set: set one of them"
        )
    if path:
        values["influx_token"] = _read_secret_file("PULSE_INFLUX_TOKEN_FILE", path)


def _check_api(values: dict[str, Any]) -> None:
    """Read ``PULSE_API_TOKEN_FILE`` into the token; both set is an error."""
    path = values["api_token_file"]
    if path and values["api_token"]:
        raise SettingsError(
            "PULSE_API_TOKEN and PULSE_API_TOKEN_FILE are both set: set one of them"
        )
    if path:
        values["api_token"] = _read_secret_file("PULSE_API_TOKEN_FILE", path)


def _check_postgres(values: dict[str, Any]) -> None:
    """Read ``PULSE_POSTGRES_PASSWORD_FILE``; a password in the URL as well is an error."""
    path = values["postgres_password_file"]
    if path and _url_password(values["postgres_url"]):
        raise SettingsError(
            "PULSE_POSTGRES_URL holds a password and PULSE_POSTGRES_PASSWORD_FILE is set: give "
            "the password in one of them"
        )
    values["postgres_password"] = (
        _read_secret_file("PULSE_POSTGRES_PASSWORD_FILE", path) if path else ""
    )


def _check_redis(values: dict[str, Any]) -> None:
    """Take the Redis password from the URL or ``PULSE_REDIS_PASSWORD_FILE`` (not both), and
    check that the ``PULSE_REDIS_SSL_*`` files go with a ``rediss://`` URL."""
    url, path = values["redis_url"], values["redis_password_file"]
    password = _url_password(url)
    if password and path:
        raise SettingsError(
            "PULSE_REDIS_URL holds a password and PULSE_REDIS_PASSWORD_FILE is set: give the "
            "password in one of them"
        )
    values["redis_password"] = (
        _read_secret_file("PULSE_REDIS_PASSWORD_FILE", path) if path else password
    )
    if not redis_uses_tls(url):
        for attr in ("redis_ssl_cafile", "redis_ssl_certfile", "redis_ssl_keyfile"):
            if values[attr]:
                raise SettingsError(
                    f"{_variable(attr)} is set, but PULSE_REDIS_URL is not a rediss:// or "
                    "rediss+cluster:// URL (TLS): use one, or unset it"
                )
    if values["redis_ssl_keyfile"] and not values["redis_ssl_certfile"]:
        raise SettingsError(
            "PULSE_REDIS_SSL_KEYFILE is set without PULSE_REDIS_SSL_CERTFILE, the certificate "
            "it belongs to"
        )


def _check_kafka_security(values: dict[str, Any]) -> None:
    """Check that the ``PULSE_KAFKA_*`` values fit together and read the password file;
    raise :class:`SettingsError` naming the variable to set or unset."""
    protocol = values["kafka_security_protocol"]
    given = f"PULSE_KAFKA_SECURITY_PROTOCOL={protocol}"
    sasl = (
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_sasl_password_file",
    )
    tls = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    if protocol.startswith("SASL_"):
        for attr in sasl[:2]:
            if not values[attr]:
                raise SettingsError(f"{_variable(attr)} must be set with {given}")
        password, path = values["kafka_sasl_password"], values["kafka_sasl_password_file"]
        if bool(password) == bool(path):
            raise SettingsError(
                "exactly one of PULSE_KAFKA_SASL_PASSWORD and PULSE_KAFKA_SASL_PASSWORD_FILE "
                f"must be set with {given}"
            )
        if path:
            values["kafka_sasl_password"] = _read_secret_file(
                "PULSE_KAFKA_SASL_PASSWORD_FILE", path
            )
    else:
        for attr in sasl:
            if values[attr]:
                raise SettingsError(
                    f"{_variable(attr)} is set, but {given} does not use SASL: "
                    "set PULSE_KAFKA_SECURITY_PROTOCOL to SASL_PLAINTEXT or SASL_SSL, or unset it"
                )
    if not protocol.endswith("SSL"):
        for attr in tls:
            if values[attr]:
                raise SettingsError(
                    f"{_variable(attr)} is set, but {given} does not use TLS: "
                    "set PULSE_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL, or unset it"
                )
    if values["kafka_ssl_keyfile"] and not values["kafka_ssl_certfile"]:
        raise SettingsError(
            "PULSE_KAFKA_SSL_KEYFILE is set without PULSE_KAFKA_SSL_CERTFILE, the certificate "
            "it belongs to"
        )


def _variable(attr: str) -> str:
    return f"PULSE_{attr.upper()}"


def _check_search(values: dict[str, Any]) -> None:
    """``PULSE_SEARCH_WINDOWS`` must name tumbling or hopping windows of ``PULSE_WINDOWS``;
    ``PULSE_SEARCH_CAFILE`` goes with an ``https`` URL."""
    if values["search_cafile"] and not values["search_url"].startswith("https://"):
        raise SettingsError(
            "PULSE_SEARCH_CAFILE is set, but PULSE_SEARCH_URL is not an https:// URL (TLS): "
            "use one, or unset it"
        )
    labels = {spec.label for spec in values["windows"] if spec.kind != "sliding"}
    for label in values["search_windows"]:
        if label not in labels:
            raise SettingsError(
                f"PULSE_SEARCH_WINDOWS={','.join(values['search_windows'])!r}: {label} is not "
                f"a tumbling or hopping window of PULSE_WINDOWS ({', '.join(sorted(labels))})"
            )


def configuration_markdown() -> str:
    """The configuration reference (docs/configuration.md)."""
    lines = [
        "# Configuration",
        "",
        "Pulse reads its configuration from environment variables. A bad value stops startup "
        "with a message naming the variable. Generated from `pulse/settings.py` by "
        "`pulse config --markdown`.",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(unset)"
        lines.append(f"| `{var.name}` | {default} | {var.help} |")
    lines += [
        "",
        "## The local development stack",
        "",
        "Read by `pulse stack` and `scripts/demo` (the `local` extra), not by the worker.",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    for name, default, meaning in LOCAL_STACK_VARIABLES:
        lines.append(f"| `{name}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


LOCAL_STACK_VARIABLES = (
    (
        "PULSE_STACK_BROKER",
        "tansu",
        "The local stack's broker: `tansu` (embedded, ready at once) or `kafka` (Apache "
        "Kafka, one KRaft node in a JVM, installed once by Maven).",
    ),
    (
        "PULSE_STACK_SEARCH",
        "(unset)",
        "Set (to anything but empty): `pulse stack up` also runs OpenSearch (`--search`): one "
        "node in a JVM, installed once by Maven.",
    ),
    (
        "PULSE_STATE_DIR",
        ".pulse/stack",
        "Where `pulse stack` keeps its servers' data, logs and `stack.json`.",
    ),
    (
        "PULSE_CACHE_DIR",
        "~/.cache/pulse",
        "Where Apache Kafka's jars and OpenSearch are kept once downloaded, shared by every "
        "checkout (`$XDG_CACHE_HOME/pulse` when that is set).",
    ),
)
"""Variables of pulse/local (documented here with the others, parsed there)."""
