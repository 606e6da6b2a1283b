"""Output files: finding them, naming them, and downloading them without trusting the URL."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import posixpath
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from genrelay.consumer.artifacts.files import (
    DownloadedFile,
    Downloader,
    DownloadPolicy,
    FileRef,
    IPAddress,
    file_extension,
    object_key,
    replace_files,
    walk_files,
)
from genrelay.consumer.errors import ClosedError, DownloadFailed, DownloadRefused, UrlExpired
from genrelay.consumer.provider.provider import JSON

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
DNS = {
    "v3.fal.media": "104.18.1.1",
    "v3b.fal.media": "104.18.1.2",
    "fal.media": "104.18.1.3,2606:4700::1",
    "internal.fal.media": "10.0.0.5",
    "metadata.fal.media": "169.254.169.254",
    "mapped.fal.media": "::ffff:127.0.0.1",
    "split.fal.media": "104.18.1.4,192.168.1.1",
}
URL = "https://v3.fal.media/files/rabbit/a.png"

Handler = Callable[[httpx.Request], httpx.Response]


# --- finding files ------------------------------------------------------------------------

OUTPUT: JSON = {
    "images": [
        {"url": "https://v3.fal.media/a.png", "content_type": "image/png", "width": 8},
        {"url": "https://v3.fal.media/b.jpeg", "file_name": "b.jpeg", "file_size": 10},
    ],
    "video": {"url": "https://v3.fal.media/c.mp4", "content_type": "video/mp4"},
    "extra": {"frames": [[{"url": "https://v3.fal.media/d.png"}]]},
    "inline": {"url": "data:image/png;base64,AAAA"},
    "seed": 15860307465884635512,
    "prompt": "url",
}


def test_walk_finds_every_file_object_in_any_shape() -> None:
    refs = walk_files(OUTPUT)
    assert [ref.path for ref in refs] == [
        ("images", 0),
        ("images", 1),
        ("video",),
        ("extra", "frames", 0, 0),
        ("inline",),
    ]
    assert refs[0] == FileRef(("images", 0), "https://v3.fal.media/a.png", "image/png")
    assert (refs[1].file_name, refs[1].file_size) == ("b.jpeg", 10)


def test_walk_counts_inline_data_urls_as_files_to_store() -> None:
    # fal's sync_mode answers with the image itself: stored like any file, so neither the
    # ledger nor the event carries its base64.
    (inline,) = [ref for ref in walk_files(OUTPUT) if ref.url.startswith("data:")]
    assert inline.path == ("inline",)


@pytest.mark.parametrize("output", [None, 3, "https://v3.fal.media/a.png", [], {}])
def test_walk_of_output_without_files_is_empty(output: JSON) -> None:
    assert walk_files(output) == []


BARE: JSON = {
    "video_url": "https://v3.fal.media/files/x/clip.mp4",
    "frames": ["https://v3b.fal.media/f/0.png", "https://fal.media/f/1.png"],
    "source": "https://example.com/page.html",  # not a file host: text, not a file
    "prompt": "see https://v3.fal.media/a.png please",  # prose that contains a URL
    "image": {"url": "https://v3.fal.media/a.png", "content_type": "image/png"},
}


def test_walk_finds_bare_url_strings_on_file_hosts() -> None:
    refs = walk_files(BARE)
    assert [(ref.path, ref.url) for ref in refs] == [
        (("video_url",), "https://v3.fal.media/files/x/clip.mp4"),
        (("frames", 0), "https://v3b.fal.media/f/0.png"),
        (("frames", 1), "https://fal.media/f/1.png"),
        (("image",), "https://v3.fal.media/a.png"),
    ]
    assert refs[0].file_name == "clip.mp4"
    # The emulator's (or any configured) host counts once it is one downloads may use.
    assert [r.path for r in walk_files(BARE, ("example.com",))] == [("source",), ("image",)]


def test_replace_turns_a_bare_url_into_its_reference() -> None:
    stored = {
        ("video_url",): "s3://b/k/0.mp4",
        ("frames", 0): "s3://b/k/1.png",
        ("frames", 1): "s3://b/k/2.png",
        ("image",): "s3://b/k/3.png",
    }
    replaced = replace_files(BARE, stored)
    assert isinstance(replaced, dict)
    assert replaced["video_url"] == "s3://b/k/0.mp4"
    assert replaced["frames"] == ["s3://b/k/1.png", "s3://b/k/2.png"]
    assert replaced["image"] == {"object": "s3://b/k/3.png", "content_type": "image/png"}
    assert isinstance(BARE, dict)
    assert replaced["source"] == BARE["source"]
    assert walk_files(replaced) == []


def test_replace_points_each_file_at_its_stored_copy_and_keeps_its_other_fields() -> None:
    stored = {
        ("images", 0): "s3://b/p/k/0.png",
        ("images", 1): "s3://b/p/k/1.jpg",
        ("video",): "s3://b/p/k/2.mp4",
        ("extra", "frames", 0, 0): "s3://b/p/k/3.png",
        ("inline",): "s3://b/p/k/4.png",
    }
    replaced = replace_files(OUTPUT, stored)

    assert isinstance(replaced, dict)
    assert replaced["images"] == [
        {"object": "s3://b/p/k/0.png", "content_type": "image/png", "width": 8},
        {"object": "s3://b/p/k/1.jpg", "file_name": "b.jpeg", "file_size": 10},
    ]
    assert replaced["video"] == {"object": "s3://b/p/k/2.mp4", "content_type": "video/mp4"}
    assert replaced["seed"] == 15860307465884635512
    assert walk_files(replaced) == []


def test_replace_leaves_the_original_untouched() -> None:
    output: JSON = {"video": {"url": "https://v3.fal.media/c.mp4"}}
    replace_files(output, {("video",): "s3://b/k"})
    assert output == {"video": {"url": "https://v3.fal.media/c.mp4"}}


def test_replace_refuses_a_path_that_names_no_file() -> None:
    with pytest.raises(ValueError, match="no file object"):
        replace_files(OUTPUT, {("prompt",): "s3://b/k"})


# --- naming files -------------------------------------------------------------------------


def test_object_key_quotes_the_idempotency_key_into_one_segment() -> None:
    assert object_key("shop", "order-42/hero", 0, "png") == "shop/order-42%2Fhero/0.png"


@pytest.mark.parametrize("key", [".", ".."])
def test_dot_keys_cannot_climb_out_of_the_prefix(key: str) -> None:
    assert object_key("shop", key, 1, "png") == f"shop/{'%2E' * len(key)}/1.png"


@pytest.mark.parametrize("prefix", ["../etc", "a/../b", "a//b", "a/./b"])
def test_a_prefix_with_empty_or_dot_segments_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        object_key(prefix, "k", 0, "png")


@pytest.mark.parametrize(("key", "ext"), [("", "png"), ("k", "p/ng"), ("k", "")])
def test_empty_key_or_odd_extension_is_refused(key: str, ext: str) -> None:
    with pytest.raises(ValueError, match=r"empty|extension"):
        object_key("shop", key, 0, ext)


def test_key_longer_than_s3_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="1024"):
        object_key("shop", "é" * 300, 0, "png")


@given(
    prefix=st.sampled_from(["", "shop", "tenants/shop", "/shop/"]),
    key=st.text(min_size=1, max_size=80),
    n=st.integers(min_value=0, max_value=10_000),
)
def test_object_key_never_escapes_its_prefix(prefix: str, key: str, n: int) -> None:
    result = object_key(prefix, key, n, "png")
    expected_prefix = [segment for segment in prefix.split("/") if segment]
    segments = result.split("/")
    assert segments[: len(expected_prefix)] == expected_prefix
    assert len(segments) == len(expected_prefix) + 2
    assert posixpath.normpath(result) == result
    assert unquote(segments[-2]) == key
    assert segments[-1] == f"{n}.png"


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_distinct_keys_never_share_a_folder(a: str, b: str) -> None:
    assume(a != b)
    assert object_key("p", a, 0, "png") != object_key("p", b, 0, "png")


@pytest.mark.parametrize(
    ("content_type", "file_name", "ext"),
    [
        ("image/jpeg", "x.jpeg", "jpg"),
        ("image/png; charset=binary", None, "png"),
        ("VIDEO/MP4", None, "mp4"),
        ("application/x-unknown", "clip.WEBM", "webm"),
        (None, "archive.tar.gz", "gz"),
        (None, "weird.ex/t", "bin"),
        (None, None, "bin"),
    ],
)
def test_extension_comes_from_type_then_name(
    content_type: str | None, file_name: str | None, ext: str
) -> None:
    assert file_extension(content_type, file_name) == ext


# --- downloading --------------------------------------------------------------------------


async def fake_dns(host: str, port: int) -> Sequence[IPAddress]:
    if host not in DNS:
        raise socket.gaierror(f"unknown host {host}")
    return [ipaddress.ip_address(address) for address in DNS[host].split(",")]


class Cdn:
    """A scripted CDN that records what it was asked, keyed by the Host header."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def hosts(self) -> list[str]:
        return [request.headers["host"] for request in self.requests]


