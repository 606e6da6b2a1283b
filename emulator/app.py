"""The HTTP face: fal's queue API, the output files and the JWKS, as a Starlette app.

Routes (fal-api.md §1-§5):

    POST /{[ns/]owner/app[/path]}                          submit
    GET  /{[ns/]owner/app}/requests/{id}/status            status (202 queued/running, 200 done)
    GET  /{[ns/]owner/app}/requests/{id}/status/stream     status as Server-Sent Events
    GET  /{[ns/]owner/app}/requests/{id}                   result
    PUT  /{[ns/]owner/app}/requests/{id}/cancel            cancel
    GET  /files/{token}/{name}                             output files (no auth, expiring)
    GET  /.well-known/jwks.json                            webhook signing keys
    *    /_emulator/...                                    control API (see control.py)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from genrelay.emulator.control import control_routes
from genrelay.emulator.core import Emulator, SubmitOptions, SubmitRejectedError
from genrelay.emulator.endpoints import EndpointId, parse_app_path
from genrelay.emulator.jobs import Job, Phase, Priority
from genrelay.emulator.outcomes import dumps
from genrelay.emulator.platform_api import platform_routes
from genrelay.emulator.records import parse_tags

JSON = Any
_REQUEST = "/{app_path:path}/requests/{request_id}"
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no", ""})


def json_response(
    body: JSON, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(dumps(body), status_code, headers, media_type="application/json")


def bad_request(detail: str) -> Response:
    """fal's flat infrastructure error for a malformed request."""
    body = {"detail": detail, "error_type": "bad_request"}
    return json_response(body, 400, {"x-fal-error-type": "bad_request"})


class SubmitParams(BaseModel):
    """Query parameters and headers of a submit that change how fal handles it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fal_webhook: str | None = None
    fal_max_queue_length: int | None = Field(default=None, ge=0)
    priority: Literal["normal", "low"] = "normal"
    request_timeout: float | None = Field(default=None, gt=0.1)
    no_retry: bool = False
    lifecycle: dict[str, JSON] | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("fal_webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Checked, never rewritten: the URL is POSTed verbatim, query string included.
        if value is not None:
            try:
                url = httpx.URL(value)
            except httpx.InvalidURL as exc:
                raise ValueError(f"fal_webhook is not a URL: {exc}") from exc
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("fal_webhook must be an absolute http(s) URL")
        return value

    @classmethod
    def from_request(cls, request: Request) -> SubmitParams:
        query, headers = request.query_params, request.headers
        raw: dict[str, JSON] = {
            "fal_webhook": query.get("fal_webhook"),
            "fal_max_queue_length": query.get("fal_max_queue_length"),
            "priority": headers.get("x-fal-queue-priority", "normal").lower(),
            "request_timeout": headers.get("x-fal-request-timeout"),
            "no_retry": headers.get("x-fal-no-retry", "").lower() in _TRUE,
        }
        raw["tags"] = parse_tags(headers.get("x-fal-tags"))
        lifecycle = headers.get("x-fal-object-lifecycle-preference")
        if lifecycle is not None:
            raw["lifecycle"] = json.loads(lifecycle)
        return cls.model_validate(raw)

    def options(self, owner: str | None = None) -> SubmitOptions:
        lifetime: float | None = None
        use_default = True
        if self.lifecycle is not None and "expiration_duration_seconds" in self.lifecycle:
            # fal treats 0 and null as "never expires".
            lifetime = self.lifecycle["expiration_duration_seconds"] or None
            use_default = False
        return SubmitOptions(
            webhook_url=self.fal_webhook,
            priority=Priority(self.priority),
            max_queue_length=self.fal_max_queue_length,
            no_retry=self.no_retry,
            start_timeout_s=self.request_timeout,
            file_lifetime_s=lifetime,
            use_default_lifetime=use_default,
            owner=owner,
            tags=dict(self.tags),
        )


class DroppedConnection(Response):
    """Close the connection without any response: the ambiguous "maybe sent" submit."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn's receive() is bound to the request cycle, which holds the transport.
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        if transport is None:
            raise RuntimeError("the server does not expose its transport; cannot drop")
        transport.abort()
        while (await receive())["type"] != "http.disconnect":
            pass


