"""The ``pulse`` command: worker, api, notifier, bridge, produce, state, history, config, the
live views (top, watch), the registry's commands, and the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import orjson

from pulse.settings import Settings, SettingsError, configuration_markdown

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None


def _kafka_options(settings: Settings) -> dict[str, Any]:
    """The Kafka clients' options, once a connection made with them was accepted (see
    :func:`pulse.kafka_clients.check_connection`): a wrong password, CA or protocol stops
    here with one message saying which, before any client retries."""
    from pulse.kafka_clients import KafkaConnectError, check_connection, client_options

    try:
        options = client_options(settings)
    except SettingsError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    _connect_once(check_connection(settings), KafkaConnectError)
    return options


def _check_redis(settings: Settings) -> None:
    """Connect to Redis once as every client will (see
    :func:`pulse.redis_clients.check_connection`): a wrong CA, a missing client certificate
    or a wrong password stops here with one message saying which."""
    from pulse.redis_clients import RedisConnectError, check_connection

    _connect_once(check_connection(settings), RedisConnectError)


def _connect_once(check: Coroutine[Any, Any, None], refused: type[Exception]) -> None:
    """Run a connection check; a bad setting or a refused connection stops the command with
    one message (no traceback)."""
    try:
        loop = asyncio.new_event_loop()  # not asyncio.run: Faust's worker wants the loop unset
        try:
            loop.run_until_complete(check)
        finally:
            loop.close()
    except SettingsError as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None
    except refused as exc:
        raise click.ClickException(str(exc)) from None


class _Main(click.Group):
    """The ``pulse`` group; ``stack`` is loaded only when asked for, as it needs the
    ``local`` extra, which the worker and its image do without."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "stack"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "stack":
            return super().get_command(ctx, cmd_name)
        from pulse.local.cli import stack

        return stack


@click.group(cls=_Main)
def main() -> None:
    """Pulse: exact event-time windows over sensor readings (Kafka -> Redis, InfluxDB)."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the worker (Faust's worker; its options pass through, e.g. ``-l info``)."""
    settings = _settings()
    _kafka_options(settings)  # fail here, naming the variable or problem, before Faust
    _check_redis(settings)
    from faust.cli.faust import cli as faust_cli

    # Pulse's own HTTP server (pulse.app.worker_http) serves PULSE_WEB_PORT; Faust's worker
    # command would otherwise enable Faust's web server again (its --with-web is the default,
    # whatever the app says) and bind port 6066, which two workers on one host cannot share.
    faust_cli.main(
        ["-A", "pulse.app:app", "worker", "--without-web", *ctx.args], prog_name="pulse worker"
    )


def _run_writers(module_name: str, classes: tuple[str, ...], loglevel: str) -> None:
    """Run the topic writers ``classes`` of the agents' module ``module_name`` until stopped."""
    import importlib

    from mode import Worker

    settings = _settings()
    _kafka_options(settings)
    from pulse.app import AGENT_PACKAGES

    # Named, not imported: pulse/ does not import the agents (as pulse.app discovers them).
    module = importlib.import_module(f"{AGENT_PACKAGES[0]}.{module_name}")
    writers = [getattr(module, name)(settings) for name in classes]
    Worker(*writers, loglevel=loglevel).execute_from_commandline()


@main.command(name="influx-writer")
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def influx_writer(loglevel: str) -> None:
    """Run only the InfluxDB writers (the aggregates topic into InfluxDB, the alerts topic into
    its alerts measurement), e.g. beside workers started with PULSE_INFLUX_WRITER=off."""
    _run_writers("influx_writer", ("InfluxWriter", "AlertsInfluxWriter"), loglevel)


@main.command(name="alerts-writer")
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def alerts_writer(loglevel: str) -> None:
    """Run only the alerts writer (the alerts topic into Redis's active alerts and the live
    event stream), e.g. beside workers started with PULSE_ALERTS_WRITER=off."""
    _check_redis(_settings())
    _run_writers("alerts_writer", ("AlertsWriter",), loglevel)


@main.command(name="alerts-history-writer")
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def alerts_history_writer(loglevel: str) -> None:
    """Run only the alerts' history writer (the alerts topic into PostgreSQL's alert_history),
    e.g. beside workers started with PULSE_ALERTS_HISTORY=off."""
    _run_writers("alert_history", ("AlertHistoryWriter",), loglevel)


@main.command()
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def notifier(loglevel: str) -> None:
    """Deliver alert transitions to the registry's webhooks (pulse notify add): the alerts
    topic with its own consumer group, retries and backoff, an Idempotency-Key per
    transition, undeliverable ones to the output dead-letter topic. Health and metrics on
    PULSE_NOTIFIER_PORT."""
    import importlib

    from mode import Worker

    from pulse.app import AGENT_PACKAGES

    settings = _settings()
    _kafka_options(settings)
    _check_redis(settings)
    # Named, not imported: pulse/ does not import the agents (as pulse.app discovers them).
    module = importlib.import_module(f"{AGENT_PACKAGES[0]}.notifier")
    Worker(*module.notifier_services(settings), loglevel=loglevel).execute_from_commandline()