class Sleeps(list[float]):
    async def __call__(self, delay: float) -> None:
        self.append(delay)


def downloader_for(
    cdn: Handler, policy: DownloadPolicy | None = None, sleeps: Sleeps | None = None
) -> Downloader:
    client = httpx.AsyncClient(transport=httpx.MockTransport(cdn))
    return Downloader(
        client, policy=policy, resolver=fake_dns, sleep=Sleeps() if sleeps is None else sleeps
    )


def png(**headers: str) -> httpx.Response:
    return httpx.Response(200, content=PNG, headers={"content-type": "image/png", **headers})


def redirect(location: str) -> httpx.Response:
    return httpx.Response(302, headers={"location": location})


async def fetch(
    downloader: Downloader,
    url: str = URL,
    *,
    content_type: str | None = None,
    file_size: int | None = None,
) -> DownloadedFile:
    ref = FileRef(("images", 0), url, content_type=content_type, file_size=file_size)
    return await downloader.download(ref)


async def test_an_inline_data_url_is_decoded_checked_and_hashed_without_any_request() -> None:
    def nowhere(request: httpx.Request) -> httpx.Response:
        raise AssertionError("an inline file needs no request")

    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    downloaded = await fetch(downloader_for(nowhere), url, file_size=len(PNG))
    assert (downloaded.size, downloaded.sha256, downloaded.content_type) == (
        len(PNG),
        PNG_SHA256,
        "image/png",
    )
    assert downloaded.file.read() == PNG
    downloaded.close()


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,not*base64", "data:image/png;base64", "data:;base64," + "QUFB" * 40],
    ids=["bad-base64", "no-comma", "over-the-cap"],
)
async def test_an_unusable_inline_file_is_refused(url: str) -> None:
    policy = DownloadPolicy(max_bytes=64)
    with pytest.raises(DownloadRefused):
        await fetch(downloader_for(Cdn(png()), policy), url)


