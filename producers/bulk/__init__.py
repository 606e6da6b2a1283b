"""Bulk jobs: a JSONL or CSV file of requests in, a manifest of results out.

The `genrelay bulk` commands (`cli`) are thin over `commands`, which wires the parts:
`reader` (file to numbered rows) → `plan` (rows to validated requests with stable keys from
`keys`) → `runner` (rate-limited sending by `rate`, collecting outcomes) → `state` (what is
known locally, per run) → `manifest` and `download` (the run's results).
"""

from genrelay.producers.bulk.commands import (
    KafkaConnector,
    KafkaTarget,
    OnError,
    Output,
    RunOptions,
    SubmitOptions,
    cancel,
    collect,
    status,
    submit,
)
from genrelay.producers.bulk.errors import (
    BadInputError,
    BulkError,
    RunCancelledError,
    RunInUseError,
    RunNotFoundError,
)
from genrelay.producers.bulk.plan import Defaults
from genrelay.producers.bulk.state import Counts, RunState

__all__ = [
    "BadInputError",
    "BulkError",
    "Counts",
    "Defaults",
    "KafkaConnector",
    "KafkaTarget",
    "OnError",
    "Output",
    "RunCancelledError",
    "RunInUseError",
    "RunNotFoundError",
    "RunOptions",
    "RunState",
    "SubmitOptions",
    "cancel",
    "collect",
    "status",
    "submit",
]
