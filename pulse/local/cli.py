"""``pulse stack up|down|status``: the embedded local stack from the command line.

``up`` prints only ``export PULSE_...=...`` lines on stdout (messages go to stderr), so
``eval "$(pulse stack up)"`` points the current shell at the stack.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pulse.local.stack import BROKERS, LocalStack, StackError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STATE_DIR = Path(".pulse") / "stack"


def _state_dir_option(command: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="PULSE_STATE_DIR",
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help="Directory of the servers' data, logs and stack.json (env PULSE_STATE_DIR).",
    )(command)


@click.group()
def stack() -> None:
    """Run a Kafka broker (tansu or Apache Kafka), Redis, VictoriaMetrics and PostgreSQL (and
    OpenSearch with --search) on loopback."""


@stack.command()
@_state_dir_option
@click.option(
    "--free-ports",
    is_flag=True,
    help="Use free ports instead of the defaults (broker 9092, redis 6390, influx 8428, "
    "postgres 5433, search 9200).",
)
@click.option(
    "--broker",
    type=click.Choice(BROKERS),
    envvar="PULSE_STACK_BROKER",
    default="tansu",
    show_default=True,
    help="tansu (embedded, starts at once) or Apache Kafka (installed once with Maven into "
    "the cache, a JVM; env PULSE_STACK_BROKER).",
)
@click.option(
    "--search",
    is_flag=True,
    envvar="PULSE_STACK_SEARCH",
    help="Also run OpenSearch, for the indexer and the search API (installed once with Maven "
    "into the cache, a JVM; env PULSE_STACK_SEARCH).",
)
def up(state_dir: Path, free_ports: bool, broker: str, search: bool) -> None:
    """Start the stack (or reuse a running one) and print its PULSE_* exports."""
    local = LocalStack(state_dir, default_ports=not free_ports)
    try:
        endpoints = local.up(broker, search=search)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    ready = {server.name: server.ready_seconds for server in local.last_started}
    for name, info in local.status().items():
        how = f"ready in {ready[name]:.1f} s" if ready.get(name) is not None else "already up"
        click.echo(f"{name}: {info['kind']} {info['url']} (pid {info['pid']}, {how})", err=True)
    click.echo(f"state in {state_dir}; stop with: pulse stack down", err=True)
    for variable, value in endpoints.env().items():
        click.echo(f"export {variable}={shlex.quote(value)}")


@stack.command()
@_state_dir_option
def down(state_dir: Path) -> None:
    """Stop the servers of the stack in STATE_DIR."""
    local = LocalStack(state_dir)
    running = [name for name, info in local.status().items() if info["pid"] is not None]
    try:
        local.down()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if running:
        click.echo(f"stopped: {', '.join(running)}", err=True)
    else:
        click.echo(f"no stack recorded in {state_dir}", err=True)


@stack.command()
@_state_dir_option
def status(state_dir: Path) -> None:
    """One line per server: name, state, pid, URL. Exits 1 unless all answer."""
    info = LocalStack(state_dir).status()
    for name, server in info.items():
        if server["answering"]:
            state = "up"
        elif server["alive"]:
            state = "not-answering"
        else:
            state = "stopped"
        pid = server["pid"] if server["pid"] is not None else "-"
        url = server["url"] or "-"
        kind = server["kind"] or "-"
        click.echo(f"{name:<8} {kind:<8} {state:<13} pid={pid} {url}")
    if not all(server["answering"] for server in info.values()):
        raise SystemExit(1)