async def test_download_hashes_and_counts_while_streaming() -> None:
    downloaded = await fetch(downloader_for(Cdn(png())), file_size=len(PNG))
    assert (downloaded.size, downloaded.sha256, downloaded.content_type) == (
        len(PNG),
        PNG_SHA256,
        "image/png",
    )
    assert downloaded.file.read() == PNG
    downloaded.close()


async def test_download_sends_no_credentials_and_asks_for_identity_encoding() -> None:
    cdn = Cdn(png())
    await fetch(downloader_for(cdn))
    [request] = cdn.requests
    assert "authorization" not in request.headers
    assert request.headers["accept-encoding"] == "identity"


def test_a_client_carrying_credentials_is_refused() -> None:
    client = httpx.AsyncClient(headers={"Authorization": "Key secret"})
    with pytest.raises(ValueError, match="credentials"):
        Downloader(client)


async def test_connection_is_pinned_to_the_checked_address() -> None:
    cdn = Cdn(png())
    await fetch(downloader_for(cdn))
    [request] = cdn.requests
    assert request.url.host == "104.18.1.1"
    assert request.headers["host"] == "v3.fal.media"
    assert request.extensions["sni_hostname"] == "v3.fal.media"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/a.png",
        "https://evilfal.media/a.png",
        "https://fal.media.evil.example/a.png",
        "http://v3.fal.media/a.png",
        "ftp://v3.fal.media/a.png",
        "https://user:pw@v3.fal.media/a.png",
    ],
)
async def test_url_outside_the_policy_is_refused_without_a_request(url: str) -> None:
    cdn = Cdn(png())
    with pytest.raises(DownloadRefused):
        await fetch(downloader_for(cdn), url)
    assert cdn.requests == []


