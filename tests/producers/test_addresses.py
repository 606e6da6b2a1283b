"""Client commands find Kafka and S3 in one order: flag, variable, local stack file, default."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path

import pytest

from genrelay.producers import submit_command
from genrelay.producers.addresses import Found, look_up, require_reachable
from genrelay.producers.bulk import cli as bulk_cli
from genrelay.producers.errors import UnreachableError


def stack(tmp_path: Path) -> Path:
    path = tmp_path / ".genrelay" / "stack.json"
    path.parent.mkdir()
    values = {
        "kafka_bootstrap": "127.0.0.1:41234",
        "s3_endpoint": "127.0.0.1:41235",
        "s3_access_key": "stack-access",
        "s3_secret_key": "stack-secret",
        "emulator_url": "http://127.0.0.1:41236",
    }
    path.write_text(json.dumps(values))
    return path


def test_a_flag_wins_then_the_variable_then_the_local_stack_then_the_default(
    tmp_path: Path,
) -> None:
    path = stack(tmp_path)
    env = {"GENRELAY_KAFKA_BOOTSTRAP": "kafka:9092"}
    found = look_up("kafka_bootstrap", "flag:1", flag_name="--bootstrap", env=env, stack_file=path)
    assert found == Found("flag:1", "--bootstrap")
    assert look_up("kafka_bootstrap", env=env, stack_file=path) == Found(
        "kafka:9092", "$GENRELAY_KAFKA_BOOTSTRAP"
    )
    assert look_up("kafka_bootstrap", env={}, stack_file=path) == Found(
        "127.0.0.1:41234", str(path)
    )
    missing = tmp_path / "nothing.json"
    assert look_up("kafka_bootstrap", env={}, stack_file=missing) == Found(
        "127.0.0.1:9092", "default"
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert look_up("s3_endpoint", env={}, stack_file=broken).source == "default"


def test_bulk_downloads_use_the_local_stacks_minio_when_nothing_else_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY", "SECURE"):
        monkeypatch.delenv(f"GENRELAY_S3_{name}", raising=False)
    args = argparse.Namespace(
        s3_endpoint=None, s3_access_key=None, s3_secret_key=None, s3_secure=False
    )
    config = bulk_cli._s3_config(args)
    assert (config.endpoint, config.access_key, config.secret_key) == (
        "127.0.0.1:41235",
        "stack-access",
        "stack-secret",
    )
    args.s3_endpoint = "s3.example.com"
    assert bulk_cli._s3_config(args).endpoint == "s3.example.com"


async def test_an_address_nobody_answers_fails_fast_with_one_line_naming_the_setting(
    tmp_path: Path,
) -> None:
    path = stack(tmp_path)
    # A port nothing listens on (bound, then closed).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found = Found(f"127.0.0.1:{port}", str(path))
    with pytest.raises(UnreachableError) as refused:
        await require_reachable("kafka_bootstrap", found, timeout=2.0)
    message = str(refused.value)
    assert "\n" not in message
    assert f"Kafka at 127.0.0.1:{port}" in message
    assert "GENRELAY_KAFKA_BOOTSTRAP" in message


async def test_submit_names_the_address_and_exits_2_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parser = argparse.ArgumentParser()
    submit_command.add_arguments(parser)
    args = parser.parse_args(["fal-ai/flux/schnell", "{}", "--bootstrap", f"127.0.0.1:{port}"])
    assert await asyncio.to_thread(submit_command.main, args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genrelay submit: cannot reach Kafka")
    assert "--bootstrap" in line
