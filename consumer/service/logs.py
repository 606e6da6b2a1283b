"""Logging: one JSON object per line, with the current job's identity, and no secrets.

While `job_context(key=..., request_id=..., trace_id=...)` is active (it lives in a
`ContextVar`, so each asyncio task sees its own), every record carries those fields. The
handler that `configure_logging` installs on the root logger stamps them, redacts every
configured secret, then formats: so library loggers (aiokafka, httpx, uvicorn) get the same
treatment as ours.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from json import dumps
from typing import Any, TextIO
from urllib.parse import quote

REDACTED = "[REDACTED]"
SHORTEST_SECRET = 12  # characters: a shorter value is not treated as a secret
CONTEXT_FIELDS = ("idempotency_key", "request_id", "trace_id")


@dataclass(frozen=True)
class JobContext:
    """Who the code running now works for."""

    idempotency_key: str
    request_id: str | None = None
    trace_id: str | None = None


_current: ContextVar[JobContext | None] = ContextVar("genrelay_job", default=None)


@contextmanager
def job_context(
    *, key: str, request_id: str | None = None, trace_id: str | None = None
) -> Iterator[JobContext]:
    """Tag every log record emitted inside the block with this job's identity."""
    context = JobContext(key, request_id, trace_id)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_job() -> JobContext | None:
    """The job context in force, if any."""
    return _current.get()


class JobContextFilter(logging.Filter):
    """Copies the job context onto each record (as None outside a job), so formatters see it."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        record.idempotency_key = context.idempotency_key if context else None
        record.request_id = context.request_id if context else None
        record.trace_id = context.trace_id if context else None
        return True


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    *CONTEXT_FIELDS,
}


# A webhook URL's token (plain or URL-encoded inside `fal_webhook=`) binds deliveries to a key:
# it is a credential, though derived rather than configured.
_TOKEN = re.compile(r"((?:^|[?&]|%26|%3F)token(?:=|%3D))[A-Za-z0-9_\-]+", re.IGNORECASE)


class SecretRedactor(logging.Filter):
    """Replaces every known secret value in a record's message, arguments, extras and traceback.

    The message is rendered here (`msg % args`) so that a secret split between the format
    string and an argument, or hidden in an object's repr, is still caught.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret containing another is replaced whole. URL-encoded forms
        # too: S3 secret keys contain '/' and '+', which appear escaped in logged URLs.
        # A value too short to be a secret would only garble the text it happens to occur in.
        real = [secret for secret in secrets if len(secret) >= SHORTEST_SECRET]
        values = {form for secret in real for form in (secret, quote(secret, ""))}
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        """`text` with every secret, and every webhook URL token, replaced."""
        text = _TOKEN.sub(rf"\1{REDACTED}", text)
        return self._pattern.sub(REDACTED, text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A bad format call must not raise into the caller (filters run outside the
            # handler's error handling), nor leak its arguments unredacted.
            message = f"{record.msg} (unformattable arguments: {record.args!r})"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, job context, extras, error."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A readable line for a terminal, with the job's key and request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        if not tags:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the tags
        return f"{head} [{' '.join(tags)}]{newline}{rest}"


class _GenrelayHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure_logging` owns, so calling it again replaces it."""


def configure_logging(
    level: int | str,
    json: bool,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records to `stream` (stderr), as JSON lines or text; returns the handler.

    `secrets` are the values to redact (API keys, passwords); empty strings are ignored.
    Calling it again replaces the previous configuration instead of adding to it.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GenrelayHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _GenrelayHandler(stream if stream is not None else sys.stderr)
    # Filters on the handler, not on a logger: logger filters skip records that propagate up
    # from child loggers, which is where nearly every record comes from.
    handler.addFilter(JobContextFilter())
    handler.addFilter(SecretRedactor(secrets))
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # One INFO line per HTTP request would drown the job lines (and repeat every URL).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return handler
