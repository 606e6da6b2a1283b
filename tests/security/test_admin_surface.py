"""The public listener serves fal's webhooks and the probes, nothing else; the status page,
`/status.json`, `/metrics` and `/openapi.json` are on the admin listener, which off loopback
requires a bearer token."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.listeners import admin_app
from genrelay.consumer.service.metrics import METRICS_PATH
from genrelay.consumer.service.openapi import OPENAPI_PATH
from genrelay.consumer.service.status_page import STATUS_JSON_PATH, STATUS_PATH
from tests.relay.harness import relay_settings, running
from tests.security.conftest import Service
from tests.security.helpers import route_methods

ADMIN_PATHS = (STATUS_PATH, STATUS_JSON_PATH, METRICS_PATH, OPENAPI_PATH)
TOKEN = "t" * 40


@pytest.mark.integration
async def test_the_public_listener_refuses_every_admin_path(service: Service) -> None:
    assert set(route_methods(service.relay, listener="public")) == {
        WEBHOOK_PATH,
        "/healthz",
        "/readyz",
    }
    for path in ADMIN_PATHS:
        assert (await service.http.get(path)).status_code == 404, path
        assert (await service.admin.get(path)).status_code == 200, path
    for probe in ("/healthz", "/readyz"):
        assert (await service.http.get(probe)).status_code in (200, 503)


@pytest.mark.integration
async def test_with_a_token_the_admin_listener_answers_only_its_bearer(service: Service) -> None:
    settings = relay_settings(service.stack, service.emulator, admin_token=TOKEN)
    async with (
        running(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.admin_port}") as admin,
    ):
        assert (await admin.get(METRICS_PATH)).status_code == 401
        wrong = {"Authorization": f"Bearer {'x' * 40}"}
        assert (await admin.get(METRICS_PATH, headers=wrong)).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        for path in ADMIN_PATHS:
            assert (await admin.get(path, headers=right)).status_code == 200, path


async def test_the_token_check_refuses_near_misses() -> None:
    inner = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("ok"))])
    transport = httpx.ASGITransport(admin_app(inner, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        for header in ("", TOKEN, f"bearer {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x"):
            answer = await client.get("/x", headers={"Authorization": header} if header else {})
            assert answer.status_code == 401, header
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("/x", headers={"Authorization": f"Bearer {TOKEN}"})).text == "ok"


def test_an_admin_listener_off_loopback_needs_a_long_token() -> None:
    with pytest.raises(ValidationError, match="GENRELAY_ADMIN_TOKEN"):
        Settings(admin_host="0.0.0.0")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(admin_host="0.0.0.0", admin_token="short")
    assert Settings(admin_host="0.0.0.0", admin_token=TOKEN).admin_host == "0.0.0.0"
    assert Settings(admin_host="::1").admin_host == "::1"
