"""The registry's read endpoints: ``/api/registry/devices/{device}`` and ``/api/rules``.

They answer from the process's registry cache (pulse/registry/cache.py: the in-process
snapshot, kept current by NOTIFY, loaded through Redis), never a query per request; each
answer says the registry ``version`` it shows. No snapshot yet (PostgreSQL and Redis both
away since start, or no registry in this process) is a 503.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from models.alerts import COMPARISONS, Registry
from models.outputs import AGGREGATES
from models.registry import (
    SEVERITIES,
    RegistrySnapshot,
    absence_document,
    device_document,
    rule_document,
)
from pulse.api import _params
from pulse.api._context import CONTEXT
from pulse.api._errors import ApiError, json_response


def _snapshot(request: web.Request) -> RegistrySnapshot:
    cache = request.app[CONTEXT].device_registry
    snapshot = None if cache is None else cache.snapshot
    if snapshot is None:
        raise ApiError(
            503,
            "the registry is unavailable: no snapshot loaded yet (PostgreSQL and Redis away)"
            if cache is not None
            else "this process serves no registry",
        )
    return snapshot


def rules_document(registry: Registry) -> dict[str, Any]:
    """``/api/rules``' answer (and ``pulse rules list --json``): the rules by name."""
    return {
        "version": registry.version,
        "rules": [rule_document(r) for r in registry.rules],
        "absence_rules": [absence_document(r) for r in registry.absence_rules],
    }


async def device(request: web.Request) -> web.Response:
    name = _params.device_name(request.match_info["device"])
    registry = _snapshot(request).registry
    found = registry.entry(name)
    if found is None:
        raise ApiError(
            404, f"device {name!r}: not in the registry (version {registry.version})", "device"
        )
    return json_response({"version": registry.version, "device": device_document(found)})


async def rules(request: web.Request) -> web.Response:
    return json_response(rules_document(_snapshot(request).registry))


ROUTES = [
    web.get("/api/registry/devices/{device}", device),
    web.get("/api/rules", rules),
]

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
_OPTIONAL_NAME = {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
_SELECTOR = {
    "type": "object",
    "description": "One device, the devices of a site, or (both null) every device",
    "required": ["device", "site"],
    "properties": {"device": _OPTIONAL_NAME, "site": _OPTIONAL_NAME},
}
_RULE = {
    "type": "object",
    "required": [
        "name", "metric", "window", "aggregate", "comparison", "threshold", "clear_threshold",
        "for_count", "selector", "severity", "enabled",
    ],
    "properties": {
        "name": _NAME, "metric": _NAME, "window": {"type": "string"},
        "aggregate": {"enum": list(AGGREGATES)}, "comparison": {"enum": list(COMPARISONS)},
        "threshold": {"type": "number"},
        "clear_threshold": {"type": ["number", "null"], "description": "null: the threshold"},
        "for_count": {"type": "integer", "minimum": 1}, "selector": _SELECTOR,
        "severity": {"enum": list(SEVERITIES)}, "enabled": {"type": "boolean"},
    },
}  # fmt: skip
_ABSENCE = {
    "type": "object",
    "required": ["name", "metric", "duration_us", "selector", "severity", "enabled"],
    "properties": {
        "name": _NAME, "metric": _NAME,
        "duration_us": {
            "type": "integer", "minimum": 1, "description": "µs of event time without a reading"
        },
        "selector": _SELECTOR, "severity": {"enum": list(SEVERITIES)},
        "enabled": {"type": "boolean"},
    },
}  # fmt: skip
_ERRORS = {code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "404", "503")}

PATHS = {
    "/api/registry/devices/{device}": {
        "get": {
            "summary": "A device as the registry holds it (site, labels, enabled)",
            "parameters": [{"name": "device", "in": "path", "required": True, "schema": _NAME}],
            "responses": {
                "200": {
                    "description": "The device, and the registry version it is read from",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["version", "device"],
                                "properties": {
                                    "version": {"type": "integer", "minimum": 0},
                                    "device": {
                                        "type": "object",
                                        "required": ["id", "site", "labels", "enabled"],
                                        "properties": {
                                            "id": _NAME,
                                            "site": _OPTIONAL_NAME,
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "enabled": {"type": "boolean"},
                                        },
                                    },
                                },
                            }
                        }
                    },
                },
                **_ERRORS,
            },
        }
    },
    "/api/rules": {
        "get": {
            "summary": "The alert and absence rules of the registry",
            "responses": {
                "200": {
                    "description": "The rules, and the registry version they are read from",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["version", "rules", "absence_rules"],
                                "properties": {
                                    "version": {"type": "integer", "minimum": 0},
                                    "rules": {"type": "array", "items": _RULE},
                                    "absence_rules": {"type": "array", "items": _ABSENCE},
                                },
                            }
                        }
                    },
                },
                **{k: v for k, v in _ERRORS.items() if k != "404"},
            },
        }
    },
}
