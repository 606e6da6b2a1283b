"""fal.ai's queue API behind the ``Provider`` interface, spoken with httpx directly.

fal-client is deliberately not used: it re-POSTs a submit after a timeout or a reset, which
can create a second, separately billed request. Here a submit is sent exactly once and its
failure is classified instead:

- ``NotSent``: the request provably never reached fal (connect error or timeout, pool
  timeout, DNS failure, TLS handshake, 429).
- ``MaybeSent``: fal may have accepted it (read or write timeout, reset after send, any
  5xx, an unreadable 2xx). That includes a 502/503/504 without ``x-fal-request-id``: a
  proxy or gateway that answers so has usually forwarded the request already.
- ``Rejected``: fal answered definitively (4xx other than 429).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal, Self
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from genrelay import __version__
from genrelay.consumer.dispatch.backoff import retry_after
from genrelay.consumer.errors import (
    ClosedError,
    InvalidEndpoint,
    MaybeSent,
    NotFound,
    NotSent,
    ProviderError,
    RateLimited,
    Rejected,
    RejectReason,
    ResultExpired,
    WebhookRejected,
)
from genrelay.consumer.provider.provider import (
    JSON,
    START_TIMEOUT_ERROR_TYPE,
    CancelOutcome,
    ErrorInfo,
    JobResult,
    JobState,
    JobStatus,
    JSONObject,
    LogLine,
    Priority,
    Submission,
    Tags,
    WebhookNews,
)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
# A submit normally answers in well under a second; a long read timeout only delays the
# (rare) ambiguous outcome, a short one makes ambiguity more frequent.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0, pool=10.0)

# Endpoint ids under these namespaces name their app with the third segment.
_NAMESPACES = frozenset({"workflows", "comfy"})
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

# httpx raises these only before any byte of the request was written.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_GATEWAY_STATUSES = frozenset({502, 503, 504})
# Answers about our HTTP call (credentials, rate), never about the request's outcome.
_CALL_STATUSES = frozenset({401, 403, 429})

# Infrastructure failures: fal has already retried them, but a new submission may pass.
_RETRYABLE_ERROR_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
        "internal_server_error",
        "generation_timeout",
        "downstream_service_error",
    }
)
_RETRY_HINT_HEADERS = ("x-fal-retryable", "x-fal-needs-retry")
_TRUTHY = frozenset({"1", "true", "yes"})
_FALSY = frozenset({"0", "false", "no"})


def app_path(endpoint: str) -> str:
    """The ``[namespace/]owner/app`` part of an endpoint id, which request URLs are built on."""
    segments = endpoint.split("/")
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise InvalidEndpoint(f"malformed endpoint id {endpoint!r}")
    app_length = 3 if segments[0] in _NAMESPACES else 2
    if len(segments) < app_length:
        raise InvalidEndpoint(f"endpoint id {endpoint!r} names no owner/app")
    return "/".join(segments[:app_length])


def request_urls(base_url: str, endpoint: str, request_id: str) -> Submission:
    """A submission rebuilt from its request id, for when the returned URLs are unknown."""
    app = app_path(endpoint)
    request_url = f"{base_url.rstrip('/')}/{app}/requests/{quote(request_id, safe='')}"
    return Submission(
        request_id=request_id,
        gateway_request_id=None,
        status_url=f"{request_url}/status",
        response_url=request_url,
        cancel_url=f"{request_url}/cancel",
    )


def classify_error(status_code: int | None, body: JSON, headers: Mapping[str, str]) -> ErrorInfo:
    """Classify a failed request from its body, then headers, then HTTP status.

    ``status_code`` is None for a webhook, which carries no status. ``headers`` must be
    case-insensitive (``httpx.Headers``) or use lowercase names.
    """
    fields: JSONObject = body if isinstance(body, dict) else {}
    detail = fields.get("detail")
    first_detail = detail[0] if isinstance(detail, list) and detail else None
    first: JSONObject = first_detail if isinstance(first_detail, dict) else {}
    error_type = (
        _str(fields.get("error_type"))
        or headers.get("x-fal-error-type")
        or _str(first.get("type"))
        or (f"http_{status_code}" if status_code is not None else "unknown")
    )
    if headers.get("x-fal-request-timeout-type") == "user":
        # Our own time-to-start deadline expired: the request never ran, and is not billed.
        error_type = START_TIMEOUT_ERROR_TYPE
    message = (
        _str(detail)
        or _str(first.get("msg"))
        or (f"HTTP {status_code}" if status_code is not None else error_type)
    )
    return ErrorInfo(
        type=error_type,
        message=message,
        retryable=_retryable(status_code, error_type, headers),
    )


def _retryable(status_code: int | None, error_type: str, headers: Mapping[str, str]) -> bool:
    for name in _RETRY_HINT_HEADERS:
        hint = headers.get(name, "").strip().lower()
        if hint in _TRUTHY:
            return True
        if hint in _FALSY:
            return False
    # The caller's own time-to-start deadline expired: another attempt waits again.
    if headers.get("x-fal-request-timeout-type") == "user":
        return False
    if error_type in _RETRYABLE_ERROR_TYPES:
        return True
    return status_code is not None and status_code >= 500


class FalWebhookBody(BaseModel):
    """The JSON fal POSTs to a webhook URL when a request finishes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str = Field(min_length=1)
    gateway_request_id: str | None = None
    status: Literal["OK", "ERROR"]
    payload: JsonValue = None
    error: str | None = None
    payload_error: str | None = None