async def test_apex_and_any_subdomain_of_fal_media_are_allowed() -> None:
    cdn = Cdn(png())
    downloader = downloader_for(cdn)
    for url in ("https://fal.media/a.png", "https://v3b.fal.media/a.png"):
        (await fetch(downloader, url)).close()
    assert cdn.hosts == ["fal.media", "v3b.fal.media"]


@pytest.mark.parametrize(
    "host",
    ["internal.fal.media", "metadata.fal.media", "mapped.fal.media", "split.fal.media"],
)
async def test_allowed_host_resolving_to_a_private_address_is_refused(host: str) -> None:
    cdn = Cdn(png())
    with pytest.raises(DownloadRefused, match="non-public"):
        await fetch(downloader_for(cdn), f"https://{host}/a.png")
    assert cdn.requests == []


async def test_redirect_within_the_allowlist_is_followed() -> None:
    cdn = Cdn(redirect("https://v3b.fal.media/signed/a.png?sig=1"), png())
    downloaded = await fetch(downloader_for(cdn))
    assert downloaded.sha256 == PNG_SHA256
    assert cdn.hosts == ["v3.fal.media", "v3b.fal.media"]
    assert cdn.requests[1].url.params["sig"] == "1"


@pytest.mark.parametrize(
    "location",
    [
        "https://127.0.0.1/a.png",
        "https://internal.fal.media/a.png",
        "https://evil.example/a.png",
        "//evil.example/a.png",
        "http://v3.fal.media/a.png",
    ],
)
async def test_redirect_outside_the_policy_is_refused(location: str) -> None:
    cdn = Cdn(redirect(location), png())
    with pytest.raises(DownloadRefused):
        await fetch(downloader_for(cdn))
    assert len(cdn.requests) == 1


async def test_redirect_to_loopback_is_refused() -> None:
    policy = DownloadPolicy(allowed_hosts=("v3.fal.media", "127.0.0.1"))
    cdn = Cdn(redirect("https://127.0.0.1:9000/a.png"), png())
    with pytest.raises(DownloadRefused, match="non-public"):
        await fetch(downloader_for(cdn, policy))


async def test_endless_redirects_are_refused() -> None:
    cdn = Cdn(redirect("/again"))
    with pytest.raises(DownloadRefused, match="redirects"):
        await fetch(downloader_for(cdn, DownloadPolicy(max_redirects=2)))
    assert len(cdn.requests) == 3


async def test_emulator_policy_allows_plain_http_on_loopback() -> None:
    policy = DownloadPolicy(
        allowed_hosts=("127.0.0.1",),
        allowed_schemes=frozenset({"http"}),
        allow_private_addresses=True,
    )
    cdn = Cdn(png())
    downloaded = await fetch(downloader_for(cdn, policy), "http://127.0.0.1:8000/files/a.png")
    assert downloaded.sha256 == PNG_SHA256
    assert "sni_hostname" not in cdn.requests[0].extensions


async def test_declared_size_over_the_cap_is_refused_before_reading() -> None:
    cdn = Cdn(png())
    with pytest.raises(DownloadRefused):
        await fetch(downloader_for(cdn, DownloadPolicy(max_bytes=100)), file_size=101)
    assert cdn.requests == []


async def test_content_length_over_the_cap_is_refused() -> None:
    with pytest.raises(DownloadRefused, match="cap"):
        await fetch(downloader_for(Cdn(png()), DownloadPolicy(max_bytes=100)))


async def test_body_over_the_cap_is_refused_while_streaming() -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 1024

    cdn = Cdn(httpx.Response(200, content=endless()))  # no Content-Length
    with pytest.raises(DownloadRefused, match="more than"):
        await fetch(downloader_for(cdn, DownloadPolicy(max_bytes=10_000)))


async def test_truncated_body_is_retried_then_reported() -> None:
    sleeps = Sleeps()
    cdn = Cdn(png(**{"content-length": str(len(PNG) + 10)}))
    with pytest.raises(DownloadFailed, match="of"):
        await fetch(downloader_for(cdn, DownloadPolicy(attempts=3), sleeps))
    assert len(cdn.requests) == 3
    assert len(sleeps) == 2


async def test_size_differing_from_the_declared_file_size_fails() -> None:
    with pytest.raises(DownloadFailed):
        await fetch(downloader_for(Cdn(png()), DownloadPolicy(attempts=1)), file_size=len(PNG) - 1)


