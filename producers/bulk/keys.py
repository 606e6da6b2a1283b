"""Bulk run ids and the idempotency keys of a run's requests.

A line without its own `idempotency_key` gets `bulk/{bulk_id}/{work}`, where `work` is the
hash `derive_idempotency_key` gives the request (SHA-256 of its fingerprint and tenant), cut
to 32 hex digits; the n-th repeat of the same work within the file gets `/n` appended
(n = 2, 3, ...). So:

- running the same file again yields the same keys, and nothing is paid twice;
- editing the file and re-running it under the same `--bulk-id` keeps the keys of unchanged
  lines (line numbers are not part of the key), so only new or changed lines are paid for;
- two runs never share a key, so cancelling one run cannot touch the work of another, and
  identical lines in one file are generated once per line, as the file asks.
"""

import hashlib
import re

from genrelay.producers.client import DERIVED_KEY_PREFIX, derive_idempotency_key
from genrelay.schemas.requests import SubmitRequest

KEY_PREFIX = "bulk/"

# Bulk ids name a state directory and sit inside idempotency keys: keep them path- and
# URL-safe.
_BULK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DEFAULT_ID_HEX_DIGITS = 16
_WORK_HEX_DIGITS = 32


def default_bulk_id(content: bytes) -> str:
    """The id of a run over a file with this content: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(content).hexdigest()[:_DEFAULT_ID_HEX_DIGITS]


def check_bulk_id(bulk_id: str) -> str:
    """Return `bulk_id` if it is 1-64 letters, digits, `.`, `_` or `-`, else raise ValueError."""
    if not _BULK_ID.match(bulk_id):
        raise ValueError(
            f"bulk id {bulk_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return bulk_id


def work_hash(request: SubmitRequest) -> str:
    """What identifies the paid work of `request` within a run (its endpoint, input, output
    target and tenant), as `derive_idempotency_key` computes it."""
    digest = derive_idempotency_key(request).removeprefix(DERIVED_KEY_PREFIX)
    return digest[:_WORK_HEX_DIGITS]


def bulk_key(bulk_id: str, work: str, occurrence: int) -> str:
    """The key of the `occurrence`-th (1-based) request of `work` in run `bulk_id`."""
    key = f"{KEY_PREFIX}{bulk_id}/{work}"
    return key if occurrence == 1 else f"{key}/{occurrence}"