def parse_webhook(body: bytes) -> WebhookNews:
    """Read a fal webhook body; call only after its signature has been verified."""
    try:
        parsed = FalWebhookBody.model_validate_json(body)
    except ValidationError as exc:
        raise WebhookRejected(RejectReason.MALFORMED_BODY, "not a fal webhook body") from exc
    error = None
    if parsed.status == "ERROR":
        info = classify_error(None, parsed.payload, {})
        error = replace(info, message=parsed.error or info.message)
    return WebhookNews(
        request_id=parsed.request_id,
        gateway_request_id=parsed.gateway_request_id,
        ok=parsed.status == "OK",
        payload=parsed.payload,
        error=error,
        payload_error=parsed.payload_error,
    )


class FalProvider:
    """``Provider`` for fal's queue. Closes the httpx client only if it created it."""

    def __init__(
        self,
        key: str,
        *,
        base_url: str = DEFAULT_QUEUE_URL,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
        output_lifetime: float | None = None,
        disable_fallbacks: bool = False,
    ) -> None:
        """`output_lifetime`: seconds fal keeps a request's output files (sent explicitly,
        so the account's default cannot shorten it); `disable_fallbacks`: fal must not route
        a request to an equivalent endpoint after its retries."""
        if not base_url.startswith(("https://", "http://")):
            raise ValueError(f"queue base URL must be http(s): {base_url!r}")
        self._base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": f"genrelay/{__version__}"}
        self._auth = {"Authorization": f"Key {key}"}
        # The key goes only to the queue's own host: URLs come from answers (and the ledger),
        # and a URL naming another host must not carry our credential there.
        self._key_host = httpx.URL(self._base_url).host
        self._timeout = timeout
        self._fixed_submit_headers = _fixed_submit_headers(output_lifetime, disable_fallbacks)
        self._client = client if client is not None else httpx.AsyncClient()
        self._owns_client = client is None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def submission_for(self, endpoint: str, request_id: str) -> Submission:
        """A submission for a request id whose returned URLs were never recorded."""
        return request_urls(self._base_url, endpoint, request_id)

    async def submit(
        self,
        endpoint: str,
        input: JSONObject,
        *,
        webhook_url: str | None,
        priority: Priority,
        start_timeout: float | None = None,
        tags: Tags | None = None,
    ) -> Submission:
        """POST one request to the queue, exactly once; see the module docstring for errors."""
        app_path(endpoint)  # refuse a malformed id before anything is sent
        headers = {**self._fixed_submit_headers, **_submit_headers(priority, start_timeout)}
        if tags is not None:
            headers["X-Fal-Tags"] = tags_header(tags)
        response = await self._send(
            "POST",
            _with_query(f"{self._base_url}/{endpoint}", fal_webhook=webhook_url),
            json=input,
            headers=headers,
        )
        if not response.is_success:
            raise _failure(response)
        return self._parse_submission(response, endpoint)

    async def status(self, submission: Submission, *, with_logs: bool = False) -> JobStatus:
        """GET the status URL; ``NotFound`` when fal does not know the request."""
        response = await self._send(
            "GET", _with_query(submission.status_url, logs="1" if with_logs else "0")
        )
        if response.status_code == 404:
            raise NotFound(f"{_where(response)}: unknown request {submission.request_id}")
        if not response.is_success:
            raise _failure(response)
        return _parse_status(response)

    async def result(self, submission: Submission) -> JobResult:
        """GET the response URL: the output, or the request's classified failure."""
        response = await self._send("GET", submission.response_url)
        units = _billable_units(response)
        if response.is_success:
            try:
                payload: JSON = response.json()
            except ValueError:
                error = ErrorInfo("unreadable_result", "the result is not JSON", retryable=False)
                return JobResult(ok=False, payload=None, error=error, billable_units=units)
            return JobResult(ok=True, payload=payload, error=None, billable_units=units)
        if response.status_code == 404:
            raise ResultExpired(f"{_where(response)}: result of {submission.request_id} is gone")
        if _describes_our_call(response):
            raise _failure(response)
        body = _json_or_none(response)
        error = classify_error(response.status_code, body, response.headers)
        return JobResult(ok=False, payload=body, error=error, billable_units=units)

    async def cancel(self, submission: Submission) -> CancelOutcome:
        """PUT the cancel URL. After REQUESTED, keep polling: the request may still bill."""
        response = await self._send("PUT", submission.cancel_url)
        if response.status_code == 404:
            return CancelOutcome.NOT_FOUND
        if response.status_code == 400 and _body_status(response) == "ALREADY_COMPLETED":
            return CancelOutcome.ALREADY_COMPLETED
        if response.is_success:
            return CancelOutcome.REQUESTED
        raise _failure(response)

    async def aclose(self) -> None:
        """Close the client if this provider created it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: JSONObject | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        if self._closed:
            raise ClosedError("FalProvider is closed")
        try:
            # Parsed once: the key's host check and the request share it.
            target = httpx.URL(url)
            return await self._client.request(
                method,
                target,
                json=json,
                headers={**self._headers, **self._auth_for(target), **(headers or {})},
                timeout=self._timeout,
            )
        except httpx.InvalidURL as exc:
            raise InvalidEndpoint(f"{method} to a malformed URL: {exc}") from exc
        except httpx.HTTPError as exc:
            where = f"{method} {_without_query(httpx.URL(url))}"
            if isinstance(exc, _NEVER_SENT):
                raise NotSent(f"{where}: {exc!r}") from exc
            raise MaybeSent(f"{where}: {exc!r}") from exc

    def _auth_for(self, url: httpx.URL) -> dict[str, str]:
        # The key goes to fal's host only, never to a URL an answer pointed elsewhere.
        return self._auth if url.host == self._key_host else {}

    def _parse_submission(self, response: httpx.Response, endpoint: str) -> Submission:
        body = _json_object(response)
        request_id = _str(body.get("request_id"))
        if request_id is None:
            raise MaybeSent(f"{_where(response)}: accepted, but no request_id in the answer")
        rebuilt = self.submission_for(endpoint, request_id)
        return Submission(
            request_id=request_id,
            gateway_request_id=_str(body.get("gateway_request_id")),
            status_url=_str(body.get("status_url")) or rebuilt.status_url,
            response_url=_str(body.get("response_url")) or rebuilt.response_url,
            cancel_url=_str(body.get("cancel_url")) or rebuilt.cancel_url,
            queue_position=_int(body.get("queue_position")),
        )


# fal's gateway drops (silently) tags that break these rules; genrelay never sends such.
_TAG_VALUE = re.compile(r"[\x20-\x2b\x2d-\x7e]{1,256}")  # printable ASCII but ","


def tags_header(tags: Tags) -> str:
    """`X-Fal-Tags`: comma-separated `key=value` pairs (fal.ai/docs/documentation/model-apis/
    request-tags). The key is hashed: fal's reports identify it without showing it."""
    pairs = [f"gr.key={tags.key_hash}", f"gr.attempt={tags.attempt}"]
    tenant = (tags.tenant or "").strip()
    if _TAG_VALUE.fullmatch(tenant):
        pairs.append(f"tenant={tenant}")
    return ",".join(pairs)


