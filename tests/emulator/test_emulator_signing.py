"""Ed25519 webhook signatures and the JWKS (fal-api.md §5.3)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from genrelay.emulator import EmulatorServer
from genrelay.emulator.signing import (
    Keyring,
    SigningKey,
    public_key_from_jwk,
    signed_message,
    verify,
)

VECTOR_BODY = (
    b'{"request_id":"req-1","gateway_request_id":"req-1","status":"OK","payload":{"images":[]}}'
)
VECTOR_SIGNATURE = (
    "e0e6365143af483cc61132397715a3d27f9289b4788aecbb5b8493cb8723c2ba"
    "01966ad629db5525a4102aa98b5f84e8e0d14742df0007f17f1f24380259ef08"
)


def test_signature_matches_the_reference_vector() -> None:
    key = SigningKey.from_seed(b"\x01" * 32)
    message = signed_message("req-1", "user-1", "1700000000", VECTOR_BODY)

    assert key.x == "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
    assert hashlib.sha256(VECTOR_BODY).hexdigest() == (
        "c0cef0fc98de8fcce500f737d4c29cb18f4fc4daa10ce6f5e7dd7a1fc24f3c28"
    )
    assert message.endswith(b"\nc0cef0fc98de8fcce500f737d4c29cb18f4fc4daa10ce6f5e7dd7a1fc24f3c28")
    assert key.sign(message) == VECTOR_SIGNATURE


def test_reference_vector_verifies_from_its_jwk() -> None:
    public = public_key_from_jwk(SigningKey.from_seed(b"\x01" * 32).jwk())

    def check(signature: str, body: bytes) -> bool:
        return verify(
            [public],
            request_id="req-1",
            user_id="user-1",
            timestamp="1700000000",
            signature_hex=signature,
            body=body,
        )

    assert check(VECTOR_SIGNATURE, VECTOR_BODY)
    assert not check(VECTOR_SIGNATURE, VECTOR_BODY + b" ")
    assert not check("zz", VECTOR_BODY)


def test_jwk_is_okp_ed25519_without_key_id() -> None:
    jwk = SigningKey.from_seed(b"\x02" * 32).jwk()

    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert "kid" not in jwk
    with pytest.raises(ValueError, match="Ed25519"):
        public_key_from_jwk({"kty": "RSA", "x": jwk["x"]})


def test_rotation_signs_with_the_new_key_and_keeps_the_old_one_listed() -> None:
    keyring = Keyring(b"\x01" * 32)
    old_x = keyring.active.x

    keyring.rotate(overlap_s=3600)
    signature = keyring.sign("req-1", "user-1", VECTOR_BODY)
    listed = [jwk["x"] for jwk in keyring.jwks()["keys"]]
    keys = [public_key_from_jwk(jwk) for jwk in keyring.jwks()["keys"]]
    old_only = [public_key_from_jwk(SigningKey.from_seed(b"\x01" * 32).jwk())]

    def verifies(candidates: list[Ed25519PublicKey]) -> bool:
        return verify(
            candidates,
            request_id=signature.request_id,
            user_id=signature.user_id,
            timestamp=signature.timestamp,
            signature_hex=signature.signature,
            body=VECTOR_BODY,
        )

    assert listed == [keyring.active.x, old_x]
    assert verifies(keys)
    assert not verifies(old_only)


def test_rotation_without_overlap_drops_old_keys() -> None:
    keyring = Keyring(b"\x01" * 32)

    keyring.rotate(overlap_s=0)

    assert [jwk["x"] for jwk in keyring.jwks()["keys"]] == [keyring.active.x]


async def test_jwks_endpoint_publishes_and_rotates(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    before = (await client.get(fal.jwks_url)).json()["keys"]

    rotated = (await client.post("/_emulator/keys/rotate", json={})).json()["keys"]
    dropped = (await client.post("/_emulator/keys/rotate", json={"overlap_s": 0})).json()["keys"]
    published = (await client.get(fal.jwks_url)).json()

    assert before[0] in rotated[1:]
    assert len(rotated) == len(before) + 1
    assert len(dropped) == 1
    assert published == {"keys": dropped}
    assert published["keys"][0]["x"] == fal.emulator.keyring.active.x
