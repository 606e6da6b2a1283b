"""Toxiproxy: a TCP proxy that injects network faults, as a child process and an async client.

`ToxiproxyServer` runs the `toxiproxy-server` binary built into the provisioning cache
(`deploy/local/provision.sh`) on 127.0.0.1. `Toxiproxy` speaks its HTTP API: create a proxy
(`listen` → `upstream`), add and remove toxics, reset everything. A toxic acts on one
direction of every connection through its proxy: `upstream` is what the client sends,
`downstream` what it receives, so a downstream `reset_peer` cuts a response after the server
got the request.

    async with ToxiproxyServer(workdir) as server, server.client() as api:
        proxy = await api.create("provider", listen="127.0.0.1:9100", upstream="127.0.0.1:8000")
        async with api.toxic(proxy, Toxic.reset_peer(stream="downstream")):
            ...  # every response through the proxy is cut now
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from genrelay.deploy.local.processes import ManagedProcess, StackStartError, free_port
from genrelay.deploy.local.stack import cache_dir

Stream = Literal["upstream", "downstream"]
ToxicType = Literal["latency", "bandwidth", "slow_close", "timeout", "reset_peer", "limit_data"]

_names = itertools.count(1)


class ToxiproxyError(RuntimeError):
    """Toxiproxy refused a call or could not be reached."""


@dataclass(frozen=True)
class Toxic:
    """One fault on one direction of a proxy's connections.

    `toxicity` is the chance that a connection gets the toxic; it is drawn per connection
    when the toxic starts on it, so 0.3 hits about a third of the connections.
    """

    type: ToxicType
    stream: Stream = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def latency(cls, ms: int, jitter_ms: int = 0, *, stream: Stream = "downstream") -> Toxic:
        """Delay all data by `ms` ± `jitter_ms`."""
        return cls("latency", stream, attributes={"latency": ms, "jitter": jitter_ms})

    @classmethod
    def bandwidth(cls, kb_per_s: int, *, stream: Stream = "upstream") -> Toxic:
        """Pass at most `kb_per_s` KB per second per connection."""
        return cls("bandwidth", stream, attributes={"rate": kb_per_s})

    @classmethod
    def reset_peer(
        cls, after_ms: int = 0, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> Toxic:
        """Reset the connection (TCP RST) when data arrives, after `after_ms`."""
        return cls("reset_peer", stream, toxicity, {"timeout": after_ms})

    @classmethod
    def timeout(cls, close_after_ms: int, *, stream: Stream = "downstream") -> Toxic:
        """Swallow all data; close the connection after `close_after_ms` (0: never)."""
        return cls("timeout", stream, attributes={"timeout": close_after_ms})

    @classmethod
    def limit_data(cls, nbytes: int, *, stream: Stream = "downstream") -> Toxic:
        """Close the connection once `nbytes` have passed (a truncated message)."""
        return cls("limit_data", stream, attributes={"bytes": nbytes})

    def describe(self) -> str:
        """A short human-readable form, e.g. `reset_peer downstream`, `latency 400±300ms up`."""
        a = self.attributes
        detail = {
            "latency": f" {a.get('latency', 0)}±{a.get('jitter', 0)}ms",
            "bandwidth": f" {a.get('rate', 0)}KB/s",
            "timeout": f" close after {a.get('timeout', 0)}ms" if a.get("timeout") else "",
            "reset_peer": f" after {a.get('timeout', 0)}ms" if a.get("timeout") else "",
            "limit_data": f" {a.get('bytes', 0)}B",
        }.get(self.type, "")
        share = "" if self.toxicity >= 1 else f" p={self.toxicity:g}"
        return f"{self.type}{detail} {self.stream}{share}"

    def body(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True)
class Proxy:
    """A proxy Toxiproxy serves: clients connect to `listen`, it connects to `upstream`."""

    name: str
    listen: str
    upstream: str

    @property
    def url(self) -> str:
        """`http://<listen>`, for HTTP services behind the proxy."""
        return f"http://{self.listen}"


class Toxiproxy:
    """An async client of Toxiproxy's HTTP API; an async context manager."""

    def __init__(self, base_url: str, *, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=10.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it; safe to call twice."""
        if self._own_client:
            await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, f"{self.base_url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise ToxiproxyError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def version(self) -> str:
        """The server's version string."""
        try:
            response = await self._client.get(f"{self.base_url}/version")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ToxiproxyError(f"GET /version: {exc!r}") from exc
        return response.text.strip()

    async def create(self, name: str, *, listen: str, upstream: str) -> Proxy:
        """Create an enabled proxy; `listen` must be a free address on 127.0.0.1."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        await self._call("POST", "/proxies", body)
        return Proxy(name, listen, upstream)

    async def delete(self, proxy: Proxy) -> None:
        """Delete a proxy; its open connections are closed."""
        await self._call("DELETE", f"/proxies/{proxy.name}")

    async def set_enabled(self, proxy: Proxy, enabled: bool) -> None:
        """A disabled proxy closes its connections and refuses new ones."""
        await self._call("POST", f"/proxies/{proxy.name}", {"enabled": enabled})

    async def add(self, proxy: Proxy, toxic: Toxic) -> str:
        """Add a toxic to a proxy's current and future connections; returns its name."""
        name = f"{toxic.type}_{toxic.stream}_{next(_names)}"
        await self._call("POST", f"/proxies/{proxy.name}/toxics", toxic.body(name))
        return name

    async def remove(self, proxy: Proxy, name: str) -> None:
        """Remove a toxic; data flows normally again on connections that survived it."""
        await self._call("DELETE", f"/proxies/{proxy.name}/toxics/{name}")

    async def toxics(self, proxy: Proxy) -> list[dict[str, Any]]:
        """The toxics active on a proxy, as the API describes them."""
        found: list[dict[str, Any]] = await self._call("GET", f"/proxies/{proxy.name}/toxics")
        return found

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._call("POST", "/reset")

    @contextlib.asynccontextmanager
    async def toxic(self, proxy: Proxy, toxic: Toxic) -> AsyncIterator[str]:
        """The toxic is active inside the block and removed on the way out, even on cancel."""
        name = await self.add(proxy, toxic)
        try:
            yield name
        finally:
            # Shielded: a fault left behind would outlive the run that injected it.
            await asyncio.shield(self.remove(proxy, name))


class ToxiproxyServer:
    """`toxiproxy-server` on 127.0.0.1 as a child process; an async context manager."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.binary = cache_dir() / "bin" / "toxiproxy-server"
        self.port = port or free_port()
        self.process = ManagedProcess(
            "toxiproxy",
            [str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)],
            workdir / "toxiproxy.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Toxiproxy:
        """A new API client for this server (close it, or use it with `async with`)."""
        return Toxiproxy(self.url)

    async def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until its API answers."""
        if not self.binary.is_file():
            raise StackStartError(
                f"Toxiproxy missing at {self.binary}; run deploy/local/provision.sh first"
            )
        self.process.start()
        async with Toxiproxy(self.url) as api:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                code = self.process.exit_code()
                if code is not None:
                    raise self.process.fail(f"exited with code {code} during start")
                with contextlib.suppress(ToxiproxyError):
                    await api.version()
                    return
                if asyncio.get_running_loop().time() > deadline:
                    self.process.stop()
                    raise self.process.fail(f"was not ready after {timeout:.0f} s")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        self.process.stop(grace=5)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