def _fixed_submit_headers(output_lifetime: float | None, disable_fallbacks: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    if output_lifetime is not None:
        # Explicit, so an account default cannot expire outputs before they are copied.
        lifetime = {"expiration_duration_seconds": math.ceil(output_lifetime)}
        headers["X-Fal-Object-Lifecycle-Preference"] = json.dumps(lifetime)
    if disable_fallbacks:
        # fal.ai/docs/documentation/model-apis/inference/reliability: no rerouting to an
        # equivalent endpoint after fal's own retries.
        headers["x-app-fal-disable-fallback"] = "true"
    return headers


def _submit_headers(priority: Priority, start_timeout: float | None) -> dict[str, str]:
    headers = {"X-Fal-Queue-Priority": priority.value}
    if start_timeout is not None:
        # A time-to-start deadline: on expiry fal answers 504 (X-Fal-Request-Timeout-Type:
        # user) and never runs the request.
        headers["X-Fal-Request-Timeout"] = f"{start_timeout:.1f}"
    return headers


def _parse_status(response: httpx.Response) -> JobStatus:
    body = _json_object(response)
    try:
        state = JobState(str(body.get("status")))
    except ValueError:
        raise MaybeSent(f"{_where(response)}: unknown status {body.get('status')!r}") from None
    metrics = body.get("metrics")
    return JobStatus(
        state=state,
        queue_position=_int(body.get("queue_position")),
        logs=_logs(body.get("logs")),
        inference_time=_float(metrics.get("inference_time")) if isinstance(metrics, dict) else None,
        error=_str(body.get("error")),
        error_type=_str(body.get("error_type")),
    )


def _logs(value: JSON) -> tuple[LogLine, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        LogLine(
            message=_str(entry.get("message")) or "",
            level=_str(entry.get("level")),
            timestamp=_str(entry.get("timestamp")),
        )
        for entry in value
        if isinstance(entry, dict)
    )


# A non-2xx answer that is about our call, not the request's own outcome.
def _failure(response: httpx.Response) -> ProviderError:
    status = response.status_code
    where = _where(response)
    if status == 429:
        return RateLimited(f"{where}: rate limited", retry_after=retry_after(response.headers))
    if _from_ingress(response):
        return MaybeSent(f"{where}: gateway error; it may have forwarded the request")
    if status >= 500:
        return MaybeSent(where)
    info = classify_error(status, _json_or_none(response), response.headers)
    return Rejected(f"{where}: {info.message}", status_code=status, error_type=info.type)


def _describes_our_call(response: httpx.Response) -> bool:
    return response.status_code in _CALL_STATUSES or _from_ingress(response)


def _from_ingress(response: httpx.Response) -> bool:
    # fal's queue stamps x-fal-request-id on every answer it produces; a gateway error
    # without it came from the ingress in front of the queue.
    return response.status_code in _GATEWAY_STATUSES and "x-fal-request-id" not in response.headers


def _where(response: httpx.Response) -> str:
    request = response.request
    return f"{request.method} {_without_query(request.url)} -> {response.status_code}"


def _with_query(url: str, **params: str | None) -> str:
    """`url` with `params` added to its query (None values left out), percent-encoded here:
    httpx's own merge of `params` parses the URL again, 45 µs a call."""
    added = urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote)
    if not added:
        return url
    try:
        scheme, netloc, path, query, fragment = urlsplit(url)
    except ValueError as exc:  # refused before anything is sent, as httpx.InvalidURL is
        raise InvalidEndpoint(f"malformed URL: {exc}") from exc
    return urlunsplit((scheme, netloc, path, f"{query}&{added}" if query else added, fragment))


def _without_query(url: httpx.URL) -> httpx.URL:
    # The submit query carries the webhook URL and its token: keep it out of messages.
    return url.copy_with(query=None)


def _json_object(response: httpx.Response) -> JSONObject:
    body = _json_or_none(response)
    if not isinstance(body, dict):
        raise MaybeSent(f"{_where(response)}: the answer is not a JSON object")
    return body


def _json_or_none(response: httpx.Response) -> JSON:
    try:
        body: JSON = response.json()
    except ValueError:
        return None
    return body


def _body_status(response: httpx.Response) -> str | None:
    body = _json_or_none(response)
    return _str(body.get("status")) if isinstance(body, dict) else None


def _billable_units(response: httpx.Response) -> float | None:
    return _header_number(response, "x-fal-billable-units")


def _header_number(response: httpx.Response, name: str) -> float | None:
    try:
        value = float(response.headers.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _str(value: JSON) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: JSON) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: JSON) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
