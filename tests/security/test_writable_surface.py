"""Only `POST /webhooks/fal` writes, and only where a webhook secret is configured: every other
method on every route, and every method on any other path, is a 404 or 405.

The routes are read from the app `Relay._start_http` serves, so a route added later is checked
without this test being edited.
"""

from __future__ import annotations

import httpx
import pytest

from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.service.relay import Relay
from tests.relay.harness import relay_settings
from tests.security.conftest import Service
from tests.security.helpers import route_methods

pytestmark = pytest.mark.integration

READ_METHODS = frozenset({"GET", "HEAD"})
OTHER_METHODS = ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND")
UNROUTED_PATHS = ("/", "/admin", "/webhooks", f"{WEBHOOK_PATH}/extra", "/_emulator/config")


async def refused_writes(http: httpx.AsyncClient, paths: list[str]) -> dict[str, int]:
    """`method path` -> status for every method that is not a read, on every path."""
    answers = {}
    for path in paths:
        for method in OTHER_METHODS:
            if (method, path) != ("POST", WEBHOOK_PATH):
                answers[f"{method} {path}"] = (await http.request(method, path)).status_code
    return answers


async def test_only_the_webhook_route_accepts_a_write(service: Service) -> None:
    routes = route_methods(service.relay)
    assert {path for path, methods in routes.items() if methods - READ_METHODS} == {WEBHOOK_PATH}
    assert routes[WEBHOOK_PATH] == {"POST"}

    for http in (service.http, service.admin):
        answers = await refused_writes(http, [*routes, *UNROUTED_PATHS])
        assert {req for req, status in answers.items() if status not in (404, 405)} == set()
        for path in UNROUTED_PATHS:
            assert (await http.get(path)).status_code == 404


async def test_a_polling_only_relay_has_no_writable_route(service: Service) -> None:
    settings = relay_settings(
        service.stack, service.emulator, webhook_secret="", public_webhook_url=None
    )
    async with (
        Relay(settings) as relay,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as http,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.admin_port}") as admin,
    ):
        routes = route_methods(relay)
        assert WEBHOOK_PATH not in routes
        assert {path for path, methods in routes.items() if methods - READ_METHODS} == set()
        answers = await refused_writes(http, [*routes, WEBHOOK_PATH, *UNROUTED_PATHS])
        answers |= await refused_writes(admin, [*routes, WEBHOOK_PATH, *UNROUTED_PATHS])
        assert (await http.post(WEBHOOK_PATH, content=b"{}")).status_code == 404
    assert {request for request, status in answers.items() if status not in (404, 405)} == set()
