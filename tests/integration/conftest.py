"""The end-to-end tests run on both brokers: ``broker`` is here a test parameter."""

from __future__ import annotations

import pytest

from tests.servers import SessionServers

BROKERS = {"tansu": "broker", "kafka": "kafka"}
"""Test parameter -> the session server (tests/servers.py) that is that broker."""


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest, _session_servers: SessionServers) -> str:
    """``kafka://127.0.0.1:PORT`` of the session's Apache Kafka, then of its tansu."""
    return _session_servers.get(BROKERS[request.param]).url
