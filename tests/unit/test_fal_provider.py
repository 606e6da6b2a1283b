"""FalProvider against a scripted fal queue (httpx.MockTransport): every classification branch."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest

from genrelay.consumer.errors import (
    ClosedError,
    InvalidEndpoint,
    MaybeSent,
    NotFound,
    NotSent,
    RateLimited,
    Rejected,
    RejectReason,
    ResultExpired,
    WebhookRejected,
)
from genrelay.consumer.provider.fal import (
    FalProvider,
    app_path,
    parse_webhook,
    request_urls,
    tags_header,
)
from genrelay.consumer.provider.provider import (
    CancelOutcome,
    JobState,
    Priority,
    Submission,
    Tags,
)

BASE = "http://127.0.0.1:8000"
ENDPOINT = "fal-ai/flux/dev"
SUBMITTED = {
    "request_id": "req-1",
    "gateway_request_id": "gw-1",
    "status": "IN_QUEUE",
    "queue_position": 3,
    # Deliberately not what the adapter would build: it must follow these verbatim.
    "status_url": "http://127.0.0.1:9001/q/req-1/status",
    "response_url": "http://127.0.0.1:9001/q/req-1",
    "cancel_url": "http://127.0.0.1:9001/q/req-1/cancel",
}
SUBMISSION = Submission(
    request_id="req-1",
    gateway_request_id="gw-1",
    status_url="http://127.0.0.1:9001/q/req-1/status",
    response_url="http://127.0.0.1:9001/q/req-1",
    cancel_url="http://127.0.0.1:9001/q/req-1/cancel",
)
FAL_ID = {"x-fal-request-id": "req-1"}

Handler = Callable[[httpx.Request], httpx.Response]


class Queue:
    """A scripted fal queue that records every request it receives."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def provider_for(queue: Handler) -> FalProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(queue))
    return FalProvider("key-123", base_url=BASE, client=client)


async def submit(provider: FalProvider, priority: Priority = Priority.NORMAL) -> Submission:
    return await provider.submit(
        ENDPOINT,
        {"prompt": "a lighthouse", "seed": 7},
        webhook_url="https://hooks.example/fal?key=k&token=SECRET",
        priority=priority,
    )


# --- submit -------------------------------------------------------------------------------


async def test_submit_posts_the_input_once_with_key_webhook_and_priority() -> None:
    queue = Queue(httpx.Response(200, json=SUBMITTED))
    submission = await submit(provider_for(queue), Priority.LOW)

    [request] = queue.requests
    assert request.method == "POST"
    assert request.url.copy_with(query=None) == f"{BASE}/{ENDPOINT}"
    assert request.url.params["fal_webhook"] == "https://hooks.example/fal?key=k&token=SECRET"
    assert request.headers["authorization"] == "Key key-123"
    assert request.headers["x-fal-queue-priority"] == "low"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"prompt": "a lighthouse", "seed": 7}
    assert submission == replace(SUBMISSION, queue_position=3)


async def test_submit_carries_tags_the_output_lifetime_and_the_fallback_choice() -> None:
    queue = Queue(httpx.Response(200, json=SUBMITTED))
    client = httpx.AsyncClient(transport=httpx.MockTransport(queue))
    provider = FalProvider(
        "key-123", base_url=BASE, client=client, output_lifetime=3600, disable_fallbacks=True
    )
    tags = Tags("ab" * 16, 2, "growth team")
    await provider.submit(
        ENDPOINT, {}, webhook_url=None, priority=Priority.NORMAL, start_timeout=12.5, tags=tags
    )
    [request] = queue.requests
    assert request.headers["x-fal-tags"] == f"gr.key={'ab' * 16},gr.attempt=2,tenant=growth team"
    lifetime = json.loads(request.headers["x-fal-object-lifecycle-preference"])
    assert lifetime == {"expiration_duration_seconds": 3600}
    assert request.headers["x-app-fal-disable-fallback"] == "true"
    assert request.headers["x-fal-request-timeout"] == "12.5"


