"""Argument types the operator commands share."""

from __future__ import annotations

from datetime import UTC, datetime


def moment(text: str) -> datetime:
    """An ISO 8601 time from the command line (`Z` allowed); UTC when it names no zone."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
