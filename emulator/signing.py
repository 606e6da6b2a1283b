"""Ed25519 webhook signatures and the JWKS that publishes their public keys (fal-api.md §5.3).

The signed message is `"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"` and the
signature travels as 128 lowercase hex characters. Deliveries carry no key id, so a receiver
tries every published key; rotation therefore adds a key, switches signing to it and keeps the
old public keys listed for an overlap period.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs for a webhook delivery."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_key_from_jwk(jwk: dict[str, Any]) -> Ed25519PublicKey:
    """Load an OKP/Ed25519 JWK; raises ValueError for anything else."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 OKP key")
    x = str(jwk["x"])
    return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))


def verify(
    keys: list[Ed25519PublicKey],
    *,
    request_id: str,
    user_id: str,
    timestamp: str,
    signature_hex: str,
    body: bytes,
) -> bool:
    """True if any of `keys` verifies the signature (receivers must try them all)."""
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    message = signed_message(request_id, user_id, timestamp, body)
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One Ed25519 key pair and, once rotated out, when it leaves the JWKS."""

    private: Ed25519PrivateKey
    x: str
    listed_until: float | None = None

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        private = Ed25519PrivateKey.from_private_bytes(seed)
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private, b64url(raw))

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": self.x, "alg": "EdDSA", "use": "sig"}

    def sign(self, message: bytes) -> str:
        return self.private.sign(message).hex()


@dataclass(frozen=True, slots=True)
class WebhookSignature:
    """The four `X-Fal-Webhook-*` headers of one delivery."""

    request_id: str
    user_id: str
    timestamp: str
    signature: str

    def headers(self) -> dict[str, str]:
        return {
            "X-Fal-Webhook-Request-Id": self.request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": self.timestamp,
            "X-Fal-Webhook-Signature": self.signature,
        }


class Keyring:
    """The active signing key plus rotated-out keys that are still published."""

    def __init__(self, seed: bytes | None = None) -> None:
        self._keys = [SigningKey.from_seed(seed or os.urandom(32))]

    @property
    def active(self) -> SigningKey:
        return self._keys[-1]

    def sign(self, request_id: str, user_id: str, body: bytes) -> WebhookSignature:
        """Sign a delivery now, with the active key."""
        timestamp = str(int(time.time()))
        message = signed_message(request_id, user_id, timestamp, body)
        return WebhookSignature(request_id, user_id, timestamp, self.active.sign(message))

    def rotate(self, overlap_s: float, seed: bytes | None = None) -> SigningKey:
        """Sign with a new key from now on; old public keys stay listed for at most
        `overlap_s` (0 drops them now)."""
        until = time.time() + overlap_s
        # Keys retired earlier keep their own deadline, but none outlives the new overlap.
        self._keys = [_retire(key, until) for key in self._keys]
        self._keys.append(SigningKey.from_seed(seed or os.urandom(32)))
        self._drop_unlisted()
        return self.active

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document, newest key first."""
        self._drop_unlisted()
        return {"keys": [key.jwk() for key in reversed(self._keys)]}

    def _drop_unlisted(self) -> None:
        now = time.time()
        self._keys = [
            key for key in self._keys if key.listed_until is None or key.listed_until > now
        ]


def _retire(key: SigningKey, until: float) -> SigningKey:
    if key.listed_until is not None and key.listed_until <= until:
        return key
    return SigningKey(key.private, key.x, until)
