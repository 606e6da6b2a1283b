"""The provider contract: the fake the fast tests use behaves as the real client does against
the fal-compatible emulator, for every call `Jobs` and `Steps` make."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from genrelay.consumer.errors import NotFound
from genrelay.consumer.fakes import FakeProvider
from genrelay.consumer.provider.fal import FalProvider
from genrelay.consumer.provider.provider import (
    CancelOutcome,
    JobState,
    JSONObject,
    Priority,
    Submission,
)
from genrelay.emulator import EmulatorServer
from tests.emulator.helpers import FLUX, KEY, eventually

INPUT: JSONObject = {"prompt": "x", "image_size": {"width": 32, "height": 32}}


@pytest.fixture(params=["fake", "fal-against-the-emulator"])
async def provider(
    request: pytest.FixtureRequest, fal: EmulatorServer
) -> AsyncIterator[FakeProvider | FalProvider]:
    if request.param == "fake":
        yield FakeProvider()
        return
    real = FalProvider(KEY, base_url=fal.base_url)
    try:
        yield real
    finally:
        await real.aclose()


async def _done(provider: FakeProvider | FalProvider, submission: Submission) -> None:
    async def completed() -> bool:
        return (await provider.status(submission)).state is JobState.COMPLETED

    await eventually(completed)


async def test_a_submitted_request_completes_and_its_result_is_an_output(
    provider: FakeProvider | FalProvider,
) -> None:
    submission = await provider.submit(FLUX, INPUT, webhook_url=None, priority=Priority.NORMAL)
    assert submission.request_id
    assert submission.status_url.endswith(f"/requests/{submission.request_id}/status")
    await _done(provider, submission)
    result = await provider.result(submission)
    assert result.ok
    assert isinstance(result.payload, dict)


async def test_a_request_the_provider_does_not_know_is_not_found(
    provider: FakeProvider | FalProvider,
) -> None:
    unknown = provider.submission_for(FLUX, "00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound):
        await provider.status(unknown)


async def test_cancelling_a_finished_request_says_it_already_completed(
    provider: FakeProvider | FalProvider,
) -> None:
    submission = await provider.submit(FLUX, INPUT, webhook_url=None, priority=Priority.NORMAL)
    await _done(provider, submission)
    assert await provider.cancel(submission) is CancelOutcome.ALREADY_COMPLETED
    unknown = provider.submission_for(FLUX, "00000000-0000-4000-8000-000000000000")
    assert await provider.cancel(unknown) is CancelOutcome.NOT_FOUND