def test_a_tenant_fal_would_reject_as_a_tag_value_is_left_out() -> None:
    assert tags_header(Tags("k", 1, "a,b")) == "gr.key=k,gr.attempt=1"
    assert tags_header(Tags("k", 1, "x" * 257)) == "gr.key=k,gr.attempt=1"
    assert tags_header(Tags("k", 1, None)) == "gr.key=k,gr.attempt=1"


async def test_submit_without_webhook_sends_no_fal_webhook_parameter() -> None:
    queue = Queue(httpx.Response(200, json=SUBMITTED))
    await provider_for(queue).submit(ENDPOINT, {}, webhook_url=None, priority=Priority.NORMAL)
    assert "fal_webhook" not in queue.requests[0].url.params
    assert queue.requests[0].headers["x-fal-queue-priority"] == "normal"


async def test_returned_urls_are_followed_verbatim() -> None:
    queue = Queue(
        httpx.Response(200, json=SUBMITTED), httpx.Response(202, json={"status": "IN_QUEUE"})
    )
    provider = provider_for(queue)
    submission = await submit(provider)
    await provider.status(submission)
    assert queue.requests[1].url.copy_with(query=None) == SUBMITTED["status_url"]


async def test_submit_answer_without_urls_rebuilds_them_from_the_request_id() -> None:
    queue = Queue(httpx.Response(200, json={"request_id": "req-9"}))
    submission = await submit(provider_for(queue))
    assert submission.status_url == f"{BASE}/fal-ai/flux/requests/req-9/status"
    assert submission.response_url == f"{BASE}/fal-ai/flux/requests/req-9"
    assert submission.cancel_url == f"{BASE}/fal-ai/flux/requests/req-9/cancel"


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no free connection"),
    ],
    ids=["refused", "dns", "connect-timeout", "pool-timeout"],
)
async def test_error_before_sending_is_not_sent(error: Exception) -> None:
    queue = Queue(error)
    with pytest.raises(NotSent) as caught:
        await submit(provider_for(queue))
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.ReadError("connection reset by peer"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("server disconnected without sending a response"),
    ],
    ids=["read-timeout", "write-timeout", "reset-on-read", "reset-on-write", "disconnect"],
)
async def test_error_after_sending_may_have_been_sent(error: Exception) -> None:
    with pytest.raises(MaybeSent):
        await submit(provider_for(Queue(error)))


async def test_read_timeout_on_submit_is_maybe_sent_and_never_reposted() -> None:
    queue = Queue(httpx.ReadTimeout("read timed out"), httpx.Response(200, json=SUBMITTED))
    with pytest.raises(MaybeSent):
        await submit(provider_for(queue))
    assert len(queue.requests) == 1


async def test_rate_limit_is_not_sent_and_honours_retry_after() -> None:
    queue = Queue(httpx.Response(429, headers={"retry-after": "7"}, json={"detail": "full"}))
    with pytest.raises(NotSent) as caught:
        await submit(provider_for(queue))
    assert caught.value.retry_after == 7.0


async def test_a_start_deadline_is_sent_as_fals_time_to_start_header() -> None:
    queue = Queue(httpx.Response(200, headers=FAL_ID, json={"request_id": "req-1"}))
    await provider_for(queue).submit(
        "fal-ai/flux/schnell", {}, webhook_url=None, priority=Priority.LOW, start_timeout=42.25
    )
    (request,) = queue.requests
    assert request.headers["x-fal-request-timeout"] == "42.2"
    assert request.headers["x-fal-queue-priority"] == "low"


