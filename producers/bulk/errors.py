"""Errors of the bulk commands; each one's message is written for the person at the shell.

    BulkError
    ├── BadInputError       the file cannot be read, or has bad lines under
    │                       --on-error abort; nothing was sent
    ├── RunNotFoundError    no state for this bulk id in the state directory
    ├── RunInUseError       another process is working on this run
    └── RunCancelledError   the run was cancelled; it is not submitted again

Kafka failures arrive as `genrelay.producers.BrokerError`: every bulk command can be run
again after one, and resumes.
"""


class BulkError(Exception):
    """Base of the errors the bulk commands raise for a person to read."""


class BadInputError(BulkError):
    """The input cannot be sent; nothing was."""


class RunNotFoundError(BulkError):
    """No state is kept for this bulk id."""


class RunInUseError(BulkError):
    """Another process holds this run's lock."""


class RunCancelledError(BulkError):
    """The run was cancelled, so its requests are not sent again."""
