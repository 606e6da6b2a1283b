"""The control API under `/_emulator/`, for tests and operators (no auth; bind to loopback).

GET    /_emulator/config              current settings
PATCH  /_emulator/config              change knobs: {"failure_rate": 0.2, ...}
POST   /_emulator/reset               forget everything, restore the initial settings
GET    /_emulator/faults              faults armed now
POST   /_emulator/faults              arm faults: {"lose_webhooks": 2, "fail_next": [...]}
DELETE /_emulator/faults              disarm all
POST   /_emulator/keys/rotate         new signing key: {"overlap_s": 0} drops old keys
GET    /_emulator/submissions         accepted submissions (?endpoint, ?webhook_contains,
                                      ?input_contains)
GET    /_emulator/stats               counters
GET    /_emulator/requests/{id}       one request as the emulator sees it
GET    /_emulator/health              200, or 500 once a background task crashed
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genrelay.emulator.faults import ArmRequest
from genrelay.emulator.outcomes import dumps

if TYPE_CHECKING:
    from genrelay.emulator.core import Emulator

JSON = Any


class RotateRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    overlap_s: float | None = Field(default=None, ge=0)


def _json(body: JSON, status_code: int = 200) -> Response:
    return Response(dumps(body), status_code, media_type="application/json")


def _invalid(exc: ValueError) -> Response:
    if isinstance(exc, ValidationError):
        detail: JSON = exc.errors(include_url=False, include_context=False)
    else:
        detail = str(exc)
    return _json({"detail": detail}, 422)


async def _body(request: Request) -> dict[str, JSON]:
    raw = await request.body()
    if not raw.strip():
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


class ControlApi:
    """Handlers of `/_emulator/...`."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def routes(self) -> list[Route]:
        """Paths relative to the `/_emulator` mount."""
        return [
            Route("/config", self.get_config, methods=["GET"]),
            Route("/config", self.patch_config, methods=["PATCH"]),
            Route("/reset", self.reset, methods=["POST"]),
            Route("/faults", self.get_faults, methods=["GET"]),
            Route("/faults", self.arm_faults, methods=["POST"]),
            Route("/faults", self.disarm_faults, methods=["DELETE"]),
            Route("/keys/rotate", self.rotate_keys, methods=["POST"]),
            Route("/submissions", self.submissions, methods=["GET"]),
            Route("/stats", self.stats, methods=["GET"]),
            Route("/requests/{request_id}", self.describe, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]

    async def get_config(self, request: Request) -> Response:
        return _json(self.emulator.settings.model_dump(mode="json"))

    async def patch_config(self, request: Request) -> Response:
        try:
            settings = self.emulator.configure(**await _body(request))
        except ValueError as exc:
            return _invalid(exc)
        return _json(settings.model_dump(mode="json"))

    async def reset(self, request: Request) -> Response:
        await self.emulator.reset()
        return _json({"status": "reset"})

    async def get_faults(self, request: Request) -> Response:
        return _json(self.emulator.faults.armed.as_json())

    async def arm_faults(self, request: Request) -> Response:
        try:
            arm = ArmRequest.model_validate(await _body(request))
        except ValueError as exc:
            return _invalid(exc)
        return _json(self.emulator.arm(arm))

    async def disarm_faults(self, request: Request) -> Response:
        self.emulator.faults.disarm()
        return _json(self.emulator.faults.armed.as_json())

    async def rotate_keys(self, request: Request) -> Response:
        try:
            rotate = RotateRequest.model_validate(await _body(request))
        except ValueError as exc:
            return _invalid(exc)
        return _json(self.emulator.rotate_keys(rotate.overlap_s))

    async def submissions(self, request: Request) -> Response:
        query = request.query_params
        items = self.emulator.accounting.submissions(
            endpoint=query.get("endpoint"),
            webhook_contains=query.get("webhook_contains"),
            input_contains=query.get("input_contains"),
        )
        return _json({"count": len(items), "submissions": [item.as_json() for item in items]})

    async def stats(self, request: Request) -> Response:
        return _json(self.emulator.stats())

    async def describe(self, request: Request) -> Response:
        view = self.emulator.describe(request.path_params["request_id"])
        if view is None:
            return _json({"detail": "Request not found"}, 404)
        return _json(view)

    async def health(self, request: Request) -> Response:
        crash = self.emulator.crash
        if crash is None:
            return _json({"status": "ok"})
        return _json({"status": "crashed", "error": repr(crash)}, 500)


def control_routes(emulator: Emulator) -> list[Route]:
    return ControlApi(emulator).routes()
