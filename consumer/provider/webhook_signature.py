"""Proof that a webhook delivery is genuine and meant for the key whose URL it reached.

Two independent checks, both needed:

- fal signs every delivery with Ed25519 over ``request_id, user_id, timestamp,
  sha256(raw body)``; the public keys come from a JWKS that rotates and names no key id,
  so every key is tried (``verify_fal_webhook``, ``JwksCache``, ``verify_delivery``).
- fal would sign a delivery to *any* URL, including one an attacker submitted with their
  own account, so the URL we hand fal carries our idempotency key and an HMAC token of it
  (``WebhookToken``); a genuine delivery replayed to another key's URL is refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from genrelay.consumer.errors import KeysUnavailable, RejectReason, WebhookRejected

logger = logging.getLogger(__name__)

FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
MAX_JWKS_TTL = 24 * 3600.0
DEFAULT_TOLERANCE = 300.0

REQUEST_ID_HEADER = "x-fal-webhook-request-id"
USER_ID_HEADER = "x-fal-webhook-user-id"
TIMESTAMP_HEADER = "x-fal-webhook-timestamp"
SIGNATURE_HEADER = "x-fal-webhook-signature"

KEY_PARAM = "key"
ATTEMPT_PARAM = "attempt"
TOKEN_PARAM = "token"

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_JWKS_TIMEOUT = httpx.Timeout(10.0)

Keys = tuple[Ed25519PublicKey, ...]


@dataclass(frozen=True)
class _SignedMessage:
    message: bytes
    signature: bytes


def verify_fal_webhook(
    headers: Mapping[str, str],
    body: bytes,
    *,
    keys: Sequence[Ed25519PublicKey],
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Accept a delivery signed by any of ``keys``, or raise ``WebhookRejected``.

    ``body`` must be the raw bytes as received; ``now`` is unix time in seconds.
    """
    _check_signature(_signed_message(headers, body, now=now, tolerance=tolerance), keys)


async def verify_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    jwks: JwksCache,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """``verify_fal_webhook`` with keys from ``jwks``, refreshed once if none verifies.

    Raises ``KeysUnavailable`` (answer 5xx so fal retries) when no key could ever be loaded.
    """
    # Cheap header checks first, so malformed traffic never reaches the JWKS.
    signed = _signed_message(headers, body, now=now, tolerance=tolerance)
    keys = await jwks.keys()
    try:
        _check_signature(signed, keys)
    except WebhookRejected:
        # fal may have rotated its keys since we fetched them.
        fresh = await jwks.refresh()
        if fresh is keys:
            raise
        _check_signature(signed, fresh)


def _signed_message(
    headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float
) -> _SignedMessage:
    lowered = {name.lower(): value for name, value in headers.items()}
    names = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    missing = [name for name in names if not lowered.get(name)]
    if missing:
        raise WebhookRejected(RejectReason.MISSING_HEADER, ", ".join(missing))
    request_id, user_id, timestamp, signature = (lowered[name] for name in names)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookRejected(RejectReason.MALFORMED_HEADER, TIMESTAMP_HEADER)
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRejected(RejectReason.STALE_TIMESTAMP, f"{timestamp} at {now:.0f}")
    if not _SIGNATURE.fullmatch(signature):
        raise WebhookRejected(RejectReason.MALFORMED_HEADER, SIGNATURE_HEADER)
    body_hash = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\n{user_id}\n{timestamp}\n{body_hash}".encode()
    return _SignedMessage(message=message, signature=bytes.fromhex(signature))


def _check_signature(signed: _SignedMessage, keys: Sequence[Ed25519PublicKey]) -> None:
    for key in keys:
        try:
            key.verify(signed.signature, signed.message)
        except InvalidSignature:
            continue
        return
    raise WebhookRejected(RejectReason.BAD_SIGNATURE, f"no match among {len(keys)} keys")