async def test_rate_limit_without_retry_after_leaves_the_delay_to_the_caller() -> None:
    with pytest.raises(NotSent) as caught:
        await submit(provider_for(Queue(httpx.Response(429))))
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_error_without_fal_request_id_may_have_been_forwarded(status: int) -> None:
    # A proxy in front of fal (egress proxy, mesh, fal's own ingress) that answers 502/504
    # has usually forwarded the request: re-posting it could pay twice.
    queue = Queue(httpx.Response(status, text="<html>nginx</html>"))
    with pytest.raises(MaybeSent):
        await submit(provider_for(queue))
    assert len(queue.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_error_with_fal_request_id_may_have_been_sent(status: int) -> None:
    queue = Queue(httpx.Response(status, headers=FAL_ID, json={"detail": "boom"}))
    with pytest.raises(MaybeSent):
        await submit(provider_for(queue))


async def test_other_server_error_without_fal_request_id_may_have_been_sent() -> None:
    with pytest.raises(MaybeSent):
        await submit(provider_for(Queue(httpx.Response(500, text="oops"))))


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (401, {"detail": "Invalid key"}, "http_401"),
        (400, {"detail": "bad timeout header", "error_type": "bad_request"}, "bad_request"),
        (404, {"detail": "Application not found"}, "http_404"),
        (
            422,
            {"detail": [{"loc": ["body", "prompt"], "msg": "missing", "type": "missing"}]},
            "missing",
        ),
    ],
)
async def test_definitive_client_error_is_rejected(
    status: int, body: dict[str, object], error_type: str
) -> None:
    with pytest.raises(Rejected) as caught:
        await submit(provider_for(Queue(httpx.Response(status, json=body))))
    assert caught.value.status_code == status
    assert caught.value.error_type == error_type


async def test_accepted_answer_without_request_id_may_have_been_sent() -> None:
    with pytest.raises(MaybeSent):
        await submit(provider_for(Queue(httpx.Response(200, json={"status": "IN_QUEUE"}))))


async def test_unreadable_accepted_answer_may_have_been_sent() -> None:
    with pytest.raises(MaybeSent):
        await submit(provider_for(Queue(httpx.Response(200, text="<html>"))))


@pytest.mark.parametrize(
    "endpoint", ["fal-ai", "../admin/x", "fal-ai//flux", "fal-ai/flux?x=1", ""]
)
async def test_malformed_endpoint_is_refused_before_anything_is_sent(endpoint: str) -> None:
    queue = Queue(httpx.Response(200, json=SUBMITTED))
    with pytest.raises(InvalidEndpoint):
        await provider_for(queue).submit(endpoint, {}, webhook_url=None, priority=Priority.NORMAL)
    assert queue.requests == []


async def test_error_messages_never_carry_the_webhook_token() -> None:
    with pytest.raises(MaybeSent) as caught:
        await submit(provider_for(Queue(httpx.ReadTimeout("read timed out"))))
    assert "SECRET" not in str(caught.value)


# --- status -------------------------------------------------------------------------------


async def test_status_in_queue_reports_the_position() -> None:
    queue = Queue(httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 4}))
    status = await provider_for(queue).status(SUBMISSION)
    assert (status.state, status.queue_position, status.failed) == (JobState.IN_QUEUE, 4, False)


async def test_status_asks_for_logs_only_when_told_and_keeps_the_urls_own_query() -> None:
    queue = Queue(*[httpx.Response(202, json={"status": "IN_QUEUE"})] * 3)
    provider = provider_for(queue)
    await provider.status(SUBMISSION)
    await provider.status(SUBMISSION, with_logs=True)
    await provider.status(replace(SUBMISSION, status_url=SUBMISSION.status_url + "?region=eu#x"))
    assert [dict(request.url.params) for request in queue.requests] == [
        {"logs": "0"},
        {"logs": "1"},
        {"region": "eu", "logs": "0"},
    ]
    assert queue.requests[0].url.path == "/q/req-1/status"


async def test_status_tolerates_null_logs_missing_metrics_and_unknown_fields() -> None:
    body = {"status": "IN_PROGRESS", "logs": None, "novel_field": {"x": 1}}
    status = await provider_for(Queue(httpx.Response(202, json=body))).status(SUBMISSION)
    assert status.state is JobState.IN_PROGRESS
    assert (status.logs, status.inference_time) == ((), None)


async def test_status_completed_reads_logs_and_inference_time() -> None:
    body = {
        "status": "COMPLETED",
        "logs": [{"message": "step 1", "level": "INFO", "timestamp": "2026-11-25T00:00:00"}],
        "metrics": {"inference_time": 1.25},
    }
    status = await provider_for(Queue(httpx.Response(200, json=body))).status(SUBMISSION)
    assert status.state is JobState.COMPLETED
    assert not status.failed
    assert status.inference_time == 1.25
    assert [line.message for line in status.logs] == ["step 1"]


