"""``pulse bridge``: gateways' readings from Redis Streams into topic ``readings``, exactly
once (pulse/bridge/service.py; docs/architecture.md, "The Redis Streams bridge")."""

from pulse.bridge.http import bridge_http
from pulse.bridge.service import Bridge, tune_gc

__all__ = ["Bridge", "bridge_http", "tune_gc"]
