"""The manifest and the error file of a run, written from its local state.

Manifest (JSONL, one row per key, in line order): `line`, `idempotency_key`, `status`
(`succeeded`, `failed`, `cancelled`, `expired`, `pending` once sent, `unsent` before),
`request_id`, and `objects`: each stored file's `bucket`, `key`, `size`, `sha256`,
`content_type`, plus `path` when it was downloaded.

Error file (JSONL, in line order): one row per refused line (`idempotency_key` null), per
key that did not succeed, and per file that could not be downloaded, each with `line`,
`idempotency_key`, `status`, `type` and `message`.

A key sent under an earlier version of the file but no longer in it has `line` null.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrelay.producers.bulk._files import write_jsonl
from genrelay.producers.bulk.reader import LineError
from genrelay.producers.bulk.state import RunSnapshot
from genrelay.schemas.completions import Artifact

ObjectRef = tuple[str, str]  # (bucket, key)

DOWNLOAD_FAILED = "download_failed"


@dataclass(frozen=True, slots=True)
class DownloadFailure:
    """A stored file of a key that could not be copied to the local folder."""

    idempotency_key: str
    artifact: Artifact
    message: str


def manifest_rows(
    snapshot: RunSnapshot, downloaded: Mapping[ObjectRef, Path]
) -> list[dict[str, Any]]:
    """One row per key of the run."""
    lines = snapshot.lines()
    rows = []
    for key in snapshot.keys:
        event = snapshot.outcomes.get(key)
        status: str
        if event is not None:
            status = event.status
        else:
            status = "pending" if key in snapshot.acked else "unsent"
        rows.append(
            {
                "line": lines.get(key),
                "idempotency_key": key,
                "status": status,
                "request_id": event.request_id if event else None,
                "objects": [
                    _object(artifact, downloaded) for artifact in (event.artifacts if event else [])
                ],
            }
        )
    return rows


def error_rows(
    snapshot: RunSnapshot, download_failures: Sequence[DownloadFailure] = ()
) -> list[dict[str, Any]]:
    """One row per refused line, per key that did not succeed, per failed download."""
    lines = snapshot.lines()
    rows = rejected_rows(snapshot.rejected)
    for key in snapshot.keys:
        event = snapshot.outcomes.get(key)
        if event is not None and event.error is not None:
            rows.append(
                {
                    "line": lines.get(key),
                    "idempotency_key": key,
                    "status": event.status,
                    "type": event.error.type,
                    "message": event.error.message,
                }
            )
    rows.extend(
        {
            "line": lines.get(failure.idempotency_key),
            "idempotency_key": failure.idempotency_key,
            "status": "succeeded",
            "type": DOWNLOAD_FAILED,
            "message": f"s3://{failure.artifact.bucket}/{failure.artifact.key}: {failure.message}",
        }
        for failure in download_failures
    )
    # Rows without a line (keys no longer in the file) go last.
    rows.sort(key=lambda row: (row["line"] is None, row["line"] or 0))
    return rows


def rejected_rows(errors: Iterable[LineError]) -> list[dict[str, Any]]:
    """The error file's rows for refused lines."""
    return [
        {
            "line": error.line,
            "idempotency_key": None,
            "status": "rejected",
            "type": error.type,
            "message": error.message,
        }
        for error in errors
    ]


def write_reports(
    snapshot: RunSnapshot,
    *,
    downloaded: Mapping[ObjectRef, Path] | None = None,
    download_failures: Sequence[DownloadFailure] = (),
) -> None:
    """Replace the run's manifest and error file (the paths in its `RunInfo`)."""
    write_jsonl(Path(snapshot.info.manifest), manifest_rows(snapshot, downloaded or {}))
    write_jsonl(Path(snapshot.info.errors), error_rows(snapshot, download_failures))


def _object(artifact: Artifact, downloaded: Mapping[ObjectRef, Path]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "bucket": artifact.bucket,
        "key": artifact.key,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "content_type": artifact.content_type,
    }
    path = downloaded.get((artifact.bucket, artifact.key))
    if path is not None:
        row["path"] = str(path)
    return row
