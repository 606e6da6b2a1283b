"""`genrelay dead-letters`: list refused requests by reason, re-drive a fixed one once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.operations import dead_letters_cli
from genrelay.operations.dead_letters import REDRIVEN_FROM_HEADER
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    running,
    submit_record,
)

pytestmark = pytest.mark.integration


def _args(*words: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    dead_letters_cli.add_arguments(parser)
    return parser.parse_args(list(words))


async def test_a_fixed_conflict_is_redriven_and_completes_once(
    stack: StackInfo,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    settings = relay_settings(stack, emulator)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"k", submit_record("k", "first"))]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as done:
            await done.until(lambda rs: len(rs) == 1)
        # The same key with another input, and a record that is not JSON at all.
        refused = [(b"k", submit_record("k", "second")), (b"junk", b"{not json")]
        await produce(stack.kafka_bootstrap, settings.topic_requests, refused)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_dead_letter) as letters:
            await letters.until(lambda rs: len(rs) == 2)

        assert await dead_letters_cli.command(_args("list", "--json")) == 0
        listing = json.loads(capsys.readouterr().out)
        assert listing["counts"] == {"idempotency_conflict": 1, "not_json": 1}
        (conflict,) = [d for d in listing["dead_letters"] if d["reason"] == "idempotency_conflict"]
        assert conflict["key"] == "k"

        assert await dead_letters_cli.command(_args("show", conflict["id"])) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["value"]["input"]["prompt"] == "second"

        # Fixed: the second request gets its own key. Re-driven twice, it is paid once: the
        # second time its stored outcome is replayed.
        fixed = tmp_path / "fixed.jsonl"
        fixed.write_text(submit_record("k-second", "second").decode() + "\n")
        redrive = _args("redrive", conflict["id"], "--file", str(fixed))
        for wanted in (1, 2):
            assert await dead_letters_cli.command(redrive) == 0
            async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as done:
                await done.until(
                    lambda rs, n=wanted: len(completions_by_key(rs).get("k-second", [])) == n
                )
        assert await dead_letters_cli.command(_args("show", "9:999999")) == 1

    events = completions_by_key(done.records)["k-second"]
    assert [e["replayed"] for e in events] == [False, True]
    assert events[0]["status"] == "succeeded"
    assert len(emulator.submissions(input_contains="second")) == 1
    async with TopicReader(stack.kafka_bootstrap, settings.topic_requests) as requests:
        await requests.until(lambda rs: sum(r.key == b"k-second" for r in rs) == 2)
    redriven = [r for r in requests.records if r.key == b"k-second"]
    assert all(
        dict(r.headers)[REDRIVEN_FROM_HEADER] == f"dead-letter:{conflict['id']}".encode()
        for r in redriven
    )