@main.command()
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def bridge(loglevel: str) -> None:
    """Move the readings gateways append to Redis Streams (PULSE_BRIDGE_STREAMS) into the
    readings topic, exactly once; run several to share the streams."""
    from mode import Worker

    from pulse.bridge import Bridge, bridge_http, tune_gc

    settings = _settings()
    _kafka_options(settings)
    _check_redis(settings)
    tune_gc()
    service = Bridge(settings)
    Worker(service, bridge_http(service), loglevel=loglevel).execute_from_commandline()


@main.command()
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def indexer(loglevel: str) -> None:
    """Run the indexer: dead letters, alerts (and the windows of PULSE_SEARCH_WINDOWS) from
    their topics into OpenSearch (PULSE_SEARCH_URL), with /health and /metrics on
    PULSE_INDEXER_PORT; run as many as the topics have partitions."""
    import importlib

    from mode import Worker

    settings = _settings()
    _kafka_options(settings)
    from pulse.app import AGENT_PACKAGES

    # Named, not imported: pulse/ does not import the agents (as pulse.app discovers them).
    module = importlib.import_module(f"{AGENT_PACKAGES[0]}.indexer")
    Worker(*module.indexer_services(settings), loglevel=loglevel).execute_from_commandline()


@main.command()
@click.option("-l", "--loglevel", default="info", show_default=True, help="Logging level.")
def api(loglevel: str) -> None:
    """Serve the HTTP API and the live page on PULSE_API_PORT, reading Redis (and the
    time-series store for older history); run as many as you like behind a load balancer."""
    from mode import Worker

    from pulse.api import ApiContext, HttpServer, Readiness, create_api
    from pulse.gc_tuning import SERVICE_THRESHOLDS, freeze_startup
    from pulse.history import history_store
    from pulse.metrics import RegistryCollector, api_registry
    from pulse.redis_clients import redis_client
    from pulse.registry.cache import RegistryCache
    from pulse.registry.store import RegistryStore

    settings = _settings()
    _check_redis(settings)

    async def readiness() -> Readiness:
        return Readiness(True)

    redis = redis_client(settings)
    cache = RegistryCache(settings, RegistryStore(settings), redis)
    metrics = api_registry()
    metrics.register(RegistryCollector(cache))
    context = ApiContext(
        settings, redis, metrics, readiness, history_store(settings), device_registry=cache
    )
    server = HttpServer(create_api(context), settings.api_port)
    freeze_startup(SERVICE_THRESHOLDS)  # no full collection walks what start-up imported
    Worker(server, loglevel=loglevel).execute_from_commandline()


@main.command()
@click.option("--devices", default=100, show_default=True, help="Number of devices.")
@click.option(
    "--metrics",
    default="temperature,humidity",
    show_default=True,
    help="Comma-separated metric names.",
)
@click.option("--count", default=10_000, show_default=True, help="Readings to produce.")
@click.option(
    "--rate",
    default=1000.0,
    show_default=True,
    help="Readings per second (0: as fast as possible).",
)
@click.option("--seed", default=1, show_default=True, help="Seed of the random walk.")
@click.option(
    "--start-ts",
    type=float,
    default=None,
    help="Event time of the first reading (epoch s); default: the wall clock. A reading "
    "stamped more than PULSE_MAX_FUTURE ahead of the time it is written is dead-lettered.",
)
@click.option(
    "--step",
    default=0.001,
    show_default=True,
    help="Event-time seconds between readings when --start-ts is given.",
)
@click.option(
    "--via",
    type=click.Choice(["kafka", "redis"]),
    default="kafka",
    show_default=True,
    help="Into the readings topic, or appended to Redis streams "
    "{PULSE_REDIS_PREFIX}:ingest:gw-N for `pulse bridge` to move, as gateways do.",
)
@click.option(
    "--streams", default=4, show_default=True, help="With --via redis: streams to spread over."
)
def produce(
    devices: int,
    metrics: str,
    count: int,
    rate: float,
    seed: int,
    start_ts: float | None,
    step: float,
    via: str,
    streams: int,
) -> None:
    """Produce synthetic readings to the readings topic, with a progress bar."""
    from tqdm import tqdm

    from pulse.producer import SyntheticReadings
    from pulse.producer import produce as produce_readings
    from pulse.topics import TopicRefused, ensure_topics

    settings = _settings()
    if via == "redis":
        _produce_to_streams(settings, devices, metrics, count, rate, seed, start_ts, step, streams)
        return
    options = _kafka_options(settings)
    # Pulse's topics first, as a worker creates them: a broker that creates a topic on the
    # first write would give the readings topic the producers' clocks as timestamps.
    try:
        asyncio.run(ensure_topics(settings))
    except TopicRefused as exc:
        raise click.ClickException(str(exc)) from None
    readings = SyntheticReadings(
        devices=devices,
        metrics=tuple(m for m in metrics.split(",") if m),
        count=count,
        seed=seed,
        start_ts=start_ts,
        step=step,
    )
    with tqdm(total=count, unit="readings", file=sys.stderr) as bar:

        def progress(sent: int) -> None:
            bar.update(sent - bar.n)

        sent = asyncio.run(
            produce_readings(options, settings.topic_readings, readings, rate, progress)
        )
    click.echo(f"produced {sent} readings to {settings.topic_readings}", err=True)