class JwksCache:
    """fal's webhook keys: fetched once per ``ttl``, by one caller at a time.

    A failed fetch keeps the previous keys (stale-on-error). Fetches, forced or not, are
    at least ``min_refresh_interval`` apart, so neither an outage nor an attacker sending
    bad signatures can make us hammer the JWKS endpoint.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str = FAL_JWKS_URL,
        ttl: float = MAX_JWKS_TTL,
        min_refresh_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl <= MAX_JWKS_TTL:
            raise ValueError(f"JWKS ttl must be within (0, {MAX_JWKS_TTL:.0f}] s")
        self._client = client
        self._url = url
        self._ttl = ttl
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: Keys = ()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._attempts = 0

    async def keys(self) -> Keys:
        """The cached keys, fetched first if they are older than the TTL."""
        if self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl:
            return self._keys
        return await self._refresh(force=False)

    async def refresh(self) -> Keys:
        """Fetch now unless a fetch happened within ``min_refresh_interval``.

        Returns the very same tuple as before when nothing was fetched or nothing changed.
        """
        return await self._refresh(force=True)

    async def _refresh(self, *, force: bool) -> Keys:
        attempts_seen = self._attempts
        async with self._lock:
            # Single flight: whoever waited on the lock shares the fetch that just ran.
            if self._attempts == attempts_seen and self._due(force=force):
                await self._fetch_and_store()
        if not self._keys:
            raise KeysUnavailable(f"no webhook keys could be loaded from {self._url}")
        return self._keys

    def _due(self, *, force: bool) -> bool:
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._min_refresh_interval:
            return False
        expired = self._fetched_at is None or now - self._fetched_at >= self._ttl
        return force or expired

    async def _fetch_and_store(self) -> None:
        try:
            fetched = await self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning(
                "JWKS fetch from %s failed, keeping %d keys: %r", self._url, len(self._keys), exc
            )
        else:
            # Keep the same tuple when nothing changed: callers compare by identity.
            if _raw(fetched) != _raw(self._keys):
                self._keys = fetched
            self._fetched_at = self._clock()
        # Counted only once the fetch finished: if it is cancelled, the next caller fetches.
        self._attempts += 1
        self._attempted_at = self._clock()

    async def _fetch(self) -> Keys:
        response = await self._client.get(self._url, timeout=_JWKS_TIMEOUT)
        response.raise_for_status()
        keys = _parse_jwks(response.json())
        if not keys:
            raise ValueError("the JWKS holds no Ed25519 key")
        return keys


def _raw(keys: Keys) -> tuple[bytes, ...]:
    return tuple(key.public_bytes_raw() for key in keys)


def _parse_jwks(document: object) -> Keys:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no key list")
    loaded = (_load_key(entry) for entry in entries if isinstance(entry, dict))
    return tuple(key for key in loaded if key is not None)


def _load_key(entry: dict[str, object]) -> Ed25519PublicKey | None:
    # Other key types may share the set; they are not ours to use.
    x = entry.get("x")
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519" or not isinstance(x, str):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(_b64url_decode(x))
    except ValueError:
        return None


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WebhookToken:
    """HMAC tokens binding a webhook URL to one submit attempt of one idempotency key.

    A URL that leaks (a proxy's log) is good only for the attempt it was made for: the relay
    adopts news through it only while that attempt is the key's latest.
    """

    # Domain separation: the same secret can never produce a token valid elsewhere.
    _CONTEXT = b"genrelay webhook v2\x00"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the webhook secret must be at least 32 bytes")
        self._secret = secret

    def token(self, key: str, attempt: int) -> str:
        """The token for ``key``'s ``attempt``: base64url HMAC-SHA256, unpadded."""
        message = self._CONTEXT + key.encode() + b"\x00" + str(attempt).encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def build_webhook_url(self, base_url: str, key: str, attempt: int) -> str:
        """``base_url`` with the key, the attempt and their token added to the query."""
        scheme, netloc, path, query, fragment = urlsplit(base_url)
        ours = urlencode(
            {KEY_PARAM: key, ATTEMPT_PARAM: attempt, TOKEN_PARAM: self.token(key, attempt)},
            quote_via=quote,
        )
        return urlunsplit((scheme, netloc, path, f"{query}&{ours}" if query else ours, fragment))

    def check_token(self, key: str, attempt: str, token: str) -> int:
        """The attempt number; ``WebhookRejected(BAD_TOKEN)`` unless ``token`` belongs to
        ``key`` and ``attempt``."""
        if not (attempt.isascii() and attempt.isdigit()) or len(attempt) > 9:
            raise WebhookRejected(RejectReason.BAD_TOKEN, "the URL's attempt is not a number")
        number = int(attempt)
        if not hmac.compare_digest(self.token(key, number).encode(), token.encode()):
            raise WebhookRejected(RejectReason.BAD_TOKEN, "token does not match the key")
        return number
