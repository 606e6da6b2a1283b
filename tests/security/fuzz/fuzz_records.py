"""libFuzzer (atheris) over request records, and the rule every input must keep.

    python tests/security/fuzz/fuzz_records.py -runs=1000000 [corpus_dir ...]

Without a corpus directory it starts from `SEEDS`, copied into a new temporary directory
(printed) where libFuzzer also keeps what it finds.

Every input is refused with `RecordInvalid` (a dead letter) or read as a record that any JSON
Schema reader accepts, that survives being written back and read again, and that intake turns
into a decision; anything else raises, and libFuzzer keeps the input as a crash file.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path

from jsonschema import Draft202012Validator

from genrelay.consumer.intake.intake import Command, Refuse, Rekey, SourceRecord, classify
from genrelay.schemas.base import canonical_json, to_json_bytes
from genrelay.schemas.dead_letter import DeadLetterReason
from genrelay.schemas.generate import JSON_DIR
from genrelay.schemas.requests import (
    RecordInvalid,
    RequestRecord,
    SubmitRequest,
    fingerprint,
    parse_request,
)

MAX_BYTES = 16 * 1024
TOPIC = "genrelay.requests"
REQUEST_SCHEMA = Draft202012Validator(json.loads((JSON_DIR / "request.v1.json").read_text()))
# Valid records to start from when no corpus is given.
SEEDS = (
    b'{"schema_version": 1, "action": "cancel", "idempotency_key": "order-42/hero"}',
    b'{"schema_version": 1, "action": "submit", "idempotency_key": "order-42/hero", '
    b'"endpoint": "fal-ai/flux/schnell", "input": {"prompt": "a lighthouse", "seed": 7}, '
    b'"priority": "low", "tenant": "shop", "metadata": {"order_id": "42", "n": 1.5}, '
    b'"output": {"bucket": "genrelay", "prefix": "shop"}, "deadline": "2026-11-25T12:00:00Z"}',
)


def check_record(raw: bytes) -> RequestRecord | None:
    """Parse `raw` as the relay does and check the rule; the record, or None if refused."""
    record: RequestRecord | None = None
    try:
        record = parse_request(raw, MAX_BYTES)
    except RecordInvalid as refused:
        reason = refused.reason_code
        assert reason in set(DeadLetterReason), reason
    if record is not None:
        REQUEST_SCHEMA.validate(json.loads(raw))
        written = to_json_bytes(record)
        REQUEST_SCHEMA.validate(json.loads(written))
        assert parse_request(written, len(written)) == record, "changed by a round trip"
        canonical_json(record.model_dump(mode="json"))
        if isinstance(record, SubmitRequest):
            fingerprint(record)
    for key in (b"k", record.idempotency_key.encode() if record else None):
        source = SourceRecord(TOPIC, 0, 0, key, raw, ())
        verdict = classify(source, requests_topic=TOPIC, max_bytes=MAX_BYTES)
        assert isinstance(verdict, Command | Rekey | Refuse)
    return record


_OURS = ("genrelay.", __name__)


def _one_input(data: bytes) -> None:
    check_record(data)


def main(argv: Sequence[str]) -> None:
    import atheris  # type: ignore[import-untyped]

    # Coverage feedback from genrelay's code only: instrumenting every loaded library
    # (`atheris.instrument_all`) takes over a minute before the first input.
    for function in gc.get_objects():
        module = getattr(function, "__module__", None) or ""
        if isinstance(function, types.FunctionType) and module.startswith(_OURS):
            atheris.instrument_func(function)
    args = list(argv)
    if all(arg.startswith("-") for arg in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="genrelay-records-corpus-"))
        for n, seed in enumerate(SEEDS):
            (corpus / f"seed-{n}").write_bytes(seed)
        print(f"corpus: {corpus}", file=sys.stderr)
        args.append(str(corpus))
    atheris.Setup(args, _one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