def _produce_to_streams(
    settings: Settings,
    devices: int,
    metrics: str,
    count: int,
    rate: float,
    seed: int,
    start_ts: float | None,
    step: float,
    streams: int,
) -> None:
    """``pulse produce --via redis``: the readings appended to Redis streams."""
    from tqdm import tqdm

    from pulse.producer import SyntheticReadings, produce_to_streams
    from pulse.redis_clients import redis_client

    _check_redis(settings)
    readings = SyntheticReadings(
        devices=devices,
        metrics=tuple(m for m in metrics.split(",") if m),
        count=count,
        seed=seed,
        start_ts=start_ts,
        step=step,
    )

    async def run(bar: Any) -> int:
        client = redis_client(settings)
        try:
            return await produce_to_streams(
                client,
                settings.redis_prefix,
                readings,
                max(1, streams),
                rate,
                lambda sent: bar.update(sent - bar.n),
            )
        finally:
            await client.aclose()

    with tqdm(total=count, unit="readings", file=sys.stderr) as bar:
        sent = asyncio.run(run(bar))
    click.echo(
        f"appended {sent} readings to {settings.redis_prefix}:ingest:gw-* for pulse bridge",
        err=True,
    )


@main.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def state(device: str, as_json: bool) -> None:
    """Show DEVICE's latest values, open and last closed windows (from Redis)."""
    from redis.exceptions import RedisError

    from pulse.live_state import device_state
    from pulse.redis_clients import address, describe, redis_client

    settings = _settings()
    _check_redis(settings)

    async def read() -> dict:
        client = redis_client(settings)
        try:
            return await device_state(client, settings, device)
        finally:
            await client.aclose()

    try:
        found = asyncio.run(read())
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            settings.redact(
                f"cannot read from Redis ({describe(settings)}): {address(settings)}: {exc}"
            )
        ) from None
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    if not found["latest"]:
        raise click.ClickException(f"no live state for device {device!r} in Redis")
    click.echo(f"device {device}")
    for metric, latest in found["latest"].items():
        click.echo(f"  {metric:<16} latest {latest['value']!r} at ts {latest['ts']!r}")
    for kind in ("open", "closed"):
        for label, metrics in found[kind].items():
            for metric, fields in metrics.items():
                numbers = " ".join(
                    f"{name}={fields[name]!r}"
                    for name in ("count", "mean", "min", "max", "first", "last")
                    if name in fields
                )
                click.echo(
                    f"  {kind:<6} {label:<6} {metric:<16} [{fields['start']!r}, "
                    f"{fields['end']!r}) {numbers}"
                )


@main.command()
@click.argument("device")
@click.argument("metric")
@click.option("--window", default=None, help="A window of PULSE_WINDOWS (default: the first).")
@click.option(
    "--since",
    default=None,
    help="Start: epoch seconds, ISO-8601, or a duration before now (90s, 15m, 1h, 2d); "
    "default: as far back as Redis keeps history.",
)
@click.option("--until", default=None, help="End (excluded), as --since; default: now.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as /api/history) instead.")
def history(
    device: str,
    metric: str,
    window: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Show the closed windows of DEVICE's METRIC (from Redis, older ones from the store)."""
    from redis.exceptions import RedisError

    from pulse.api._errors import ApiError
    from pulse.api._history import history_answer
    from pulse.history import history_store
    from pulse.redis_clients import address, describe, redis_client

    settings = _settings()
    _check_redis(settings)

    async def read() -> dict[str, Any]:
        client = redis_client(settings)
        store = history_store(settings)
        try:
            return await history_answer(
                settings, client, store, device, metric, window, since, until
            )
        finally:
            await store.close()
            await client.aclose()

    try:
        # The API's JSON, read back: the windows from Redis are JSON fragments until then.
        found = orjson.loads(orjson.dumps(asyncio.run(read())))
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            settings.redact(
                f"cannot read from Redis ({describe(settings)}): {address(settings)}: {exc}"
            )
        ) from None
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(
        f"{found['device']} {found['metric']} {found['window']}: {len(found['windows'])} "
        f"windows from {_iso_utc(found['since'])} to {_iso_utc(found['until'])}"
    )
    names = ("count", "mean", "min", "max", "first", "last", "p95")
    click.echo(f"{'start (UTC)':<24} {'source':<6} " + " ".join(f"{n:>12}" for n in names))
    for w in found["windows"]:
        numbers = " ".join(f"{w[n]:>12.6g}" if n != "count" else f"{w[n]:>12}" for n in names)
        click.echo(f"{_iso_utc(w['start']):<24} {w['source']:<6} {numbers}")
    if found["store_error"]:
        click.echo(f"older windows missing: {found['store_error']}", err=True)


