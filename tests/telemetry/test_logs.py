"""Log lines are JSON, carry the job's identity while it runs, and never carry a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from genrelay.consumer.service.logs import (
    REDACTED,
    SecretRedactor,
    configure_logging,
    current_job,
    job_context,
)

FAL_KEY = "fal-key-4d1c:9f2e7a"
S3_SECRET = "wJalr/XUtnFEMI+K7MDENG"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging("INFO", json=True, secrets=[FAL_KEY, S3_SECRET, ""], stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_inside_a_job_context_carry_its_identity_and_lines_outside_do_not(
    stream: io.StringIO,
) -> None:
    log = logging.getLogger("genrelay.consumer.dispatch.jobs")
    log.info("before")
    with job_context(key="order-42/hero", request_id="req-1", trace_id="0af7651916cd43dd"):
        log.info("submitted %s", "fal-ai/flux/schnell")
        logging.getLogger("httpx").warning("a library's line")
    log.info("after")

    before, submitted, library, after = lines(stream)
    assert submitted["message"] == "submitted fal-ai/flux/schnell"
    assert submitted["level"] == "INFO"
    assert submitted["logger"] == "genrelay.consumer.dispatch.jobs"
    for line in (submitted, library):
        assert line["idempotency_key"] == "order-42/hero"
        assert line["request_id"] == "req-1"
        assert line["trace_id"] == "0af7651916cd43dd"
    for line in (before, after):
        assert "idempotency_key" not in line
        assert "request_id" not in line
        assert "trace_id" not in line
    assert current_job() is None


async def test_concurrent_jobs_each_log_their_own_key(stream: io.StringIO) -> None:
    log = logging.getLogger("genrelay.consumer.dispatch.jobs")
    both_inside = asyncio.Barrier(2)

    async def job(key: str) -> None:
        with job_context(key=key):
            await both_inside.wait()  # both contexts are set at once
            log.info("working on %s", key)

    await asyncio.gather(job("a"), job("b"))

    assert {(line["idempotency_key"], line["message"]) for line in lines(stream)} == {
        ("a", "working on a"),
        ("b", "working on b"),
    }


def test_secrets_are_redacted_wherever_they_appear(stream: io.StringIO) -> None:
    log = logging.getLogger("genrelay.consumer.provider.fal")
    log.warning("posting with Authorization: Key %s", FAL_KEY)
    log.info("config %r", {"s3_secret_key": S3_SECRET})
    log.info("signed url https://s3/x?sig=wJalr%2FXUtnFEMI%2BK7MDENG")
    log.info("header", extra={"authorization": f"Key {FAL_KEY}"})
    try:
        raise RuntimeError(f"bad credentials {S3_SECRET}")
    except RuntimeError:
        log.exception("upload failed")

    log.info("two placeholders %s %s", FAL_KEY)  # a mistake in a log call

    output = stream.getvalue()
    assert FAL_KEY not in output
    assert S3_SECRET not in output
    assert "wJalr%2FXUtnFEMI%2BK7MDENG" not in output
    warning, config, url, header, failure, mistake = lines(stream)
    assert warning["message"] == f"posting with Authorization: Key {REDACTED}"
    assert config["message"] == f"config {{'s3_secret_key': '{REDACTED}'}}"
    assert url["message"] == f"signed url https://s3/x?sig={REDACTED}"
    assert header["authorization"] == f"Key {REDACTED}"
    assert failure["message"] == "upload failed"
    assert f"RuntimeError: bad credentials {REDACTED}" in failure["exception"]
    assert mistake["message"].endswith(f"(unformattable arguments: ('{REDACTED}',))")


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines() -> None:
    root = logging.getLogger()
    level = root.level
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", json=True, stream=first)
    handler = configure_logging(logging.DEBUG, json=False, stream=second)
    try:
        with job_context(key="order-7", request_id="req-7"):
            logging.getLogger("genrelay.test").debug("hello")
        assert first.getvalue() == ""
        (line,) = second.getvalue().splitlines()
        tags = "[idempotency_key=order-7 request_id=req-7]"
        assert line.endswith(f"DEBUG   genrelay.test: hello {tags}")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_value_too_short_to_be_a_secret_never_garbles_the_text() -> None:
    # The local stack's S3 access key used to be `genrelay`, and every traceback read
    # `[REDACTED].consumer…`. Access key ids are not secrets, and short values are ignored.
    redactor = SecretRedactor(["genrelay", "a-real-secret-value"])
    text = redactor.redact("genrelay.consumer failed with a-real-secret-value")
    assert text == f"genrelay.consumer failed with {REDACTED}"
