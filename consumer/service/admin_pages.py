"""Admin pages that answer "what happened?": one key's history, and the dead letters.

- `GET /keys/{key}`: every ledger state the key went through (as far as the compacted ledger
  still holds them), its completion event(s), artifacts and trace id, as `genrelay inspect`
  prints them. Read from Kafka (committed data), so it answers for keys any replica owns.
- `GET /dead-letters`: dead letters counted by reason, and the latest ones (re-drive them
  with `genrelay dead-letters redrive ID`).

Both answer HTML, or JSON to `Accept: application/json`. They read topics on each request:
they are for people, not for polling. Everything shown comes from producers' records, so the
HTML escapes it all.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from genrelay.operations.dead_letters import counts, read_dead_letters
from genrelay.operations.key_history import key_history
from genrelay.schemas.fields import IDEMPOTENCY_KEY_MAX_LENGTH
from genrelay.schemas.topics import Topics

KEYS_PATH = "/keys/{key:path}"
DEAD_LETTERS_PATH = "/dead-letters"
# The dead letters a page lists, newest first (the counts cover them all).
LISTED_DEAD_LETTERS = 100

_STYLE = (
    "body{font:14px system-ui,sans-serif;margin:1.5rem;color:#1b1f24}"
    "pre{background:#f4f5f7;padding:1rem;overflow:auto}"
    "table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;"
    "text-align:left}"
)


def admin_page_routes(bootstrap: str, topics: Topics) -> list[Route]:
    """The routes, reading the topics at `bootstrap`."""

    async def key(request: Request) -> Response:
        name = request.path_params["key"]
        if not 0 < len(name) <= IDEMPOTENCY_KEY_MAX_LENGTH:
            return _answer(request, 400, {"error": "not an idempotency key"}, "Not a key")
        history = await key_history(bootstrap, topics.ledger, topics.completions, name)
        status = 200 if history.found else 404
        return _answer(request, status, history.to_json(), f"Key {name}", history.text())

    async def dead_letters(request: Request) -> Response:
        letters = await read_dead_letters(bootstrap, topics.dead_letter)
        latest = sorted(letters, key=lambda letter: letter.at, reverse=True)
        body = {
            "counts": counts(letters),
            "letters": [letter.summary() for letter in latest[:LISTED_DEAD_LETTERS]],
        }
        return _answer(request, 200, body, "Dead letters", _dead_letters_text(body))

    return [
        Route(KEYS_PATH, _unavailable_without_kafka(key), methods=["GET"]),
        Route(DEAD_LETTERS_PATH, _unavailable_without_kafka(dead_letters), methods=["GET"]),
    ]


Endpoint = Callable[[Request], Awaitable[Response]]


def _unavailable_without_kafka(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (KafkaError, TimeoutError) as exc:
            body = {"error": "kafka_unavailable", "detail": str(exc)}
            return _answer(request, 503, body, "Kafka unavailable", str(exc))

    return guarded


def _answer(
    request: Request, status: int, body: dict[str, Any], title: str, text: str = ""
) -> Response:
    headers = {"cache-control": "no-store"}
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(body, status_code=status, headers=headers)
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)} · genrelay</title>"
        f"<style>{_STYLE}</style><h1>{html.escape(title)}</h1>"
        f"<pre>{html.escape(text or str(body.get('error', '')))}</pre>"
    )
    return HTMLResponse(page, status_code=status, headers=headers)


def _dead_letters_text(body: dict[str, Any]) -> str:
    lines = ["by reason:"]
    lines += [f"  {reason:<28} {n}" for reason, n in body["counts"].items()] or ["  none"]
    lines.append("")
    lines.append(f"latest (at most {LISTED_DEAD_LETTERS}; `genrelay dead-letters redrive ID`):")
    for letter in body["letters"]:
        lines.append(
            f"  {letter['id']:<12} {letter['at']}  {letter['reason']:<24} key {letter['key']}"
            f"  {letter['error'] or ''}"
        )
    return "\n".join(lines)
