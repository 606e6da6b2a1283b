"""Output files: find them in a result, name them in the object store, download them safely.

A result is JSON of any shape; every object with an http(s) ``url`` is a file to copy
(fal's ``File``: ``{url, content_type?, file_name?, file_size?, …}``), and so is every bare
string that is an http(s) URL on a file host (``{"video_url": "https://v3.fal.media/…"}``).
Its URL may expire, so it is downloaded at once, checked, stored under a deterministic key,
and the result is rewritten to point at the stored copy instead.

The URL comes from a third party, so the download trusts nothing: allowlisted hosts only,
no private addresses (checked after resolution, and the connection is pinned to the
checked address), redirects followed by hand and re-checked, a size cap, no credentials.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import re
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Self, TypeAlias
from urllib.parse import quote, unquote_to_bytes

import httpx

from genrelay.consumer.dispatch.backoff import jittered, retry_after
from genrelay.consumer.errors import (
    ClosedError,
    DownloadFailed,
    DownloadRefused,
    Unstorable,
    UrlExpired,
)
from genrelay.consumer.provider.provider import JSON

logger = logging.getLogger(__name__)

FilePath: TypeAlias = tuple[str | int, ...]
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

# fal's CDN: fal.media, v3.fal.media, v3b.fal.media (restricted files).
FAL_CDN_HOSTS = ("fal.media", "*.fal.media")
MAX_KEY_LENGTH = 1024  # S3's limit on an object key, in UTF-8 bytes

_EXTENSION = re.compile(r"[a-z0-9]{1,10}")
# A fixed table rather than `mimetypes`, whose answers depend on the host's mime.types:
# every replica must derive the same key for the same file.
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/svg+xml": "svg",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
    "model/gltf-binary": "glb",
    "application/zip": "zip",
    "application/json": "json",
    "text/plain": "txt",
}
_GENERIC_TYPE = "application/octet-stream"
_EXPIRED_STATUSES = frozenset({403, 404, 410})
_CLIENT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Hosts whose checked addresses are kept at once (output files come from a handful).
_RESOLVED_HOSTS = 256


@dataclass(frozen=True)
class FileRef:
    """One file object inside a result, and where it sits (``path``) in the JSON."""

    path: FilePath
    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


def walk_files(output: JSON, file_hosts: Sequence[str] = FAL_CDN_HOSTS) -> list[FileRef]:
    """Every file in ``output``, depth first, in document order: file objects, and bare URL
    strings on one of ``file_hosts`` (the hosts downloads may use)."""
    refs: list[FileRef] = []
    _walk(output, (), refs, file_hosts)
    return refs


def _walk(node: JSON, path: FilePath, refs: list[FileRef], hosts: Sequence[str]) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _walk(item, (*path, index), refs, hosts)
        return
    if isinstance(node, str):
        if path and _is_file_url(node, hosts):
            refs.append(FileRef(path=path, url=node, file_name=_url_file_name(node)))
        return
    if not isinstance(node, dict):
        return
    if _is_file(node):
        refs.append(
            FileRef(
                path=path,
                url=str(node["url"]),
                content_type=_str(node.get("content_type")),
                file_name=_str(node.get("file_name")),
                file_size=_size(node.get("file_size")),
            )
        )
    for name, value in node.items():
        if not (name == "url" and _is_file(node)):
            _walk(value, (*path, name), refs, hosts)


def _is_file(node: dict[str, JSON]) -> bool:
    # A data: URL holds the file itself (fal's `sync_mode`): stored like any other file, so
    # neither the ledger nor the event carries megabytes of base64.
    url = node.get("url")
    return isinstance(url, str) and url.lower().startswith(("https://", "http://", "data:"))


def _is_file_url(text: str, hosts: Sequence[str]) -> bool:
    # Any other text (a prompt, a link to a web page) stays text: only file hosts are files.
    if not text.lower().startswith(("https://", "http://")) or any(c.isspace() for c in text):
        return False
    try:
        host = httpx.URL(text).host
    except httpx.InvalidURL:
        return False
    return bool(host) and _host_allowed(host, hosts)


def _url_file_name(url: str) -> str | None:
    name = httpx.URL(url).path.rsplit("/", 1)[-1]
    return name or None


def replace_files(output: JSON, objects: Mapping[FilePath, str]) -> JSON:
    """``output`` with each file at a path in ``objects`` pointing at its stored copy.

    In a file object the expiring ``url`` is dropped and ``"object": <reference>`` takes its
    place, the file's other fields kept; a bare URL string becomes the reference itself.
    Raises ValueError if a path names no file.
    """
    unused = set(objects)
    replaced = _replace(output, (), objects, unused)
    if unused:
        raise Unstorable(f"no file object at {sorted(unused, key=repr)}")
    return replaced


def _replace(
    node: JSON, path: FilePath, objects: Mapping[FilePath, str], unused: set[FilePath]
) -> JSON:
    if isinstance(node, list):
        return [_replace(item, (*path, index), objects, unused) for index, item in enumerate(node)]
    if (
        isinstance(node, str)
        and path in objects
        and node.lower().startswith(("https://", "http://"))
    ):
        unused.discard(path)
        return objects[path]
    if not isinstance(node, dict):
        return node
    stored = objects.get(path) if _is_file(node) else None
    if stored is not None:
        unused.discard(path)
    rebuilt: dict[str, JSON] = {}
    for name, value in node.items():
        if name == "url" and stored is not None:
            rebuilt["object"] = stored
        else:
            rebuilt[name] = _replace(value, (*path, name), objects, unused)
    return rebuilt


def object_key(prefix: str, idempotency_key: str, n: int, ext: str) -> str:
    """``{prefix}/{quoted key}/{n}.{ext}``: deterministic, and never outside ``prefix``.

    The idempotency key becomes one percent-encoded path segment, so ``/`` or ``..`` in it
    cannot climb out of the prefix, and distinct keys never share a folder.
    """
    if not idempotency_key:
        raise Unstorable("the idempotency key is empty")
    if n < 0 or not _EXTENSION.fullmatch(ext):
        raise Unstorable(f"bad file number or extension: {n}, {ext!r}")
    segment = quote(idempotency_key, safe="")
    if segment in {".", ".."}:
        segment = segment.replace(".", "%2E")
    key = "/".join([*_prefix_segments(prefix), segment, f"{n}.{ext}"])
    if len(key.encode()) > MAX_KEY_LENGTH:
        raise Unstorable(f"object key longer than {MAX_KEY_LENGTH} bytes")
    return key


def _prefix_segments(prefix: str) -> list[str]:
    stripped = prefix.strip("/")
    segments = stripped.split("/") if stripped else []
    if any(segment in {"", ".", ".."} for segment in segments):
        raise Unstorable(f"bad object key prefix {prefix!r}")
    return segments


def file_extension(content_type: str | None, file_name: str | None) -> str:
    """The extension for a stored file: from its content type, else its name, else ``bin``."""
    if content_type:
        known = _EXTENSIONS.get(_media_type(content_type))
        if known:
            return known
    if file_name and "." in file_name:
        suffix = file_name.rsplit(".", 1)[1].lower()
        if _EXTENSION.fullmatch(suffix):
            return suffix
    return "bin"


@dataclass(frozen=True)
class DownloadPolicy:
    """What a download may touch. The emulator needs loopback, http and its own host."""

    allowed_hosts: tuple[str, ...] = FAL_CDN_HOSTS
    allowed_schemes: frozenset[str] = frozenset({"https"})
    allow_private_addresses: bool = False
    max_bytes: int = 1 << 30
    max_redirects: int = 3
    attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    # httpx's read timeout is per chunk; this bounds a slow drip as a whole.
    attempt_timeout: float = 300.0
    spool_bytes: int = 8 << 20
    # A host's checked addresses are used again for this long: every output file of a busy
    # relay comes from a few CDN hosts, and each lookup is a trip to a resolver thread (and
    # often to a DNS server). Short, so a CDN's changed addresses are soon followed.
    resolved_for: float = 30.0


@dataclass(frozen=True)
class DownloadedFile:
    """A verified local copy, positioned at its start. ``close()`` deletes it."""

    file: IO[bytes]
    size: int
    sha256: str
    content_type: str

    def close(self) -> None:
        self.file.close()


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, through the event loop's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class Downloader:
    """Copies output files into spooled temporary files, under ``DownloadPolicy``."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        policy: DownloadPolicy | None = None,
        resolver: Resolver = resolve_host,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is not None and "authorization" in client.headers:
            raise ValueError("the download client must not carry credentials")
        self._client = client if client is not None else httpx.AsyncClient(timeout=_CLIENT_TIMEOUT)
        self._owns_client = client is None
        self._policy = policy or DownloadPolicy()
        self._resolver = resolver
        self._sleep = sleep
        self._clock = clock
        # (host, port) -> (when the answer goes stale, the addresses, checked).
        self._resolved: dict[tuple[str, int], tuple[float, Sequence[IPAddress]]] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def file_hosts(self) -> tuple[str, ...]:
        """The hosts whose bare URLs in a result are files to copy."""
        return self._policy.allowed_hosts

    async def download(self, ref: FileRef) -> DownloadedFile:
        """Download ``ref``, retrying transient failures with jittered backoff.

        Raises ``DownloadRefused`` (policy), ``UrlExpired`` (refetch the result for fresh
        URLs) or, once the attempts are spent, ``DownloadFailed``.
        """
        if self._closed:
            raise ClosedError("Downloader is closed")
        if ref.file_size is not None and ref.file_size > self._policy.max_bytes:
            raise DownloadRefused(f"{ref.file_size} bytes is over the {self._policy.max_bytes} cap")
        if ref.url[:5].lower() == "data:":
            return self._inline(ref)
        attempt = 1
        while True:
            try:
                return await self._attempt(ref)
            except DownloadFailed as exc:
                if attempt >= self._policy.attempts:
                    raise
                logger.info("download attempt %d of %s failed: %s", attempt, _safe(ref.url), exc)
                await self._sleep(self._backoff(attempt, exc.retry_after))
                attempt += 1

    async def aclose(self) -> None:
        """Close the client if this downloader created it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def _attempt(self, ref: FileRef) -> DownloadedFile:
        try:
            async with asyncio.timeout(self._policy.attempt_timeout):
                return await self._follow(ref)
        except TimeoutError as exc:
            raise DownloadFailed(f"{_safe(ref.url)}: slower than the attempt timeout") from exc
        except httpx.TransportError as exc:
            raise DownloadFailed(f"{_safe(ref.url)}: {exc!r}") from exc

    async def _follow(self, ref: FileRef) -> DownloadedFile:
        try:
            url = httpx.URL(ref.url)
        except httpx.InvalidURL as exc:
            raise DownloadRefused(f"malformed URL {_safe(ref.url)}") from exc
        for _ in range(self._policy.max_redirects + 1):
            request = await self._pinned_request(url)
            try:
                response = await self._client.send(request, stream=True, follow_redirects=False)
            except httpx.TransportError:
                # The address may be the one that failed: the next attempt looks it up again.
                self._resolved.pop((url.host, _port(url)), None)
                raise
            try:
                if response.is_redirect:
                    url = _redirect_target(url, response.headers["location"])
                    continue
                _check_status(response, url)
                return await self._save(response, ref)
            finally:
                await response.aclose()
        raise DownloadRefused(f"{_safe(ref.url)}: more than {self._policy.max_redirects} redirects")

    async def _pinned_request(self, url: httpx.URL) -> httpx.Request:
        policy = self._policy
        if url.scheme not in policy.allowed_schemes:
            raise DownloadRefused(f"{_safe(url)}: scheme {url.scheme!r} is not allowed")
        if url.userinfo:
            raise DownloadRefused(f"{_safe(url)}: credentials in the URL")
        if not _host_allowed(url.host, policy.allowed_hosts):
            raise DownloadRefused(f"{_safe(url)}: host {url.host!r} is not allowed")
        address = (await self._addresses(url.host, _port(url)))[0]
        # Connecting to the checked address closes the window in which a second DNS answer
        # (rebinding) could point the connection somewhere private; TLS still verifies the
        # certificate against the host name.
        return self._client.build_request(
            "GET",
            url.copy_with(host=str(address)),
            headers={"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"},
            extensions={"sni_hostname": url.host} if url.scheme == "https" else {},
        )

    async def _addresses(self, host: str, port: int) -> Sequence[IPAddress]:
        now = self._clock()
        known = self._resolved.get((host, port))
        if known is not None and known[0] > now:
            return known[1]
        try:
            addresses: Sequence[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = await self._resolver(host, port)
            except OSError as exc:
                raise DownloadFailed(f"cannot resolve {host!r}: {exc}") from exc
        if not addresses:
            raise DownloadFailed(f"{host!r} resolves to no address")
        if not self._policy.allow_private_addresses:
            private = [str(address) for address in addresses if not _is_public(address)]
            if private:
                raise DownloadRefused(f"{host!r} resolves to non-public {', '.join(private)}")
        # Only checked answers are kept; a bounded few, stale ones dropped first.
        self._resolved = {k: v for k, v in self._resolved.items() if v[0] > now}
        if len(self._resolved) < _RESOLVED_HOSTS:
            self._resolved[host, port] = (now + self._policy.resolved_for, addresses)
        return addresses

    async def _save(self, response: httpx.Response, ref: FileRef) -> DownloadedFile:
        max_bytes = self._policy.max_bytes
        declared = _content_length(response)
        if declared is not None and declared > max_bytes:
            raise DownloadRefused(f"{_safe(ref.url)}: {declared} bytes is over the cap")
        # Handed to the caller on success (DownloadedFile.close), closed here on failure.
        spool = tempfile.SpooledTemporaryFile(max_size=self._policy.spool_bytes)  # noqa: SIM115
        try:
            digest = hashlib.sha256()
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadRefused(f"{_safe(ref.url)}: more than {max_bytes} bytes")
                digest.update(chunk)
                spool.write(chunk)
            # Content-Length counts encoded bytes; h11 itself refuses a short encoded body.
            if declared is not None and not _is_encoded(response) and size != declared:
                raise DownloadFailed(f"{_safe(ref.url)}: got {size} of {declared} bytes")
            if ref.file_size is not None and size != ref.file_size:
                raise DownloadFailed(f"{_safe(ref.url)}: got {size} of {ref.file_size} bytes")
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return DownloadedFile(
            file=spool,
            size=size,
            sha256=digest.hexdigest(),
            content_type=_content_type(response, ref),
        )

    def _inline(self, ref: FileRef) -> DownloadedFile:
        """A data: URL's bytes, checked like a download's (size cap, declared size)."""
        header, comma, data = ref.url.partition(",")
        if not comma:
            raise DownloadRefused("a data: URL without data")
        media_type, *params = header[5:].split(";")
        try:
            if "base64" in (p.strip().lower() for p in params):
                content = base64.b64decode(data, validate=True)
            else:
                content = unquote_to_bytes(data)
        except ValueError as exc:
            raise DownloadRefused(f"an unreadable data: URL ({exc})") from exc
        if len(content) > self._policy.max_bytes:
            raise DownloadRefused(f"inline file of {len(content)} bytes is over the cap")
        if ref.file_size is not None and len(content) != ref.file_size:
            raise DownloadRefused(f"inline file of {len(content)} bytes, {ref.file_size} declared")
        spool = tempfile.SpooledTemporaryFile(max_size=self._policy.spool_bytes)  # noqa: SIM115
        spool.write(content)
        spool.seek(0)
        declared = _media_type(ref.content_type or "") or _media_type(media_type)
        return DownloadedFile(
            file=spool,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content_type=declared or _GENERIC_TYPE,
        )

    def _backoff(self, attempt: int, later: float | None) -> float:
        policy = self._policy
        return jittered(
            attempt, base=policy.backoff_base, cap=policy.backoff_max, retry_after=later
        )


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    try:
        return url.join(location)
    except httpx.InvalidURL as exc:
        raise DownloadRefused(f"{_safe(url)}: malformed redirect") from exc


def _check_status(response: httpx.Response, url: httpx.URL) -> None:
    status = response.status_code
    if response.is_success:
        return
    if status in _EXPIRED_STATUSES:
        raise UrlExpired(f"{_safe(url)}: {status}", status_code=status)
    raise DownloadFailed(
        f"{_safe(url)}: {status}", status_code=status, retry_after=retry_after(response.headers)
    )


def _host_allowed(host: str, patterns: Sequence[str]) -> bool:
    host = host.rstrip(".").lower()
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _is_public(address: IPAddress) -> bool:
    # IPv6 forms that carry an IPv4 address are judged by the address they carry: a NAT64
    # prefix counts as global whatever private address it wraps.
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.sixtofour is not None:
            address = address.sixtofour
    return address.is_global and not address.is_multicast


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _is_encoded(response: httpx.Response) -> bool:
    encoding: str = response.headers.get("content-encoding", "identity")
    return encoding.lower() != "identity"


def _content_type(response: httpx.Response, ref: FileRef) -> str:
    # CDNs often answer with the generic type; the provider's declared type is then better.
    served = _media_type(response.headers.get("content-type", ""))
    if served and served != _GENERIC_TYPE:
        return served
    declared = _media_type(ref.content_type or "")
    return declared or served or _GENERIC_TYPE


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _safe(url: str | httpx.URL) -> str:
    # Signed CDN URLs carry their signature in the query: keep it out of logs.
    try:
        return str(httpx.URL(url).copy_with(query=None, fragment=None))
    except httpx.InvalidURL:
        return "<malformed URL>"


def _str(value: JSON) -> str | None:
    return value if isinstance(value, str) and value else None


def _size(value: JSON) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