async def test_completed_with_an_error_is_a_failure() -> None:
    body = {"status": "COMPLETED", "logs": [], "error": "boom", "error_type": "runner_disconnected"}
    status = await provider_for(Queue(httpx.Response(200, json=body))).status(SUBMISSION)
    assert status.failed
    assert status.error_type == "runner_disconnected"


async def test_status_may_go_back_from_in_progress_to_in_queue() -> None:
    queue = Queue(
        httpx.Response(202, json={"status": "IN_PROGRESS", "logs": []}),
        httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 0}),
    )
    provider = provider_for(queue)
    states = [(await provider.status(SUBMISSION)).state for _ in range(2)]
    assert states == [JobState.IN_PROGRESS, JobState.IN_QUEUE]


async def test_status_asks_for_logs_only_when_wanted() -> None:
    queue = Queue(httpx.Response(202, json={"status": "IN_QUEUE"}))
    provider = provider_for(queue)
    await provider.status(SUBMISSION)
    await provider.status(SUBMISSION, with_logs=True)
    assert [request.url.params["logs"] for request in queue.requests] == ["0", "1"]


async def test_unknown_request_is_not_found() -> None:
    queue = Queue(httpx.Response(404, json={"status": "NOT_FOUND"}))
    with pytest.raises(NotFound):
        await provider_for(queue).status(SUBMISSION)


async def test_unknown_status_value_is_not_trusted() -> None:
    queue = Queue(httpx.Response(200, json={"status": "FAILED"}))
    with pytest.raises(MaybeSent):
        await provider_for(queue).status(SUBMISSION)


# --- result -------------------------------------------------------------------------------


async def test_result_is_the_bare_output_with_billable_units_and_exact_big_seed() -> None:
    body = (
        b'{"images": [{"url": "https://v3.fal.media/files/a.png"}], "seed": 15860307465884635512}'
    )
    queue = Queue(httpx.Response(200, content=body, headers={"x-fal-billable-units": "1.5"}))
    result = await provider_for(queue).result(SUBMISSION)
    assert result.ok
    assert result.error is None
    assert isinstance(result.payload, dict)
    assert result.payload["seed"] == 15860307465884635512
    assert result.billable_units == 1.5
    assert queue.requests[0].url == SUBMISSION.response_url


async def test_result_gone_after_completion_is_result_expired() -> None:
    with pytest.raises(ResultExpired):
        await provider_for(Queue(httpx.Response(404, headers=FAL_ID))).result(SUBMISSION)


async def test_model_validation_error_is_a_terminal_failure_typed_by_detail() -> None:
    body = {"detail": [{"loc": ["body"], "msg": "flagged", "type": "content_policy_violation"}]}
    result = await provider_for(Queue(httpx.Response(422, json=body))).result(SUBMISSION)
    assert not result.ok
    assert result.error is not None
    assert (result.error.type, result.error.message, result.error.retryable) == (
        "content_policy_violation",
        "flagged",
        False,
    )
    assert result.payload == body


async def test_body_error_type_wins_over_header_and_detail() -> None:
    body = {"detail": [{"type": "from_detail"}], "error_type": "from_body"}
    answer = httpx.Response(500, json=body, headers={**FAL_ID, "x-fal-error-type": "from_header"})
    result = await provider_for(Queue(answer)).result(SUBMISSION)
    assert result.error is not None
    assert result.error.type == "from_body"


async def test_header_error_type_wins_over_detail() -> None:
    body = {"detail": [{"type": "from_detail"}]}
    answer = httpx.Response(500, json=body, headers={**FAL_ID, "x-fal-error-type": "from_header"})
    result = await provider_for(Queue(answer)).result(SUBMISSION)
    assert result.error is not None
    assert result.error.type == "from_header"


@pytest.mark.parametrize(
    ("status", "headers", "retryable"),
    [
        (422, {"x-fal-retryable": "true"}, True),
        (500, {"x-fal-retryable": "false"}, False),
        (500, {"x-fal-needs-retry": "0"}, False),
        (422, {"x-fal-needs-retry": "1"}, True),
    ],
)
async def test_retry_hint_header_decides_retryability(
    status: int, headers: dict[str, str], retryable: bool
) -> None:
    answer = httpx.Response(status, json={"detail": "x"}, headers={**FAL_ID, **headers})
    result = await provider_for(Queue(answer)).result(SUBMISSION)
    assert result.error is not None
    assert result.error.retryable is retryable


