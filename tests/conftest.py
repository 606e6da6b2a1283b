"""Session fixtures: one real Kafka broker and one real MinIO server for the whole test run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from genrelay.deploy.local.stack import LocalStack, StackInfo


@pytest.fixture(scope="session")
async def local_stack() -> AsyncIterator[LocalStack]:
    """The running local stack (Kafka KRaft node + MinIO), started once per test session."""
    async with LocalStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> StackInfo:
    """Addresses and credentials of the session's Kafka and MinIO."""
    return local_stack.info
