"""OpenSearch of the local stack and the tests: installed from Maven Central, one node on
loopback, a document indexed and read back; ``pulse stack up --search``."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import urllib.request
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from opensearchpy import AsyncOpenSearch

from pulse.local import opensearch
from pulse.local.cli import stack as stack_cli
from pulse.local.stack import LocalStack, opensearch_answers, postgres_data_dir

pytestmark = pytest.mark.integration


def test_the_node_settings_keep_it_on_loopback_alone(tmp_path: Path) -> None:
    settings = opensearch.node_settings(19200, 19300, tmp_path)
    lines = dict(line.split(": ", 1) for line in settings.splitlines() if line)
    assert lines == {
        "cluster.name": opensearch.CLUSTER_NAME,
        "node.name": "pulse",
        "path.data": str(tmp_path / "data"),
        "path.logs": str(tmp_path / "logs"),
        "network.host": "127.0.0.1",
        "http.port": "19200",
        "transport.port": "19300",
        "discovery.type": "single-node",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }


def test_the_distribution_is_unpacked_once_with_its_scripts_executable() -> None:
    home = opensearch.opensearch_home()
    assert opensearch.opensearch_home() == home
    assert os.access(home / "bin" / "opensearch", os.X_OK)
    assert (home / "lib" / f"opensearch-{opensearch.OPENSEARCH_VERSION}.jar").is_file()
    # The integration-test distribution: HTTP and transport, and no plugin at all.
    assert sorted(p.name for p in (home / "modules").iterdir()) == ["transport-netty4"]
    assert list((home / "plugins").iterdir()) == []


def test_the_jvm_runs_with_a_small_heap_and_writes_no_dumps(tmp_path: Path) -> None:
    command = opensearch.opensearch_command(opensearch.java_executable(), 19200, tmp_path, 19300)
    options = (tmp_path / "config" / "jvm.options").read_text().splitlines()
    heap = [line for line in options if line.startswith(("-Xms", "-Xmx"))]
    assert heap == [f"-Xms{opensearch.HEAP}", f"-Xmx{opensearch.HEAP}"]
    assert not [line for line in options if "HeapDump" in line or "gc.log" in line]
    assert f"-Dopensearch.path.conf={tmp_path / 'config'}" in command
    assert command[-1] == "org.opensearch.bootstrap.OpenSearch"
    assert "-Xmx512m" in command and "-Xms512m" in command
    # OpenSearch refuses root: as root it runs in a user namespace of its own.
    assert ("--user" in command) == (os.geteuid() == 0)


async def _round_trip(url: str, index: str) -> tuple[dict, dict]:
    client = AsyncOpenSearch(hosts=[url])
    try:
        document = {"device": "dev-0001", "reason": "invalid_json", "time": 1795315444250}
        await client.index(index=index, id="readings:0:7", body=document, refresh=True)
        fetched = await client.get(index=index, id="readings:0:7")
        found = await client.search(
            index=index, body={"query": {"term": {"device.keyword": "dev-0001"}}}
        )
        await client.indices.delete(index=index)
        return fetched, found
    finally:
        await client.close()


def test_the_session_node_indexes_a_document_and_reads_it_back(
    search_url: str, topic_prefix: str
) -> None:
    fetched, found = asyncio.run(_round_trip(search_url, f"{topic_prefix}-check"))
    assert fetched["found"] is True
    assert fetched["_source"] == {
        "device": "dev-0001",
        "reason": "invalid_json",
        "time": 1795315444250,
    }
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["readings:0:7"]
    with urllib.request.urlopen(search_url, timeout=5) as response:
        about = orjson.loads(response.read())
    assert about["version"]["number"] == opensearch.OPENSEARCH_VERSION
    assert about["cluster_name"] == opensearch.CLUSTER_NAME


def test_stack_up_search_runs_opensearch_beside_the_others_and_down_stops_it(
    tmp_path: Path,
) -> None:
    state = tmp_path / "stack"
    runner = CliRunner()
    try:
        up = runner.invoke(stack_cli, ["up", "--free-ports", "--search", "--state-dir", str(state)])
        assert up.exit_code == 0, up.output
        exports = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1)
            for line in up.stdout.splitlines()
        )
        status = LocalStack(state).status()
        assert set(status) == {"broker", "redis", "influx", "postgres", "search"}
        assert all(info["answering"] for info in status.values())
        assert exports["PULSE_SEARCH_URL"] == status["search"]["url"]
        assert opensearch_answers(status["search"]["port"])

        # A second `up` without --search keeps it; `status` lists it.
        again = runner.invoke(stack_cli, ["up", "--free-ports", "--state-dir", str(state)])
        assert again.exit_code == 0, again.output
        assert LocalStack(state).status()["search"]["pid"] == status["search"]["pid"]
        shown = runner.invoke(stack_cli, ["status", "--state-dir", str(state)])
        assert shown.exit_code == 0, shown.output
        assert [line.split()[:3] for line in shown.stdout.splitlines()][-1] == [
            "search",
            "search",
            "up",
        ]
    finally:
        down = runner.invoke(stack_cli, ["down", "--state-dir", str(state)])
        shutil.rmtree(postgres_data_dir(state / "postgres"), ignore_errors=True)
    assert down.exit_code == 0, down.output
    assert not opensearch_answers(status["search"]["port"])
    assert not Path(f"/proc/{status['search']['pid']}").exists() or (
        Path(f"/proc/{status['search']['pid']}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        == "Z"
    )