def _iso_utc(seconds: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds (``...Z``)."""
    import datetime

    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@main.command()
@click.option("--markdown", is_flag=True, help="Print the configuration reference.")
def config(markdown: bool) -> None:
    """Print the effective configuration (or, with --markdown, its reference)."""
    if markdown:
        click.echo(configuration_markdown(), nl=False)
        return
    for name, value in _settings().shown().items():
        click.echo(f"{name}={value}")


# -- live views: top and watch (the same validation and messages as the HTTP API) ---------


class _BadParameter(click.ClickException):
    """A parameter the API would answer 400 (or 404 for a window in its path) for: exit 2,
    as click's own usage errors, with the API's message."""

    exit_code = 2


def _checked(check: Callable[[], T]) -> T:
    """Run one of pulse.api._params' checks; its ApiError stops the command with its message."""
    from pulse.api._errors import ApiError

    try:
        return check()
    except ApiError as exc:
        raise _BadParameter(exc.message) from None


def _read_redis(settings: Settings, read: Callable[[Any], Awaitable[T]]) -> T:
    """``read(client)`` on a fresh Redis client; Redis away stops the command with one
    message (as ``pulse state``)."""
    from redis.exceptions import RedisError

    from pulse.redis_clients import address, describe, redis_client

    async def run() -> T:
        client = redis_client(settings)
        try:
            return await read(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            settings.redact(
                f"cannot read from Redis ({describe(settings)}): {address(settings)}: {exc}"
            )
        ) from None


@main.command()
@click.argument("window")
@click.argument("metric")
@click.option("-n", "count", default="10", show_default=True, help="Devices to show (1-1000).")
@click.option(
    "--order",
    type=click.Choice(["desc", "asc"]),
    default="desc",
    show_default=True,
    help="Highest means first (desc) or lowest (asc).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def top(window: str, metric: str, count: str, order: str, as_json: bool) -> None:
    """The devices with the highest (or lowest) mean in their last closed WINDOW of METRIC,
    as GET /api/top/{window}/{metric} shows them (from Redis)."""
    from pulse.api import _params
    from pulse.live_state import top_devices

    settings = _settings()
    window = _checked(lambda: _params.window_label(settings, window))
    metric = _checked(lambda: _params.metric_name(metric))
    n = _checked(lambda: _params.limit(count, "n", 10, TOP_MAX))
    _check_redis(settings)
    rows = _read_redis(
        settings,
        lambda client: top_devices(client, settings, window, metric, n, order == "desc"),
    )
    if rows is None:
        raise click.ClickException(f"metric {metric!r}: no closed {window} window yet")
    document = {
        "window": window,
        "metric": metric,
        "order": order,
        "devices": [{"device": device, "mean": mean} for device, mean in rows],
    }
    if as_json:
        click.echo(orjson.dumps(document).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metric}: mean of the last closed {window} window ({order})")
    table.add_column("#", justify="right")
    table.add_column("device")
    table.add_column("mean", justify="right")
    for rank, (device, mean) in enumerate(rows, 1):
        table.add_row(str(rank), device, repr(mean))
    Console().print(table)


TOP_MAX = 1000
"""Devices ``pulse top -n`` shows at most (as ``/api/top``)."""


@main.command()
@click.option("--all", "include_silenced", is_flag=True, help="Silenced alerts too.")
@click.option("--device", default=None, help="Only this device's alerts.")
@click.option("--site", default=None, help="Only the alerts of this site's devices.")
@click.option("--severity", default=None, help="Only alerts of this severity.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def alerts(
    include_silenced: bool,
    device: str | None,
    site: str | None,
    severity: str | None,
    as_json: bool,
) -> None:
    """The alerts firing now, the most recent first, as GET /api/alerts shows them (from
    Redis); silenced ones only with --all."""
    from pulse.api._alerts import alerts_answer, alerts_query

    settings = _settings()
    query = {"all": "true" if include_silenced else "false"}
    for name, value in (("device", device), ("site", site), ("severity", severity)):
        if value is not None:
            query[name] = value
    _checked(lambda: alerts_query(query))
    _check_redis(settings)
    document = _read_redis(settings, lambda client: alerts_answer(settings, client, query))
    if as_json:
        click.echo(orjson.dumps(document).decode())
        return
    found = document["alerts"]
    if not found:
        click.echo("no active alerts" + ("" if include_silenced else " (silenced ones: --all)"))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(found)} active alert{'s' if len(found) != 1 else ''}")
    for name in ("since (UTC)", "severity", "rule", "device", "site", "metric", "window"):
        table.add_column(name)
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    if include_silenced:
        table.add_column("silenced")
    for alert in found:
        row = [
            _iso_utc(alert["end"]),
            alert["severity"],
            alert["rule"],
            alert["device"],
            alert["site"] or "-",
            alert["metric"],
            alert["window"] or "absence",
            "-" if alert["value"] is None else repr(alert["value"]),
            repr(alert["threshold"]),
        ]
        if include_silenced:
            row.append("yes" if alert["silenced"] else "no")
        table.add_row(*row)
    Console().print(table)


_SEARCH_COLUMNS = {
    "dead-letters": ("reason", "device", "site", "detail"),
    "alerts": ("state", "severity", "rule", "device", "site", "metric", "window", "value"),
    "windows": ("window", "device", "metric", "count", "mean", "min", "max"),
}
"""What ``pulse search`` shows of each kind's documents, after the time (``--json``: all)."""


@main.command()
@click.argument("kind", type=click.Choice(["alerts", "dead-letters", "windows"]))
@click.option("-q", "--q", "q", default=None, help="Full text (dead letters: detail and value).")
@click.option("--device", default=None, help="Only this device's documents.")
@click.option("--site", default=None, help="Only this site's.")
@click.option("--metric", default=None, help="Only this metric's.")
@click.option("--reason", default=None, help="Dead letters of this reason.")
@click.option("--rule", default=None, help="Alerts of this rule.")
@click.option("--severity", default=None, help="Alerts of this severity.")
@click.option("--state", default=None, help="Alerts firing or resolved.")
@click.option("--window", default=None, help="Windows of this label.")
@click.option("--since", default=None, help="From (epoch seconds, ISO-8601, or 15m, 1h, 2d ago).")
@click.option("--until", default=None, help="Until (excluded), as --since; default: now.")
@click.option("--limit", default=None, help="Documents per page (1-500, 50).")
@click.option("--cursor", default=None, help="The page after the one that printed it.")
@click.option("--by", default=None, help="Count per interval per this term instead (stats).")
@click.option("--interval", default=None, help="With --by: the interval (1h).")
@click.option("--size", default=None, help="With --by: terms per interval (1-100, 10).")
@click.option("--aggregate", default=None, help="With --by, windows: the aggregate (mean).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def search(kind: str, as_json: bool, **options: str | None) -> None:
    """Search the indexed alerts, dead letters or windows (OpenSearch, PULSE_SEARCH_URL),
    newest first, as GET /api/search/KIND answers; with --by, count them per term and
    interval as GET /api/stats/KIND answers."""
    from pulse.api._errors import ApiError
    from pulse.api._search import search_answer, stats_answer
    from pulse.search.client import search_client

    settings = _settings()
    query = {name: value for name, value in options.items() if value is not None}
    answer = stats_answer if "by" in query else search_answer

    async def run() -> dict[str, Any]:
        client = search_client(settings, timeout=10.0)
        try:
            return await answer(settings, client, kind, query)
        finally:
            await client.close()

    try:
        document = asyncio.run(run())
    except ApiError as exc:
        if exc.status in (400, 404):
            raise _BadParameter(exc.message) from None
        raise click.ClickException(settings.redact(exc.message)) from None
    if as_json:
        click.echo(orjson.dumps(document).decode())
        return
    from rich.console import Console
    from rich.table import Table

    if "by" in query:
        what = f", mean {document['aggregate']}" if document["aggregate"] else ""
        table = Table(title=f"{kind} per {document['by']} every {document['interval']} s{what}")
        for name in ("from (UTC)", "count", "top terms", "others"):
            table.add_column(name)
        for interval in document["intervals"]:
            terms = ", ".join(
                f"{t['key']}={t['count']}"
                + ("" if t.get("value") is None else f" ({t['value']:.6g})")
                for t in interval["terms"]
            )
            row = [_iso_utc(interval["start"]), str(interval["count"]), terms or "-"]
            table.add_row(*row, str(interval["other"]))
        Console().print(table)
        return
    found = document["documents"]
    exact = "" if document["total_exact"] else " or more"
    table = Table(title=f"{document['total']}{exact} {kind}, newest first")
    columns = _SEARCH_COLUMNS[kind]
    for name in ("time (UTC)", *columns):
        table.add_column(name)
    for doc in found:
        cells = [_iso_utc(doc["time"] / 1000)]
        cells += ["-" if doc.get(name) is None else str(doc.get(name)) for name in columns]
        table.add_row(*cells)
    Console().print(table)
    if document["cursor"] is not None:
        click.echo(f"more: --cursor {document['cursor']}")


@main.command()
@click.argument("devices", nargs=-1)
@click.option(
    "-n",
    "count",
    default="10",
    show_default=True,
    help="Without DEVICE: how many of the most recently seen devices (1-1000).",
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between two refreshes.")
@click.option(
    "--refreshes",
    default=0,
    show_default=True,
    help="Stop after this many refreshes (0: until interrupted).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document per refresh.")
def watch(
    devices: tuple[str, ...], count: str, interval: float, refreshes: int, as_json: bool
) -> None:
    """A live table of DEVICEs' latest values and their open and last closed windows,
    refreshed from Redis; without DEVICE, the most recently seen devices.

    With --json, each refresh prints one line: {"time": epoch seconds, "devices": [...]},
    each device as GET /api/devices/{device} shows it."""
    from pulse.api import _params

    settings = _settings()
    names = [_checked(functools.partial(_params.device_name, device)) for device in devices]
    n = _checked(lambda: _params.limit(count, "n", 10, TOP_MAX))
    if not (interval > 0 and math.isfinite(interval)):
        raise _BadParameter("interval: must be a positive number of seconds")
    if refreshes < 0:
        raise _BadParameter("refreshes: must be 0 or more")
    _check_redis(settings)
    if as_json:
        _watch(settings, names, n, interval, refreshes, _print_json)
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    labels = [spec.label for spec in settings.windows if spec.kind != "sliding"]
    with Live(console=console, auto_refresh=False) as live:

        def show(document: dict[str, Any]) -> None:
            live.update(watch_table(document, labels), refresh=True)

        _watch(settings, names, n, interval, refreshes, show)


def _print_json(document: dict[str, Any]) -> None:
    click.echo(orjson.dumps(document).decode())


def _watch(
    settings: Settings,
    names: list[str],
    count: int,
    interval: float,
    refreshes: int,
    show: Callable[[dict[str, Any]], None],
) -> None:
    """Read the devices' state every ``interval`` and ``show`` it, ``refreshes`` times (0:
    until interrupted); Redis away stops it with one message."""
    from pulse.live_state import KnownMetrics, device_state, devices_page

    known = KnownMetrics()

    async def snapshot(client: Any) -> dict[str, Any]:
        chosen = names
        if not chosen:
            page, _ = await devices_page(client, settings, "", None, count)
            chosen = [entry["device"] for entry in page]
        states = [await device_state(client, settings, name, known) for name in chosen]
        return {"time": time.time(), "devices": states}

    async def loop(client: Any) -> None:
        done = 0
        while True:
            began = time.monotonic()
            show(await snapshot(client))
            done += 1
            if done == refreshes:
                return
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    with contextlib.suppress(KeyboardInterrupt):
        _read_redis(settings, loop)


def watch_rows(document: dict[str, Any], labels: list[str]) -> list[list[str]]:
    """The rows of ``pulse watch``'s table: per device and metric, its latest value and its
    time (UTC), then per window (``labels``) the open window and the last closed one as
    ``count x mean``; ``-`` where there is none. A device without live state is one row."""
    rows = []
    for state in document["devices"]:
        if not state["latest"]:
            rows.append([state["device"], "-", "no live state", *["-"] * (1 + 2 * len(labels))])
            continue
        for metric, latest in state["latest"].items():
            row = [state["device"], metric, repr(latest["value"]), _clock_utc(latest["ts"])]
            for label in labels:
                for kind in ("open", "closed"):
                    fields = state[kind].get(label, {}).get(metric)
                    row.append("-" if fields is None else f"{fields['count']} x {fields['mean']!r}")
            rows.append(row)
    return rows


def watch_table(document: dict[str, Any], labels: list[str]) -> Any:
    """``pulse watch``'s rich table of one refresh (see :func:`watch_rows`)."""
    from rich.table import Table

    table = Table(title=f"pulse watch ({_clock_utc(document['time'])})")
    for name in ("device", "metric", "latest", "at"):
        table.add_column(name, justify="right" if name == "latest" else "left")
    for label in labels:
        table.add_column(f"{label} open", justify="right")
        table.add_column(f"{label} closed", justify="right")
    for row in watch_rows(document, labels):
        table.add_row(*row)
    return table


def _clock_utc(seconds: float | None) -> str:
    """Epoch seconds as ``HH:MM:SS.mmm`` UTC (``-`` for none)."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S.%f")[:-3]


# -- the registry: devices, rules, silences, webhooks (PostgreSQL), and its schema ----------


def _registry(settings: Settings, change: Callable[[Any], Awaitable[T]]) -> T:
    """``change(store)`` on a fresh :class:`pulse.registry.store.RegistryStore`. A value the
    registry refuses stops the command with exit 2 and the message naming the field; an
    unknown entry with exit 1; PostgreSQL away or refusing with exit 1 and what it said."""
    import psycopg
    import psycopg_pool

    from models.alerts import RegistryError
    from pulse.registry._db import connect, describe_error
    from pulse.registry.store import RegistryNotFound, RegistryStore

    async def run() -> T:
        # One connection first, as every later one: PostgreSQL away or refusing stops here
        # at once with libpq's own reason, not after the pool's retries.
        await (await connect(settings)).close()
        store = RegistryStore(settings, max_size=1)
        await store.open()
        try:
            return await change(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except RegistryError as exc:
        raise _BadParameter(str(exc)) from None
    except RegistryNotFound as exc:
        raise click.ClickException(str(exc)) from None
    except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
        raise click.ClickException(
            f"cannot use the registry: {describe_error(settings, exc)} (is PostgreSQL up, and "
            "its schema made by `pulse db upgrade`?)"
        ) from None


def _entry(build: Callable[[], T]) -> T:
    """A registry entry built from the command's input (models.registry's ``new_*``): a
    value the registry refuses stops the command with exit 2, before PostgreSQL is asked."""
    from models.alerts import RegistryError

    try:
        return build()
    except RegistryError as exc:
        raise _BadParameter(str(exc)) from None


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise _BadParameter(f"labels: {pair[:80]!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _microseconds(seconds: float) -> int:
    """Seconds (the command line's unit) as the registry's whole µs."""
    return round(seconds * 1_000_000)


def _echo_json(document: Any) -> None:
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _change(what: str, change: Callable[[Any], Awaitable[int]]) -> None:
    """One change of the registry (``change(store)``), then ``{what}: registry version N``."""
    version = _registry(_settings(), change)
    click.echo(f"{what}: registry version {version}")


def _version_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--version", "version", type=int, default=None, help="As of this registry version."
    )(command)


def _listing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """A list command's ``--version`` (as of which registry version) and ``--json``."""
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)
    return _version_option(command)


def _echo_listing(
    version: int | None,
    as_json: bool,
    plural: str,
    items: Callable[[Any], Sequence[Any]],
    document: Callable[[Any], Any],
    line: Callable[[Any], str],
) -> None:
    """The ``items`` of the registry snapshot as of ``version`` (default the newest): JSON
    ``{"version": N, plural: [document(item)...]}``, or a count line and one line per item."""
    snapshot = _registry(_settings(), lambda store: store.snapshot(version))
    listed = items(snapshot)
    if as_json:
        _echo_json({"version": snapshot.version, plural: [document(each) for each in listed]})
        return
    click.echo(f"registry version {snapshot.version}: {len(listed)} {plural}")
    for each in listed:
        click.echo(line(each))


@main.group()
def db() -> None:
    """The registry's PostgreSQL schema (PULSE_POSTGRES_URL)."""


@db.command()
def upgrade() -> None:
    """Apply the registry's migrations not yet applied (none: nothing changes)."""
    import sqlalchemy.exc

    from pulse.registry import migrate
    from pulse.registry._db import describe_error

    settings = _settings()
    try:
        before, after = migrate.upgrade(settings)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(
            f"cannot upgrade the registry: {describe_error(settings, cause)}"
        ) from None
    if before == after:
        click.echo(f"registry schema at revision {after}: nothing to do")
    else:
        click.echo(f"registry schema upgraded from {before or 'nothing'} to revision {after}")


@main.group()
def devices() -> None:
    """The devices of the registry."""


@devices.command("add")
@click.argument("device_id", metavar="ID")
@click.option("--site", default=None, help="The device's site.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--disabled", is_flag=True, help="Register it disabled.")
def devices_add(device_id: str, site: str | None, labels: tuple[str, ...], disabled: bool) -> None:
    """Register device ID."""
    from models.registry import new_device

    device = _entry(lambda: new_device(device_id, site, _labels(labels), not disabled))
    _change(f"device {device_id} added", lambda store: store.add_device(device))


@devices.command("set")
@click.argument("device_id", metavar="ID")
@click.option("--site", default=None, help="A new site.")
@click.option("--no-site", is_flag=True, help="Clear the site.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE: replaces every label.")
@click.option("--enable/--disable", "enabled", default=None, help="Enable or disable it.")
def devices_set(
    device_id: str, site: str | None, no_site: bool, labels: tuple[str, ...], enabled: bool | None
) -> None:
    """Change device ID (what is not given stays)."""
    from pulse.registry.store import KEEP

    if site is not None and no_site:
        raise _BadParameter("site: give --site or --no-site, not both")
    new_site: Any = None if no_site else (site if site is not None else KEEP)
    new_labels = _labels(labels) if labels else None
    _change(
        f"device {device_id} changed",
        lambda store: store.set_device(
            device_id, site=new_site, labels=new_labels, enabled=enabled
        ),
    )


@devices.command("rm")
@click.argument("device_id", metavar="ID")
def devices_rm(device_id: str) -> None:
    """Remove device ID (its history stays: earlier versions still hold it)."""
    _change(f"device {device_id} removed", lambda store: store.remove_device(device_id))


@devices.command("list")
@_listing_options
def devices_list(version: int | None, as_json: bool) -> None:
    """The registered devices (as of --version, default the newest)."""
    from models.registry import device_document

    def line(device: Any) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(device.labels.items())) or "-"
        state = "enabled" if device.enabled else "disabled"
        return f"{device.id:<24} {device.site or '-':<16} {state:<9} {labels}"

    _echo_listing(version, as_json, "devices", lambda s: s.registry.devices, device_document, line)


@main.group()
def rules() -> None:
    """The alert and absence rules of the registry."""


@rules.command("add")
@click.argument("name")
@click.option("--metric", required=True, help="The metric the rule watches.")
@click.option("--window", default=None, help="A tumbling or hopping window (10s, 5m/1m).")
@click.option("--aggregate", default=None, help="count, sum, min, max, mean, first, last, p50...")
@click.option("--op", "comparison", default=None, help="> >= < <=")
@click.option("--threshold", default=None, help="Fires beyond it.")
@click.option("--clear", "clear_threshold", default=None,
              help="Resolves past it (hysteresis; default: the threshold).")  # fmt: skip
@click.option("--for", "for_count", default=1, show_default=True, type=int,
              help="Consecutive windows to fire and to resolve.")  # fmt: skip
@click.option("--absent-for", default=None, help="An absence rule: no reading for (90s, 15m...).")
@click.option("--device", default=None, help="Only this device.")
@click.option("--site", default=None, help="Only the devices of this site.")
@click.option("--severity", default="warning", show_default=True, help="info, warning, critical")
@click.option("--disabled", is_flag=True, help="Add it disabled.")
def rules_add(
    name: str,
    metric: str,
    window: str | None,
    aggregate: str | None,
    comparison: str | None,
    threshold: str | None,
    clear_threshold: str | None,
    for_count: int,
    absent_for: str | None,
    device: str | None,
    site: str | None,
    severity: str,
    disabled: bool,
) -> None:
    """Add an alert rule NAME (--window, --aggregate, --op, --threshold) or an absence rule
    (--absent-for), for all devices, one --device or a --site."""
    from models.registry import new_absence_rule, new_rule
    from pulse.api import _params

    if absent_for is not None:
        for option, given in (("window", window), ("aggregate", aggregate), ("op", comparison),
                              ("threshold", threshold), ("clear", clear_threshold)):  # fmt: skip
            if given is not None:
                raise _BadParameter(f"{option}: an absence rule (--absent-for) takes no --{option}")
        seconds = _checked(lambda: _params.duration(absent_for, "absent-for"))
        absence = _entry(
            lambda: new_absence_rule(
                name, metric, _microseconds(seconds), device=device, site=site, severity=severity,
                enabled=not disabled,
            )
        )  # fmt: skip
        _change(f"absence rule {name} added", lambda store: store.add_absence_rule(absence))
        return
    for option, given in (("window", window), ("aggregate", aggregate), ("op", comparison),
                          ("threshold", threshold)):  # fmt: skip
        if given is None:
            raise _BadParameter(f"{option}: an alert rule needs --{option} (or --absent-for)")
    assert window and aggregate and comparison and threshold is not None
    rule = _entry(
        lambda: new_rule(
            name, metric, window, aggregate, comparison, threshold, clear_threshold, for_count,
            device=device, site=site, severity=severity, enabled=not disabled,
        )
    )  # fmt: skip
    _change(f"rule {name} added", lambda store: store.add_rule(rule))


@rules.command("rm")
@click.argument("name")
def rules_rm(name: str) -> None:
    """Remove the alert or absence rule NAME."""
    _change(f"rule {name} removed", lambda store: store.remove_rule(name))


def _scope(selector: Any) -> str:
    if selector.device is not None:
        return f"device={selector.device}"
    return "all" if selector.site is None else f"site={selector.site}"


@rules.command("list")
@_version_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as /api/rules).")
def rules_list(version: int | None, as_json: bool) -> None:
    """The alert and absence rules (as of --version, default the newest)."""
    from pulse.api._registry import rules_document

    registry = _registry(_settings(), lambda store: store.snapshot(version)).registry
    if as_json:
        _echo_json(rules_document(registry))
        return
    click.echo(
        f"registry version {registry.version}: {len(registry.rules)} alert rules, "
        f"{len(registry.absence_rules)} absence rules"
    )
    for r in registry.rules:
        click.echo(
            f"{r.name:<20} {r.aggregate}({r.metric}, {r.window}) {r.comparison} {r.threshold!r} "
            f"clear {r.clear_at!r} for {r.for_count} {_scope(r.selector)} {r.severity}"
            + ("" if r.enabled else " disabled")
        )
    for a in registry.absence_rules:
        click.echo(
            f"{a.name:<20} no {a.metric} for {a.duration_us / 1_000_000:g} s "
            f"{_scope(a.selector)} {a.severity}" + ("" if a.enabled else " disabled")
        )


