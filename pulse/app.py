"""The Faust app: the frame that runs the readings processor, agents, timers and web views.

``pulse worker`` (or ``faust -A pulse.app worker``) runs it. Settings come from the
environment when the module is imported, so a bad ``PULSE_*`` value stops startup at once
with a message naming it.
"""

from __future__ import annotations

import logging

import faust

from pulse.settings import Settings


def create_app(settings: Settings | None = None) -> faust.App:
    """Build the app for ``settings`` (default: from the environment)."""
    from agents import dead_letters, readings
    from pulse import web

    settings = settings or Settings.from_env()
    # Every recovery consumer would log its (manual) subscription at INFO.
    logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        web_port=settings.web_port,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.session_timeout / 6,
        topic_partitions=settings.partitions,
        store="memory://",
        autodiscover=False,
        value_serializer="raw",
        key_serializer="raw",
    )
    processor = readings.ReadingsProcessor(settings)
    app.pulse_settings = settings  # type: ignore[attr-defined]
    app.pulse_processor = processor  # type: ignore[attr-defined]

    # A child of the app, not an @app.service: those start only after Faust's own consumer
    # group has formed, and two group joins in a row would double the start-up time.
    app.add_dependency(processor)
    dead_letters.register(app, settings)
    web.register(app, settings, processor)
    return app


def __getattr__(name: str) -> faust.App:
    # ``pulse.app:app`` is built on first use, not at import, so tests can import this module.
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(name)
