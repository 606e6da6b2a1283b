"""JSON bodies of the queue API (fal-api.md §1.3, §2.1): URLs, statuses, job descriptions."""

from __future__ import annotations

from typing import Any

from genrelay.emulator.jobs import Job, Phase

JSON = Any


def request_urls(base_url: str, job: Job) -> dict[str, str]:
    """Absolute URLs of a request; they carry owner/app only, never the sub-path."""
    response_url = f"{base_url}/{job.endpoint.app_path}/requests/{job.request_id}"
    return {
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }


def submit_body(base_url: str, job: Job, position: int) -> dict[str, JSON]:
    return {
        "status": "IN_QUEUE",
        "request_id": job.request_id,
        "gateway_request_id": job.gateway_request_id,
        **request_urls(base_url, job),
        "queue_position": position,
    }


def status_body(base_url: str, job: Job, position: int, with_logs: bool) -> dict[str, JSON]:
    """A status poll or stream event. `logs` and, while queued, `queue_position` are always
    present because fal-client raises KeyError without them."""
    body: dict[str, JSON] = {
        "status": job.phase.value,
        "request_id": job.request_id,
        **request_urls(base_url, job),
        "logs": [entry.as_json() for entry in job.logs] if with_logs else None,
    }
    if job.phase is Phase.QUEUED:
        body["queue_position"] = position
    elif job.phase is Phase.COMPLETED and job.outcome is not None:
        inference_time = job.outcome.inference_time
        body["metrics"] = {} if inference_time is None else {"inference_time": inference_time}
        body |= job.outcome.status_fields()
    return body


def describe(job: Job, position: int) -> dict[str, JSON]:
    """The emulator's own view of a request, for tests (`/_emulator/requests/{id}`)."""
    outcome = job.outcome
    return {
        "request_id": job.request_id,
        "gateway_request_id": job.gateway_request_id,
        "seq": job.seq,
        "endpoint": str(job.endpoint),
        "status": job.phase.value,
        "queue_position": position,
        "priority": job.priority.value,
        "attempt": job.attempt,
        "cold_start": job.cold_start,
        "cancel_requested": job.cancel_requested,
        "no_retry": job.no_retry,
        "webhook_url": job.webhook_url,
        "received_at": job.received_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "result_status_code": None if outcome is None else outcome.status_code,
        "error_type": None if outcome is None else outcome.error_type,
        "logs": [entry.as_json() for entry in job.logs],
    }
