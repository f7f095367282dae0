"""Whether the readings processor writes its changelog in transactions
(``PULSE_CHANGELOG_TRANSACTIONS``): ``auto`` asks the broker, ``on`` requires them, ``off``
never asks."""

from __future__ import annotations

import asyncio

import pytest

from agents.readings import ReadingsProcessor
from pulse.settings import Settings

pytestmark = pytest.mark.integration


def transactional(broker: str, mode: str) -> bool:
    settings = Settings.from_env({"PULSE_BROKER": broker, "PULSE_CHANGELOG_TRANSACTIONS": mode})
    return asyncio.run(ReadingsProcessor(settings)._changelog_transactions())


def test_auto_uses_them_on_apache_kafka_and_not_on_tansu(kafka_broker: str, broker: str) -> None:
    assert transactional(kafka_broker, "auto") is True
    assert transactional(broker, "auto") is False


def test_on_requires_them(kafka_broker: str, broker: str) -> None:
    assert transactional(kafka_broker, "on") is True
    with pytest.raises(RuntimeError, match="PULSE_CHANGELOG_TRANSACTIONS=on, but the broker"):
        transactional(broker, "on")


def test_off_never_uses_them() -> None:
    # No broker listens there: off does not even ask.
    assert transactional("kafka://127.0.0.1:1", "off") is False