class QueueApi:
    """Handlers of the queue API, the files and the JWKS."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def routes(self) -> list[Route]:
        return [
            Route("/.well-known/jwks.json", self.jwks, methods=["GET"]),
            Route("/files/{token}/{name}", self.file, methods=["GET"]),
            Route(_REQUEST + "/status/stream", self.stream, methods=["GET"]),
            Route(_REQUEST + "/status", self.status, methods=["GET"]),
            Route(_REQUEST + "/cancel", self.cancel, methods=["PUT"]),
            Route(_REQUEST, self.result, methods=["GET"]),
            Route("/{endpoint:path}", self.submit, methods=["POST"]),
        ]

    # -- helpers ------------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        if self._account(request) is not None:
            return None
        self.emulator.accounting.count("unauthorized")
        detail = "Authentication is required: send 'Authorization: Key <your key>'"
        return json_response({"detail": detail}, 401)

    def _job(self, request: Request) -> Job | None:
        app_path = parse_app_path(request.path_params["app_path"])
        if app_path is None:
            return None
        owner = self._account(request) or ""
        return self.emulator.find(app_path, request.path_params["request_id"], owner)

    def _account(self, request: Request) -> str | None:
        return self.emulator.account(request.headers.get("authorization"))

    @staticmethod
    def _with_logs(request: Request) -> bool | None:
        value = request.query_params.get("logs", "").lower()
        if value in _TRUE:
            return True
        return False if value in _FALSE else None

    # -- queue API --------------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        emulator = self.emulator
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        endpoint = EndpointId.parse(request.path_params["endpoint"])
        model = None if endpoint is None else emulator.model(endpoint)
        if endpoint is None or model is None:
            name = request.path_params["endpoint"]
            return json_response({"detail": f"Application '{name}' not found"}, 404)
        try:
            options = SubmitParams.from_request(request).options(self._account(request))
            raw = await request.body()
            arguments = json.loads(raw) if raw.strip() else {}
        except (ValidationError, ValueError) as exc:
            return bad_request(f"Invalid request: {exc}")
        if emulator.faults.reset_submit():
            emulator.accounting.count("reset_submits")
            return DroppedConnection()  # nothing recorded: fal never saw it
        try:
            job = emulator.submit(endpoint, model, arguments, options)
        except SubmitRejectedError as exc:
            return json_response({"detail": str(exc)}, 429)
        return await self._answer_submit(job)

    async def _answer_submit(self, job: Job) -> Response:
        """The job is accepted and counted; now its response may be late or never come."""
        emulator = self.emulator
        fate = emulator.submit_fate(job)
        if fate.drop:
            emulator.accounting.count("dropped_submit_responses")
            return DroppedConnection()
        if fate.gateway_error:
            # What a proxy answers when fal was slow: no x-fal-request-id, an HTML page.
            emulator.accounting.count("gateway_error_submit_responses")
            return Response("<html>504 Gateway Time-out</html>", 504, media_type="text/html")
        if fate.delay_ms > 0:
            emulator.accounting.count("delayed_submit_responses")
            await asyncio.sleep(fate.delay_ms / 1000)
        body = emulator.submit_response(job)
        return json_response(body, 200, {"x-fal-request-id": job.request_id})

    async def status(self, request: Request) -> Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        with_logs = self._with_logs(request)
        if with_logs is None:
            return bad_request("logs must be one of 1, 0, true, false")
        job = self._job(request)
        if job is None:
            return _request_not_found()
        self.emulator.accounting.count("status_polls")
        body = self.emulator.status(job, with_logs)
        code = 200 if job.phase is Phase.COMPLETED else 202
        return json_response(body, code, {"x-fal-request-id": job.request_id})

    async def stream(self, request: Request) -> Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        with_logs = self._with_logs(request)
        if with_logs is None:
            return bad_request("logs must be one of 1, 0, true, false")
        job = self._job(request)
        if job is None:
            return _request_not_found()
        self.emulator.accounting.count("status_streams")
        headers = {"x-fal-request-id": job.request_id, "cache-control": "no-cache"}
        events = self._events(job, with_logs)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _events(self, job: Job, with_logs: bool) -> AsyncIterator[bytes]:
        """One `data:` event per visible change, `: ping` lines while nothing changes, and
        the end of the stream after COMPLETED."""
        emulator = self.emulator
        changed = emulator.feed.watch(job.request_id)
        ping_s = emulator.settings.sse_ping_interval_s
        last = b""
        try:
            while not emulator.closing.is_set() and emulator.store.get(job.request_id) is job:
                event = dumps(emulator.status(job, with_logs))
                if event != last:
                    last = event
                    yield b"data: " + event + b"\n\n"
                if job.phase is Phase.COMPLETED:
                    return
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), ping_s)
                except TimeoutError:
                    yield b": ping\n\n"
        finally:
            emulator.feed.unwatch(job.request_id, changed)

    async def result(self, request: Request) -> Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        job = self._job(request)
        if job is None:
            return _request_not_found()
        self.emulator.accounting.count("result_fetches")
        headers = {"x-fal-request-id": job.request_id}
        if job.phase is not Phase.COMPLETED or job.outcome is None:
            return json_response({"detail": "Request is still in progress"}, 400, headers)
        outcome = job.outcome
        headers.update(outcome.headers)
        if job.billed_units is not None:
            headers["x-fal-billable-units"] = f"{job.billed_units:g}"
        return Response(outcome.body, outcome.status_code, headers, "application/json")

    async def cancel(self, request: Request) -> Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        job = self._job(request)
        if job is None:
            return json_response({"status": "NOT_FOUND"}, 404)
        headers = {"x-fal-request-id": job.request_id}
        if self.emulator.cancel(job):
            return json_response({"status": "CANCELLATION_REQUESTED"}, 202, headers)
        return json_response({"status": "ALREADY_COMPLETED"}, 400, headers)

    # -- files and keys ---------------------------------------------------------------------------

    async def file(self, request: Request) -> Response:
        entry = self.emulator.find_file(request.path_params["token"], request.path_params["name"])
        if entry is None:
            return Response(b"Not Found", 404, media_type="text/plain")
        data = await self.emulator.read_file(entry)
        return Response(data, 200, media_type=entry.content_type)

    async def jwks(self, request: Request) -> Response:
        return json_response(self.emulator.keyring.jwks())


def _request_not_found() -> Response:
    return json_response({"detail": "Request not found"}, 404)


def build_app(emulator: Emulator) -> Starlette:
    """The ASGI app serving `emulator`."""
    # One Mount in front keeps the control API from costing the hot routes a regex each.
    control = Mount("/_emulator", routes=control_routes(emulator))
    # Ahead of the queue's routes, whose `{app}/requests/{id}` would match its paths.
    platform = Mount("/v1", routes=platform_routes(emulator))
    routes: list[BaseRoute] = [control, platform, *QueueApi(emulator).routes()]
    return Starlette(routes=routes)