async def test_infrastructure_failure_is_retryable_by_policy() -> None:
    body = {"detail": "runner went away", "error_type": "runner_disconnected"}
    result = await provider_for(Queue(httpx.Response(503, json=body, headers=FAL_ID))).result(
        SUBMISSION
    )
    assert result.error is not None
    assert (result.error.type, result.error.message, result.error.retryable) == (
        "runner_disconnected",
        "runner went away",
        True,
    )


async def test_status_code_classifies_when_nothing_else_does() -> None:
    answer = httpx.Response(500, text="Internal Server Error", headers=FAL_ID)
    result = await provider_for(Queue(answer)).result(SUBMISSION)
    assert result.error is not None
    assert (result.error.type, result.error.retryable) == ("http_500", True)
    assert result.payload is None


async def test_expired_start_timeout_of_our_own_is_not_retryable() -> None:
    headers = {**FAL_ID, "x-fal-request-timeout-type": "user"}
    body = {"detail": "start timeout", "error_type": "request_timeout"}
    result = await provider_for(Queue(httpx.Response(504, json=body, headers=headers))).result(
        SUBMISSION
    )
    assert result.error is not None
    assert not result.error.retryable
    assert result.error.type == "start_timeout"


async def test_cancelled_request_is_distinguishable() -> None:
    body = {"detail": "cancelled", "error_type": "client_cancelled"}
    result = await provider_for(Queue(httpx.Response(499, json=body, headers=FAL_ID))).result(
        SUBMISSION
    )
    assert result.error is not None
    assert result.error.cancelled
    assert not result.error.retryable


async def test_ingress_error_on_result_is_not_the_requests_outcome() -> None:
    with pytest.raises(MaybeSent):
        await provider_for(Queue(httpx.Response(502, text="nginx"))).result(SUBMISSION)


@pytest.mark.parametrize("status", [401, 403])
async def test_credential_error_on_result_is_rejected_not_a_failed_request(status: int) -> None:
    with pytest.raises(Rejected):
        await provider_for(Queue(httpx.Response(status, headers=FAL_ID))).result(SUBMISSION)


async def test_rate_limit_on_result_is_not_the_requests_outcome() -> None:
    with pytest.raises(NotSent):
        await provider_for(Queue(httpx.Response(429, headers=FAL_ID))).result(SUBMISSION)


async def test_rate_limit_on_status_says_how_long_to_wait() -> None:
    answer = httpx.Response(429, headers={**FAL_ID, "retry-after": "4"})
    with pytest.raises(RateLimited) as caught:
        await provider_for(Queue(answer)).status(SUBMISSION)
    assert caught.value.retry_after == 4.0


async def test_unreadable_result_is_a_terminal_failure() -> None:
    result = await provider_for(Queue(httpx.Response(200, content=b"\x89PNG"))).result(SUBMISSION)
    assert not result.ok
    assert result.error is not None
    assert result.error.type == "unreadable_result"


# --- cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answer", "outcome"),
    [
        (202, "CANCELLATION_REQUESTED", CancelOutcome.REQUESTED),
        (400, "ALREADY_COMPLETED", CancelOutcome.ALREADY_COMPLETED),
        (404, "NOT_FOUND", CancelOutcome.NOT_FOUND),
    ],
)
async def test_cancel_outcomes(status: int, answer: str, outcome: CancelOutcome) -> None:
    queue = Queue(httpx.Response(status, json={"status": answer}))
    assert await provider_for(queue).cancel(SUBMISSION) is outcome
    assert queue.requests[0].method == "PUT"
    assert queue.requests[0].url == SUBMISSION.cancel_url


async def test_cancel_with_another_bad_request_is_rejected() -> None:
    queue = Queue(httpx.Response(400, json={"detail": "nope", "error_type": "bad_request"}))
    with pytest.raises(Rejected):
        await provider_for(queue).cancel(SUBMISSION)


