"""Downloads go only to allowlisted hosts on public addresses, redirects included (SSRF).

Already covered in `tests/unit/test_artifacts.py`: hosts, schemes and credentials outside
the policy (`test_url_outside_the_policy_is_refused_without_a_request`), allowlisted names
resolving to private, link-local, IPv4-mapped loopback or mixed addresses (`test_allowed_
host_resolving_to_a_private_address_is_refused`), the connection pinned to the checked
address against DNS rebinding (`test_connection_is_pinned_to_the_checked_address`), redirects
leaving the policy (`test_redirect_outside_the_policy_is_refused`, `test_redirect_to_
loopback_is_refused`, `test_endless_redirects_are_refused`), no credentials sent
(`test_a_client_carrying_credentials_is_refused`), and the emulator's exemption
(`test_emulator_policy_allows_plain_http_on_loopback`).

Added here: redirects from an allowed public host to every spelling of loopback, link-local
and private space, resolved by the real resolver where the target is a name; and, through
the running relay with `allow_private_downloads=False`, results whose file URLs point at the
cloud metadata address, loopback or private space end `failed` with `download_refused`, no
connection is attempted, and nothing reaches MinIO.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genrelay.consumer.artifacts.files import (
    Downloader,
    DownloadPolicy,
    FileRef,
    IPAddress,
    resolve_host,
)
from genrelay.consumer.errors import DownloadRefused
from genrelay.emulator.server import AsgiServer
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    running,
    submit_record,
)
from tests.security.conftest import Service

# --- redirects, at the downloader -----------------------------------------------------------

CDN_URL = "https://v3.fal.media/files/a.png"

# Where a redirect from the CDN may try to send the download. Each target host is on the
# allowlist below, so only the address check stands between the download and the target.
PRIVATE_TARGETS = {
    "localhost": "https://localhost/a.png",
    "loopback": "https://127.0.0.1:8443/a.png",
    "loopback-short": "https://127.1/a.png",
    "loopback-v6": "https://[::1]/a.png",
    "loopback-v6-long": "https://[0:0:0:0:0:0:0:1]/a.png",
    "loopback-v4-mapped": "https://[::ffff:127.0.0.1]/a.png",
    "metadata": "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "metadata-v4-mapped": "https://[::ffff:169.254.169.254]/latest/meta-data/",
    "unspecified": "https://0.0.0.0/a.png",
    "private-10": "https://10.1.2.3/a.png",
    "private-192": "https://192.168.0.1/a.png",
    "shared-cgnat": "https://100.64.0.1/a.png",
    "unique-local-v6": "https://[fd00::1]/a.png",
    "link-local-v6": "https://[fe80::1]/a.png",
}
EVERY_TARGET_ALLOWED = DownloadPolicy(
    allowed_hosts=(
        "v3.fal.media",
        *(httpx.URL(url).host for url in PRIVATE_TARGETS.values()),
    )
)


async def cdn_public_else_real_dns(host: str, port: int) -> Sequence[IPAddress]:
    # The CDN is public; any other name goes to the machine's own resolver.
    if host == "v3.fal.media":
        return [ipaddress.ip_address("104.18.1.1")]
    return await resolve_host(host, port)


@dataclass
class Cdn:
    """Answers every request with a redirect to `location`, or with a file if there is none."""

    location: str | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.location is None:
            return httpx.Response(200, content=b"\x89PNG")
        return httpx.Response(302, headers={"location": self.location})


@pytest.mark.parametrize("target", sorted(PRIVATE_TARGETS))
async def test_redirect_from_an_allowed_host_to_private_space_is_refused(target: str) -> None:
    cdn = Cdn(PRIVATE_TARGETS[target])
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(cdn)) as client,
        Downloader(client, policy=EVERY_TARGET_ALLOWED, resolver=cdn_public_else_real_dns) as dl,
    ):
        with pytest.raises(DownloadRefused, match="non-public"):
            await dl.download(FileRef(("images", 0), CDN_URL))
    assert [request.headers["host"] for request in cdn.requests] == ["v3.fal.media"]


# An IPv6-only node reaches IPv4 space through NAT64: 64:ff9b::/96 embeds the IPv4 address in
# its last 32 bits, and a translator in the same network forwards to it.
NAT64_EMBEDDED = {
    "loopback": "64:ff9b::7f00:1",
    "metadata": "64:ff9b::a9fe:a9fe",
    "private-10": "64:ff9b::a00:1",
}


@pytest.mark.parametrize("embedded", sorted(NAT64_EMBEDDED))
async def test_an_allowed_host_resolving_to_nat64_of_private_space_is_refused(
    embedded: str,
) -> None:
    async def nat64_dns(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address(NAT64_EMBEDDED[embedded])]

    cdn = Cdn()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(cdn)) as client,
        Downloader(client, policy=DownloadPolicy(attempts=1), resolver=nat64_dns) as dl,
    ):
        with pytest.raises(DownloadRefused, match="non-public"):
            await dl.download(FileRef(("images", 0), CDN_URL))
    assert cdn.requests == []


# --- file URLs in results, through the running relay ----------------------------------------


@dataclass
class HostileQueue:
    """A fal-compatible queue whose every result holds one file at the URL the request's input
    names: what a compromised or spoofed provider could answer."""

    results: dict[str, object] = field(default_factory=dict)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{owner}/{app}/requests/{request_id}/status", self._status),
                Route("/{owner}/{app}/requests/{request_id}", self._result),
                Route("/{endpoint:path}", self._submit, methods=["POST"]),
            ]
        )

    async def _submit(self, request: Request) -> Response:
        request_id = uuid.uuid4().hex
        file_url = (await request.json())["file_url"]
        self.results[request_id] = {"images": [{"url": file_url, "content_type": "image/png"}]}
        return JSONResponse({"request_id": request_id})  # the relay rebuilds the URLs

    async def _status(self, request: Request) -> Response:
        return JSONResponse({"status": "COMPLETED"})

    async def _result(self, request: Request) -> Response:
        return JSONResponse(self.results[request.path_params["request_id"]])


@dataclass
class Listener:
    """A loopback TCP port that counts connections: a refused download never connects."""

    connections: int = 0
    port: int = 0

    async def serve(self) -> asyncio.Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    listening = Listener()
    server = await listening.serve()
    async with server:
        yield listening


def hostile_file_urls(port: int) -> dict[str, str]:
    return {
        "metadata": "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "loopback": f"https://127.0.0.1:{port}/a.png",
        "localhost": f"https://localhost:{port}/a.png",
        "loopback-v6": f"https://[::1]:{port}/a.png",
        "loopback-v4-mapped": f"https://[::ffff:127.0.0.1]:{port}/a.png",
        "private": "https://10.0.0.1/a.png",
        "not-allowlisted": "https://evil.example/a.png",
        "plain-http": "http://v3.fal.media/a.png",
    }


@pytest.mark.integration
async def test_results_pointing_at_private_space_fail_without_a_connection_or_an_object(
    service: Service, listener: Listener
) -> None:
    cases = hostile_file_urls(listener.port)
    queue = HostileQueue()
    async with AsgiServer(queue.app()) as server:
        # Fresh topics, group and bucket; the provider is the hostile queue, polled only.
        settings = relay_settings(
            service.stack,
            service.emulator,
            fal_queue_url=server.base_url,
            public_webhook_url=None,
            poll_grace_seconds=0.1,
            allow_private_downloads=False,
            # Private hosts allowlisted, as for an internal mirror: only the address rule stands
            # between them and the download. The last two cases meet the allowlist and scheme.
            download_hosts=[
                "*.fal.media",
                "169.254.169.254",
                "127.0.0.1",
                "localhost",
                "::1",
                "::ffff:127.0.0.1",
                "10.0.0.1",
            ],
        )
        records = [
            (f"ssrf/{case}".encode(), submit_record(f"ssrf/{case}", case, input={"file_url": url}))
            for case, url in cases.items()
        ]
        async with running(settings):
            await produce(service.stack.kafka_bootstrap, settings.topic_requests, records)
            async with TopicReader(service.stack.kafka_bootstrap, settings.topic_completions) as c:
                await c.until(lambda rs: len(completions_by_key(rs)) == len(cases), timeout=30)

    outcomes = {
        key.removeprefix("ssrf/"): (event["status"], event["error"]["type"])
        for key, [event] in completions_by_key(c.records).items()
    }
    assert outcomes == {case: ("failed", "download_refused") for case in cases}
    assert listener.connections == 0
    assert await service.objects(settings.bucket) == []
