"""Topic creation waits until the topics it created are described before checking them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pulse import topics
from pulse.settings import Settings


class JustCreated:
    """An admin client whose new topics are described with an error at first, as a broker
    does while a topic's metadata propagates."""

    def __init__(self, failing_describes: int) -> None:
        self.topics: dict[str, int] = {}
        self.failing = failing_describes

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def create_topics(self, new: list[Any]) -> None:
        for topic in new:
            self.topics[topic.name] = topic.num_partitions

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.failing -= 1
        return [
            {"topic": name, "error_code": 5, "partitions": []}  # LEADER_NOT_AVAILABLE
            if self.failing >= 0 and name.endswith("-state")
            else {"topic": name, "error_code": 0, "partitions": [{}] * self.topics[name]}
            for name in names
        ]


def test_topics_just_created_are_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = JustCreated(failing_describes=3)
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", lambda **_: admin)
    settings = Settings.from_env({"PULSE_PARTITIONS": "4"})
    counts = asyncio.run(topics.ensure_topics(settings))
    assert counts == {
        "readings": 4,
        "aggregates": 4,
        "readings-dlq": 4,
        "pulse-readings-state": 4,
    }


def test_a_changelog_that_does_not_match_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = JustCreated(failing_describes=0)
    admin.topics = {"readings": 4, "pulse-readings-state": 2}
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", lambda **_: admin)
    with pytest.raises(RuntimeError, match="has 2 partitions but readings has 4"):
        asyncio.run(topics.ensure_topics(Settings.from_env({})))