# --- ids, urls, lifecycle -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "app"),
    [
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/flux-1/schnell", "fal-ai/flux-1"),
        ("fal-ai/fast-sdxl", "fal-ai/fast-sdxl"),
        ("workflows/alice/my-flow/run", "workflows/alice/my-flow"),
        ("comfy/bob/graph", "comfy/bob/graph"),
    ],
)
def test_app_path_keeps_owner_and_app_and_namespace(endpoint: str, app: str) -> None:
    assert app_path(endpoint) == app


def test_rebuilt_urls_use_only_owner_and_app() -> None:
    rebuilt = request_urls("https://queue.fal.run/", "workflows/alice/my-flow/run", "r 1")
    assert rebuilt.response_url == "https://queue.fal.run/workflows/alice/my-flow/requests/r%201"
    assert rebuilt.status_url.endswith("/requests/r%201/status")
    assert rebuilt.cancel_url.endswith("/requests/r%201/cancel")


async def test_malformed_stored_url_is_refused_before_sending() -> None:
    queue = Queue(httpx.Response(202, json={"status": "IN_QUEUE"}))
    broken = replace(SUBMISSION, status_url="http://[::1/requests/req-1/status")
    with pytest.raises(InvalidEndpoint):
        await provider_for(queue).status(broken)
    assert queue.requests == []


def test_queue_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        FalProvider("k", base_url="queue.fal.run")


async def test_closed_provider_refuses_calls_and_closes_only_its_own_client() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(Queue(httpx.Response(200))))
    async with FalProvider("k", base_url=BASE, client=client) as provider:
        pass
    await provider.aclose()
    assert not client.is_closed
    with pytest.raises(ClosedError):
        await provider.status(SUBMISSION)
    await client.aclose()


# --- webhook bodies -----------------------------------------------------------------------


def test_webhook_ok_carries_the_output() -> None:
    body = (
        b'{"request_id": "req-1", "gateway_request_id": "gw-2", "status": "OK",'
        b' "payload": {"images": [], "seed": 15860307465884635512}}'
    )
    news = parse_webhook(body)
    assert (news.request_id, news.gateway_request_id, news.ok) == ("req-1", "gw-2", True)
    assert news.payload == {"images": [], "seed": 15860307465884635512}
    assert not news.needs_fetch


def test_webhook_error_is_classified_from_its_payload() -> None:
    body = {
        "request_id": "req-1",
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "required", "type": "missing"}]},
    }
    news = parse_webhook(json.dumps(body).encode())
    assert not news.ok
    assert news.error is not None
    assert (news.error.type, news.error.message, news.error.retryable) == (
        "missing",
        "Invalid status code: 422",
        False,
    )


@pytest.mark.parametrize(
    "extra",
    [{"payload": None, "payload_error": "Response payload is not JSON serializable"}, {}],
    ids=["payload-error", "no-payload"],
)
def test_webhook_without_usable_payload_means_fetch_the_result(extra: dict[str, object]) -> None:
    news = parse_webhook(json.dumps({"request_id": "req-1", "status": "OK", **extra}).encode())
    assert news.ok
    assert news.needs_fetch


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"status": "OK"}', b'{"request_id": "r", "status": "MAYBE"}'],
)
def test_malformed_webhook_body_is_rejected(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_webhook(body)
    assert caught.value.reason is RejectReason.MALFORMED_BODY


async def test_the_key_is_never_sent_to_a_host_other_than_the_queue() -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("authorization")
        return httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 0})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = FalProvider("secret-key", base_url="https://queue.fal.run", client=client)
        elsewhere = Submission(
            request_id="r",
            gateway_request_id=None,
            status_url="https://attacker.example/fal-ai/flux/requests/r/status",
            response_url="https://attacker.example/fal-ai/flux/requests/r",
            cancel_url="https://attacker.example/fal-ai/flux/requests/r/cancel",
        )
        await provider.status(elsewhere)
        await provider.status(provider.submission_for("fal-ai/flux/schnell", "r"))
    assert seen == {"attacker.example": None, "queue.fal.run": "Key secret-key"}