@pytest.mark.parametrize(
    "failure",
    [httpx.Response(503), httpx.Response(500), httpx.ReadError("reset"), httpx.ConnectTimeout("")],
    ids=["503", "500", "reset", "connect-timeout"],
)
async def test_transient_failure_is_retried_with_backoff(
    failure: httpx.Response | Exception,
) -> None:
    sleeps = Sleeps()
    cdn = Cdn(failure, png())
    downloaded = await fetch(downloader_for(cdn, sleeps=sleeps))
    assert downloaded.sha256 == PNG_SHA256
    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= DownloadPolicy().backoff_base


async def test_backoff_grows_and_stays_capped() -> None:
    sleeps = Sleeps()
    policy = DownloadPolicy(attempts=6, backoff_base=1.0, backoff_max=4.0)
    with pytest.raises(DownloadFailed):
        await fetch(downloader_for(Cdn(httpx.Response(502)), policy, sleeps))
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(sleeps, ceilings, strict=True))


async def test_retry_after_is_honoured() -> None:
    sleeps = Sleeps()
    cdn = Cdn(httpx.Response(429, headers={"retry-after": "3"}), png())
    await fetch(downloader_for(cdn, sleeps=sleeps))
    assert sleeps == [3.0]


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_url_asks_for_a_fresh_one_without_retrying(status: int) -> None:
    sleeps = Sleeps()
    cdn = Cdn(httpx.Response(status))
    with pytest.raises(UrlExpired) as caught:
        await fetch(downloader_for(cdn, sleeps=sleeps))
    assert caught.value.status_code == status
    assert len(cdn.requests) == 1
    assert sleeps == []


async def test_unresolvable_host_is_a_transient_failure() -> None:
    policy = DownloadPolicy(allowed_hosts=("*.fal.media",), attempts=1)
    with pytest.raises(DownloadFailed, match="resolve"):
        await fetch(downloader_for(Cdn(png()), policy), "https://gone.fal.media/a.png")


@pytest.mark.parametrize(
    ("served", "declared", "expected"),
    [
        ("image/webp", "image/png", "image/webp"),
        ("application/octet-stream", "image/png", "image/png"),
        ("", None, "application/octet-stream"),
    ],
)
async def test_content_type_prefers_the_served_one_unless_generic(
    served: str, declared: str | None, expected: str
) -> None:
    cdn = Cdn(httpx.Response(200, content=PNG, headers={"content-type": served}))
    downloaded = await fetch(downloader_for(cdn), content_type=declared)
    assert downloaded.content_type == expected


async def test_closed_downloader_refuses_work() -> None:
    async with downloader_for(Cdn(png())) as downloader:
        pass
    await downloader.aclose()
    with pytest.raises(ClosedError):
        await fetch(downloader)


class CountingDns:
    """`fake_dns`, counting its lookups."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.lookups.append(host)
        return await fake_dns(host, port)


async def test_a_hosts_checked_addresses_are_used_again_until_they_go_stale() -> None:
    dns, now = CountingDns(), [0.0]
    client = httpx.AsyncClient(transport=httpx.MockTransport(Cdn(png())))
    downloader = Downloader(client, resolver=dns, sleep=Sleeps(), clock=lambda: now[0])
    await fetch(downloader)
    now[0] = 29.0
    await fetch(downloader)
    assert dns.lookups == ["v3.fal.media"]
    now[0] = 31.0
    await fetch(downloader)
    assert dns.lookups == ["v3.fal.media"] * 2


async def test_a_refused_answer_is_not_kept() -> None:
    dns = CountingDns()
    client = httpx.AsyncClient(transport=httpx.MockTransport(Cdn(png())))
    downloader = Downloader(client, resolver=dns, sleep=Sleeps())
    for _ in range(2):
        with pytest.raises(DownloadRefused):
            await fetch(downloader, "https://internal.fal.media/a.png")
    assert dns.lookups == ["internal.fal.media"] * 2


async def test_an_address_that_failed_is_looked_up_again_on_the_next_attempt() -> None:
    dns = CountingDns()
    cdn = Cdn(httpx.ConnectError("refused"), png())
    client = httpx.AsyncClient(transport=httpx.MockTransport(cdn))
    downloader = Downloader(client, resolver=dns, sleep=Sleeps())
    await fetch(downloader)
    assert dns.lookups == ["v3.fal.media"] * 2
