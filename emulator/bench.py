"""Measure the emulator's own throughput: `python -m genrelay.emulator.bench`.

Starts the emulator in a child process (so client and server each have a core) and runs
submit → status (until COMPLETED) → result cycles over keep-alive connections; with
`--webhooks`, completion is learnt from the emulator's webhooks instead of polling. The default
client is a minimal HTTP/1.1 client on asyncio streams, because httpx spends milliseconds of
CPU per request under concurrency and would measure itself; `--client httpx` measures that
too. Prints requests/s, jobs/s and the server's CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

KEY = "bench-key"
ENDPOINT = "fal-ai/flux/schnell"
BODY = json.dumps({"prompt": "bench", "image_size": {"width": 32, "height": 32}}).encode()

Request = Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]


class RawConnection:
    """One keep-alive HTTP/1.1 connection; enough protocol for the emulator's replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Key {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        status = int((await self._reader.readline()).split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


@dataclass
class Tally:
    requests: int = 0
    jobs: int = 0
    errors: int = 0


class HookReceiver:
    """Receives the emulator's webhooks and wakes the cycle waiting for each request."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._arrived: set[str] = set()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait(self, request_id: str) -> None:
        if request_id in self._arrived:
            self._arrived.discard(request_id)
            return
        future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        await future

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(
                    line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if line
                )
                await reader.readexactly(int(fields[b"content-length"]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                self._arrive(fields[b"x-fal-webhook-request-id"].decode())
        writer.close()

    def _arrive(self, request_id: str) -> None:
        future = self._waiting.pop(request_id, None)
        if future is None:
            self._arrived.add(request_id)
        elif not future.done():
            future.set_result(None)


@dataclass(frozen=True)
class Workload:
    download: bool = False
    hooks: HookReceiver | None = None


async def cycle(request: Request, tally: Tally, work: Workload) -> None:
    """One job: submit, learn of completion (poll, or webhook), fetch the result (and file)."""
    query = "" if work.hooks is None else "?" + urlencode({"fal_webhook": work.hooks.url})
    status, body = await request("POST", f"/{ENDPOINT}{query}", BODY)
    tally.requests += 1
    if status != 200:
        tally.errors += 1
        return
    handle = json.loads(body)
    if work.hooks is not None:
        await work.hooks.wait(handle["request_id"])
    else:
        await _poll(request, tally, _path(handle["status_url"]))
    status, body = await request("GET", _path(handle["response_url"]), b"")
    tally.requests += 1
    if work.download and status == 200:
        await request("GET", _path(json.loads(body)["images"][0]["url"]), b"")
        tally.requests += 1
    tally.jobs += 1


async def _poll(request: Request, tally: Tally, status_path: str) -> None:
    while True:
        status, _ = await request("GET", status_path, b"")
        tally.requests += 1
        if status == 200:
            return
        await asyncio.sleep(0)


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def worker(request: Request, tally: Tally, until: float, work: Workload) -> None:
    while time.monotonic() < until:
        await cycle(request, tally, work)


async def raw_requests(base_url: str, concurrency: int) -> list[Request]:
    """One raw connection per worker."""
    host, port = base_url.removeprefix("http://").split(":")
    connections = [await RawConnection.open(host, int(port)) for _ in range(concurrency)]
    return [connection.request for connection in connections]


async def httpx_requests(base_url: str, concurrency: int) -> list[Request]:
    """One shared httpx pool, as an application would use it."""
    client = httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Key {KEY}"},
        limits=httpx.Limits(max_connections=concurrency),
    )

    async def request(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        response = await client.request(method, path, content=body or None)
        return response.status_code, response.content

    return [request] * concurrency


CLIENTS = {"raw": raw_requests, "httpx": httpx_requests}


async def start_emulator() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genrelay.emulator",
        "--api-keys",
        KEY,
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    base_url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, base_url


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    process, base_url = (None, args.url) if args.url else await start_emulator()
    hooks = HookReceiver() if args.webhooks else None
    try:
        requests = await CLIENTS[args.client](base_url, args.concurrency)
        work = Workload(args.download, hooks)
        if hooks is not None:
            await hooks.start()
        warm = Tally()
        until = time.monotonic() + args.warmup
        await asyncio.gather(*(worker(r, warm, until, work) for r in requests))
        tally = Tally()
        cpu_before = 0.0 if process is None else cpu_seconds(process.pid)
        client_before, started = time.process_time(), time.monotonic()
        until = started + args.duration
        await asyncio.gather(*(worker(r, tally, until, work) for r in requests))
        elapsed = time.monotonic() - started
        client_cpu = time.process_time() - client_before
        server_cpu = None if process is None else cpu_seconds(process.pid) - cpu_before
        server_rss = None if process is None else round(rss_mb(process.pid))
    finally:
        if hooks is not None:
            hooks.close()
        if process is not None:
            process.terminate()
            await process.wait()
    per_request = None if server_cpu is None else round(server_cpu / max(tally.requests, 1) * 1e6)
    return {
        "client": args.client,
        "completion": "webhook" if args.webhooks else "polling",
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "requests": tally.requests,
        "requests_per_s": round(tally.requests / elapsed),
        "jobs_per_s": round(tally.jobs / elapsed),
        "errors": tally.errors,
        "server_cpu_us_per_request": per_request,
        "client_cpu_share": round(client_cpu / elapsed, 2),
        "server_rss_mb": server_rss,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrelay.emulator.bench")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--download", action="store_true", help="also GET each output file")
    parser.add_argument("--webhooks", action="store_true", help="learn completion by webhook")
    parser.add_argument("--url", help=f"a running emulator (accepting key {KEY!r}) instead")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
