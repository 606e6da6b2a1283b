"""The OpenAPI 3.1 description of the service's HTTP surface, served at `/openapi.json`.

One webhook route (only where a webhook secret is configured) and read-only operational
routes. The document is built from the same constants and models the routes use, so it
cannot drift from them silently; contract tests fuzz the running service against it.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genrelay import __version__
from genrelay.consumer.errors import RejectReason
from genrelay.consumer.provider.fal import FalWebhookBody
from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.provider.webhook_signature import (
    ATTEMPT_PARAM,
    KEY_PARAM,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOKEN_PARAM,
    USER_ID_HEADER,
)
from genrelay.consumer.service.admin_pages import DEAD_LETTERS_PATH
from genrelay.consumer.service.metrics import METRICS_PATH
from genrelay.consumer.service.status_page import STATUS_JSON_PATH, STATUS_PATH
from genrelay.schemas.fields import IDEMPOTENCY_KEY_MAX_LENGTH, IdempotencyKey

OPENAPI_PATH = "/openapi.json"

_SCHEMAS = "#/components/schemas/{model}"
# An unpadded base64url HMAC-SHA256, as `WebhookToken.token` writes it.
_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{43}$"
# What `verify_fal_webhook` accepts before it checks the signature itself.
_TIMESTAMP_PATTERN = r"^[0-9]{1,12}$"
_SIGNATURE_PATTERN = r"^[0-9a-fA-F]{128}$"


def openapi_document(*, webhooks: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `webhooks` is whether the webhook route is served."""
    body_schema = FalWebhookBody.model_json_schema(ref_template=_SCHEMAS)
    components: dict[str, Any] = body_schema.pop("$defs", {})
    components.update(
        FalWebhookBody=body_schema,
        WebhookAccepted=_object({"status": {"const": "accepted"}}),
        WebhookRefused=_object(
            {"error": {"enum": [*(reason.value for reason in RejectReason), "keys_unavailable"]}}
        ),
        Readiness=_object(
            {"ready": {"type": "boolean"}, "partitions": _array({"type": "integer"})}
        ),
        Status=_object(
            {
                "ready": {"type": "boolean"},
                "partitions": _array({"type": "integer"}),
                "in_flight": {"type": "integer", "minimum": 0},
                "by_phase": _counts(),
                "by_endpoint": _counts(),
                "by_tenant": {
                    "type": "object",
                    "additionalProperties": _object(
                        {
                            "in_flight": {"type": "integer", "minimum": 0},
                            "waiting": {"type": "integer", "minimum": 0},
                            "share": {"type": "number", "minimum": 0, "maximum": 1},
                            "budget_waiting": {"type": "integer", "minimum": 0},
                            "spent_usd": {"type": ["number", "null"]},
                            "budget_usd": {"type": ["number", "null"]},
                        }
                    ),
                },
                "rates": {"type": "object", "additionalProperties": {"type": "number"}},
                "completions": _array({"type": "object"}),
                "failures": _array({"type": "object"}),
                "trends": _array({"type": "object"}),
                "instance": {"type": "string"},
                "generated_at": {"type": "string", "format": "date-time"},
            }
        ),
    )
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _get(
                "Liveness: the process serves HTTP.", _json(_object({"status": {"const": "ok"}}))
            )
        },
        "/readyz": {
            "get": _get(
                "Readiness: partitions assigned and their ledgers restored.",
                _json(_ref("Readiness")),
                {"503": _response("Not ready (starting or stopping).", _json(_ref("Readiness")))},
            )
        },
        METRICS_PATH: {
            "get": _get(
                "Prometheus exposition.",
                {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            )
        },
        STATUS_PATH: {
            "get": _get("The live status page.", {"text/html": {"schema": {"type": "string"}}})
        },
        STATUS_JSON_PATH: {"get": _get("The status page's data.", _json(_ref("Status")))},
        OPENAPI_PATH: {"get": _get("This document.", _json({"type": "object"}))},
        "/keys/{key}": {"get": _key_operation()},
        DEAD_LETTERS_PATH: {
            "get": _get(
                "Dead letters counted by reason, and the latest ones.",
                _page(_object({"counts": _counts(), "letters": _array({"type": "object"})})),
                _kafka_down(),
            )
        },
    }
    if webhooks:
        paths[WEBHOOK_PATH] = {"post": _webhook_operation()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "genrelay",
            "version": __version__,
            "description": "One genrelay replica's HTTP surface. Only the webhook route"
            " writes. The public listener (GENRELAY_HTTP_PORT) serves the webhook route and the"
            " probes; every other path is on the admin listener (GENRELAY_ADMIN_PORT), which"
            " requires `Authorization: Bearer` with GENRELAY_ADMIN_TOKEN when one is set.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def openapi_route(*, webhooks: bool) -> Route:
    """`GET /openapi.json`, serving `openapi_document(webhooks=webhooks)`."""
    document = openapi_document(webhooks=webhooks)

    async def serve(request: Request) -> Response:
        return JSONResponse(document)

    return Route(OPENAPI_PATH, serve, methods=["GET"])


def _key_operation() -> dict[str, Any]:
    history = _object(
        {
            "key": {"type": "string"},
            "partition": {"type": "integer", "minimum": 0},
            "trace_id": {"type": ["string", "null"]},
            "states": _array({"type": "object"}),
            "events": _array({"type": "object"}),
        }
    )
    operation = _get(
        "What happened to one key: its ledger states, events, artifacts and trace id.",
        _page(history),
        {
            "404": _response("No state or event of the key (its history).", _page(history)),
            "400": _response("Not an idempotency key.", _page(_object({"error": _non_empty()}))),
            **_kafka_down(),
        },
    )
    # Keys with "/" are served too; described are those no client rewrites as a path: no
    # "/", and no leading "." (a client may resolve "." and ".." segments away).
    key = {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH, "pattern": "^[^./][^/]*$"}
    operation["parameters"] = [_parameter("path", "key", key, "the idempotency key")]
    return operation


def _page(schema: dict[str, Any]) -> dict[str, Any]:
    """An admin page: HTML, or `schema` as JSON to `Accept: application/json`."""
    return {**_json(schema), "text/html": {"schema": {"type": "string"}}}


def _kafka_down() -> dict[str, Any]:
    down = _object({"error": {"const": "kafka_unavailable"}, "detail": {"type": "string"}})
    return {"503": _response("Kafka could not be read.", _page(down))}


def _webhook_operation() -> dict[str, Any]:
    refused = _json(_ref("WebhookRefused"))
    key_schema = TypeAdapter(IdempotencyKey).json_schema()
    return {
        "operationId": "receiveFalWebhook",
        "summary": "A fal webhook delivery, verified and handed to the owner of its key.",
        "description": (
            "The URL carries the idempotency key, the submit attempt it was made for and an "
            "HMAC token of both; the headers carry "
            "fal's Ed25519 signature over the request id, user id, timestamp and the SHA-256 "
            "of the raw body. Every refusal is a 4xx and changes nothing."
        ),
        "parameters": [
            _parameter("query", KEY_PARAM, key_schema, "The idempotency key the URL is for."),
            _parameter(
                "query",
                ATTEMPT_PARAM,
                {"type": "string", "pattern": "^[0-9]{1,9}$"},
                "The submit attempt the URL is for.",
            ),
            _parameter(
                "query",
                TOKEN_PARAM,
                {"type": "string", "pattern": _TOKEN_PATTERN},
                "HMAC of key and attempt.",
            ),
            _parameter("header", REQUEST_ID_HEADER, _non_empty(), "fal's request id."),
            _parameter("header", USER_ID_HEADER, _non_empty(), "fal's user id."),
            _parameter(
                "header",
                TIMESTAMP_HEADER,
                {"type": "string", "pattern": _TIMESTAMP_PATTERN},
                "Unix seconds; refused more than 300 s away from now.",
            ),
            _parameter(
                "header",
                SIGNATURE_HEADER,
                {"type": "string", "pattern": _SIGNATURE_PATTERN},
                "Hex Ed25519 signature.",
            ),
        ],
        "requestBody": {"required": True, "content": _json(_ref("FalWebhookBody"))},
        "responses": {
            "200": _response("Handed to the webhooks topic.", _json(_ref("WebhookAccepted"))),
            "400": _response("Missing or malformed header, or malformed body.", refused),
            "401": _response("Bad signature or stale timestamp.", refused),
            "403": _response("The token is not the key's.", refused),
            "404": _response("The URL names no key.", refused),
            "413": _response("The body is over the size limit.", refused),
            "503": _response("fal's signing keys cannot be loaded; retry later.", refused),
        },
    }


def _parameter(where: str, name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    shown = "-".join(part.capitalize() for part in name.split("-")) if where == "header" else name
    return {
        "in": where,
        "name": shown,
        "required": True,
        "schema": schema,
        "description": description,
    }


def _get(
    summary: str, content: dict[str, Any], more: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": _response("OK", content), **(more or {})}}


def _response(description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": content}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _SCHEMAS.format(model=name)}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _counts() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}


def _non_empty() -> dict[str, Any]:
    return {"type": "string", "minLength": 1}