@main.group()
def silence() -> None:
    """Silences: a rule (or every rule) muted for a device, a site or every device until a
    time."""


@silence.command("add")
@click.option("--rule", default=None, help="The rule to mute (default: every rule).")
@click.option("--device", default=None, help="Mute it for this device...")
@click.option("--site", default=None, help="...or the devices of this site (default: all).")
@click.option("--until", "until_text", default=None, help="Until: epoch seconds or ISO-8601.")
@click.option("--for", "for_text", default=None, help="Or for a duration (90s, 15m, 1h, 2d).")
def silence_add(
    rule: str | None,
    device: str | None,
    site: str | None,
    until_text: str | None,
    for_text: str | None,
) -> None:
    """Add a silence (of --rule, for --device or --site: at least one of them); prints its
    id."""
    from models.registry import new_silence
    from pulse.api import _params

    if (until_text is None) == (for_text is None):
        raise _BadParameter("until: give --until or --for (one of them)")
    now = time.time()
    if until_text is not None:
        until = _checked(lambda: _params.time_bound(until_text, "until", now))
    else:
        assert for_text is not None
        until = now + _checked(lambda: _params.duration(for_text, "for"))
    muted = _entry(lambda: new_silence(rule, device, site, _microseconds(until)))
    settings = _settings()
    silence_id, version = _registry(settings, lambda store: store.add_silence(muted))
    click.echo(f"silence {silence_id} added: registry version {version}")


