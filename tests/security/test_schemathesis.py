"""The running relay against its OpenAPI description (schemathesis): no 5xx anywhere, answers
as documented, every generated webhook request a 4xx (none carries a valid signature) with
the webhooks and ledger topics unchanged; and the description matches the routes served.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from starlette.applications import Starlette

from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.service.admin_pages import DEAD_LETTERS_PATH
from genrelay.consumer.service.openapi import OPENAPI_PATH, openapi_document, openapi_route
from tests.security.conftest import Service
from tests.security.helpers import route_methods

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
Operation = APIOperation[Any, Any, Any, Any]
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 100}
# Pages that read Kafka on each request (a consumer per read): fewer cases.
READING_KAFKA = {"/keys/{key}", DEAD_LETTERS_PATH}


def fuzz(operation: Operation, mode: GenerationMode, base_url: str) -> list[int]:
    """Send `operation` the cases schemathesis generates; the status of each answer."""
    statuses: list[int] = []
    session = requests.Session()

    @settings(
        max_examples=8 if operation.path in READING_KAFKA else EXAMPLES[mode],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Case[Operation]) -> None:
        response = case.call(base_url=base_url, session=session, timeout=10)
        case.validate_response(response, checks=CHECKS)
        statuses.append(response.status_code)

    with session:
        send()
    return statuses


def fuzz_all(public_url: str, admin_url: str, public: set[str]) -> dict[str, list[int]]:
    """Every operation, sent to the listener that serves its path."""
    schema = schemathesis.openapi.from_dict(openapi_document(webhooks=True))
    statuses: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if operation.path == OPENAPI_PATH:
            continue  # not served until the relay wires it; checked below
        modes = [GenerationMode.POSITIVE]
        if operation.path == WEBHOOK_PATH:
            modes.append(GenerationMode.NEGATIVE)
        base_url = public_url if operation.path in public else admin_url
        for mode in modes:
            statuses.setdefault(operation.label, []).extend(fuzz(operation, mode, base_url))
    return statuses


@pytest.mark.integration
# schemathesis's own strategies draw from `random`, which Hypothesis deprecates.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_the_running_relay_answers_every_generated_request_as_documented(
    service: Service,
) -> None:
    before = await service.written()
    # schemathesis is synchronous: it runs in a thread while this loop serves the relay.
    public = set(route_methods(service.relay, listener="public"))
    statuses = await asyncio.to_thread(
        fuzz_all,
        str(service.http.base_url).rstrip("/"),
        str(service.admin.base_url).rstrip("/"),
        public,
    )

    webhook = statuses.pop(f"POST {WEBHOOK_PATH}")
    assert webhook, "no webhook request was generated"
    assert {status for status in webhook if not 400 <= status < 500} == set()
    assert all(answers for answers in statuses.values()), statuses
    assert await service.written() == before


@pytest.mark.integration
async def test_the_description_names_exactly_the_routes_served(service: Service) -> None:
    described = openapi_document(webhooks=True)["paths"]
    served = route_methods(service.relay)
    assert set(described) - {OPENAPI_PATH} == set(served) - {OPENAPI_PATH}
    for path, methods in served.items():
        assert set(described[path]) == {m.lower() for m in methods - {"HEAD"}}, path


def test_a_polling_only_description_has_no_webhook_route() -> None:
    assert WEBHOOK_PATH not in openapi_document(webhooks=False)["paths"]
    assert WEBHOOK_PATH in openapi_document(webhooks=True)["paths"]


async def test_the_route_serves_the_description_to_get_only() -> None:
    transport = httpx.ASGITransport(Starlette(routes=[openapi_route(webhooks=True)]))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        response = await client.get(OPENAPI_PATH)
        assert (await client.post(OPENAPI_PATH)).status_code == 405
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    assert document == openapi_document(webhooks=True)
    assert document["openapi"].startswith("3.1")


@pytest.mark.integration
async def test_the_running_relay_serves_its_description(service: Service) -> None:
    response = await service.admin.get(OPENAPI_PATH)
    assert response.status_code == 200
    assert response.json() == openapi_document(webhooks=service.relay.receiver is not None)
