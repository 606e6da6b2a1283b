"""Open keys' states are held packed, and come back byte for byte."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from genrelay.consumer.ledger.packed import pack, unpacked
from genrelay.schemas.ledger import KeptRequest, LedgerRecord, Phase, ProviderJob


@given(st.binary(max_size=4096).filter(lambda value: not value.startswith(b"\x00")))
def test_any_bytes_but_packed_ones_come_back_as_they_were(value: bytes) -> None:
    assert unpacked(pack(value)) == value
    assert pack(pack(value)) == pack(value)


@given(st.dictionaries(st.text(), st.text()))
def test_json_held_unpacked_reads_as_itself(document: dict[str, str]) -> None:
    value = json.dumps(document).encode()
    assert unpacked(value) == value


def _waiting(prompt: str) -> bytes:
    request_id = str(uuid.uuid4())
    base = f"https://queue.fal.run/fal-ai/flux/schnell/requests/{request_id}"
    now = datetime.now(UTC)
    key = f"orders/{uuid.uuid4()}"
    return (
        LedgerRecord(
            idempotency_key=key,
            phase=Phase.SUBMITTED,
            fingerprint=uuid.uuid4().hex * 2,
            endpoint="fal-ai/flux/schnell",
            request=KeptRequest(
                idempotency_key=key,
                endpoint="fal-ai/flux/schnell",
                input={"prompt": prompt, "image_size": "square_hd", "seed": 1234},
            ),
            attempts=1,
            job=ProviderJob(
                request_id=request_id,
                status_url=f"{base}/status",
                response_url=base,
                cancel_url=f"{base}/cancel",
            ),
            traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
            accepted_at=now,
            submitted_at=now,
            updated_at=now,
        )
        .model_dump_json(exclude_defaults=True)
        .encode()
    )


def test_a_waiting_state_with_unique_ids_is_held_in_under_a_third_of_its_bytes() -> None:
    value = _waiting("a lighthouse on a cliff at dawn, oil on canvas, warm light")
    assert unpacked(pack(value)) == value
    assert len(pack(value)) < len(value) / 3