@silence.command("rm")
@click.argument("silence_id", metavar="ID", type=int)
def silence_rm(silence_id: int) -> None:
    """Remove silence ID."""
    _change(f"silence {silence_id} removed", lambda store: store.remove_silence(silence_id))


@silence.command("list")
@_listing_options
def silence_list(version: int | None, as_json: bool) -> None:
    """The silences (as of --version), including those whose time has passed."""
    from models.registry import silence_document

    def line(s: Any) -> str:
        target = (
            f"device={s.device}" if s.device else f"site={s.site}" if s.site else "every device"
        )
        return (
            f"{s.id:<6} {s.rule or '(every rule)':<20} {target} "
            f"until {_iso_utc(s.until_us / 1_000_000)}"
        )

    _echo_listing(
        version, as_json, "silences", lambda s: s.registry.silences, silence_document, line
    )


@main.group()
def notify() -> None:
    """Webhooks: where alerts are sent, per rule or severity (or all)."""


@notify.command("add")
@click.argument("url")
@click.option("--rule", default=None, help="Only this rule's alerts.")
@click.option("--severity", default=None, help="Only alerts of this severity.")
def notify_add(url: str, rule: str | None, severity: str | None) -> None:
    """Send alerts to URL; prints the webhook's id."""
    from models.registry import new_webhook

    _entry(lambda: new_webhook(0, url, rule, severity))
    settings = _settings()
    hook_id, version = _registry(settings, lambda store: store.add_webhook(url, rule, severity))
    click.echo(f"webhook {hook_id} added: registry version {version}")


@notify.command("rm")
@click.argument("webhook_id", metavar="ID", type=int)
def notify_rm(webhook_id: int) -> None:
    """Remove webhook ID."""
    _change(f"webhook {webhook_id} removed", lambda store: store.remove_webhook(webhook_id))


@notify.command("list")
@_listing_options
def notify_list(version: int | None, as_json: bool) -> None:
    """The webhooks (as of --version)."""
    from models.registry import webhook_document

    def line(w: Any) -> str:
        scope = f"rule {w.rule}" if w.rule else f"severity {w.severity}" if w.severity else "all"
        return f"{w.id:<6} {w.url} ({scope})"

    _echo_listing(version, as_json, "webhooks", lambda s: s.webhooks, webhook_document, line)
