"""Hostile webhook requests: whatever the query, headers and body, an unsigned request is a 4xx
and nothing is handed off; a genuinely signed one is handed off whole or refused with a 400.

Already covered: `tests/unit/test_webhook_signature.py` (each header, the timestamp window,
keys, tokens) and `tests/relay/test_webhook_receiver.py` (each refusal's status through the
running relay, with no topic changed).

Added here: property tests straight into the receiver's ASGI app, headers exactly as sent
(no HTTP client tidies them), with a handoff that records every call.
"""

from __future__ import annotations

import json
import string
import time
from functools import partial
from urllib.parse import quote as url_quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from genrelay.consumer.provider.webhook_signature import (
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    USER_ID_HEADER,
    WebhookToken,
)
from tests.security.helpers import (
    USER_ID,
    WEBHOOK_SECRET,
    Answer,
    InProcessReceiver,
    as_asgi,
    asgi_call,
    fal_body,
    in_process_receiver,
    signed,
)

KEYS = ["order-1/hero", "order-2/hero"]
quote = partial(url_quote, safe="")
TOKENS = WebhookToken(WEBHOOK_SECRET)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# HTTP header values as a server hands them over: any byte but CR, LF and NUL.
header_values = st.binary(max_size=60).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)
header_names = st.from_regex(rb"\A[a-z0-9!#$%&'*+.^_`|~-]{1,20}\Z")


def well_formed(name: str) -> st.SearchStrategy[bytes]:
    """Values that pass a header's format check, so fuzzing reaches the next check."""
    return {
        REQUEST_ID_HEADER: st.sampled_from([b"req-1", b"req-2"]),
        USER_ID_HEADER: st.sampled_from([USER_ID.encode(), b"someone-else"]),
        TIMESTAMP_HEADER: st.integers(-400, 400).map(
            lambda skew: str(int(time.time()) + skew).encode()
        ),
        SIGNATURE_HEADER: st.binary(min_size=64, max_size=64).map(lambda s: s.hex().encode())
        # A genuine signature, but of another body than the one sent.
        | st.just(signed(fal_body() + b" ")["X-Fal-Webhook-Signature"].encode()),
    }[name]


FAL_HEADERS = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
# Sometimes all four well formed, so that fuzzing reaches the signature check itself.
fal_headers = st.fixed_dictionaries({name: well_formed(name) for name in FAL_HEADERS}) | (
    st.fixed_dictionaries(
        {}, optional={name: well_formed(name) | header_values for name in FAL_HEADERS}
    )
)
other_headers = st.lists(st.tuples(header_names, header_values), max_size=4)
# Content-Length as an HTTP parser would let it through: ASCII digits (true or not) or absent.
content_lengths = st.none() | st.from_regex(rb"\A[0-9]{1,25}\Z")

request_ids = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
query_values = st.sampled_from([*KEYS, *(TOKENS.token(k, 1) for k in KEYS), "1", ""]) | st.text(
    max_size=20
)
query_names = st.sampled_from(["key", "attempt", "token", "KEY", "key[]", "x"]) | st.text(
    max_size=6
)
# A third of the queries are a genuine key, attempt and token, so fuzzing reaches later checks.
queries = (
    st.sampled_from([f"key={quote(k)}&attempt=1&token={TOKENS.token(k, 1)}".encode() for k in KEYS])
    | st.lists(st.tuples(query_names, query_values), max_size=5).map(
        lambda pairs: "&".join(f"{quote(n)}={quote(v)}" for n, v in pairs).encode()
    )
    | st.binary(max_size=60)
)

bodies = (
    st.binary(max_size=300)
    | st.just(fal_body())
    | st.builds(
        lambda rid, status, payload: json.dumps(
            {"request_id": rid, "status": status, "payload": payload}
        ).encode(),
        st.text(max_size=10),
        st.sampled_from(["OK", "ERROR", "ok", ""]),
        st.none() | st.dictionaries(st.text(max_size=5), st.integers()),
    )
)


async def post(
    receiver: InProcessReceiver,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    content_length: bytes | None,
    chunk: int,
) -> Answer:
    if content_length is not None:
        headers = [*headers, (b"content-length", content_length)]
    chunks = [body[at : at + chunk] for at in range(0, len(body), chunk)] or [b""]
    return await asgi_call(receiver.app, query=query, headers=headers, chunks=chunks)


@FUZZ
@given(
    query=queries,
    fal=fal_headers,
    others=other_headers,
    body=bodies,
    content_length=content_lengths,
    chunk=st.integers(1, 512),
)
async def test_unsigned_requests_are_refused_with_a_4xx_and_never_handed_off(
    query: bytes,
    fal: dict[str, bytes],
    others: list[tuple[bytes, bytes]],
    body: bytes,
    content_length: bytes | None,
    chunk: int,
) -> None:
    headers = [(name.encode(), value) for name, value in fal.items()] + others
    async with in_process_receiver() as receiver:
        answer = await post(receiver, query, headers, body, content_length, chunk)
    event(f"status {answer.status}")
    assert 400 <= answer.status < 500, answer
    assert receiver.handoffs == []


@FUZZ
@given(
    key=st.sampled_from(KEYS),
    request_id=st.sampled_from(["req-1", "req-2"]) | request_ids,
    body=bodies,
    chunk=st.integers(1, 512),
)
async def test_signed_requests_are_handed_off_whole_or_refused_with_a_400(
    key: str, request_id: str, body: bytes, chunk: int
) -> None:
    headers = as_asgi(signed(body, request_id))
    async with in_process_receiver() as receiver:
        answer = await post(receiver, receiver.query(key), headers, body, None, chunk)
    event(f"status {answer.status}")
    if answer.status == 200:
        [delivery] = receiver.handoffs
        assert (delivery.idempotency_key, delivery.request_id) == (key, request_id)
    else:
        assert answer.status == 400, answer
        assert receiver.handoffs == []


@FUZZ
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["key", "attempt", "token"]),
            st.sampled_from([*KEYS, *(TOKENS.token(k, 1) for k in KEYS), "1", "2"]),
        ),
        max_size=6,
    )
)
async def test_a_delivery_is_only_ever_handed_off_under_the_key_its_token_was_minted_for(
    pairs: list[tuple[str, str]],
) -> None:
    query = "&".join(f"{name}={quote(value)}" for name, value in pairs).encode()
    body = fal_body()
    headers = as_asgi(signed(body))
    async with in_process_receiver() as receiver:
        answer = await post(receiver, query, headers, body, None, 512)
    # The receiver reads the last value of each parameter.
    last = dict(pairs)
    genuine = (
        last.get("key") in KEYS
        and last.get("attempt") == "1"
        and last.get("token") == TOKENS.token(last.get("key", ""), 1)
    )
    event("genuine" if genuine else "forged")
    complete = {"key", "attempt", "token"} <= last.keys() and all(last.values())
    assert answer.status == (200 if genuine else 403 if complete else 404)
    assert [d.idempotency_key for d in receiver.handoffs] == ([last["key"]] if genuine else [])


@pytest.mark.parametrize("declared", ["²".encode("latin-1"), b"9" * 5000], ids=["sup2", "long"])
async def test_a_content_length_no_parser_should_pass_is_still_a_4xx(declared: bytes) -> None:
    async with in_process_receiver() as receiver:
        query = receiver.query(KEYS[0])
        answer = await post(receiver, query, [], fal_body(), declared, 512)
    assert 400 <= answer.status < 500
    assert receiver.handoffs == []
