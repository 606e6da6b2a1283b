"""`genrelay bulk`: submit a JSONL or CSV file of requests, follow the run, collect results.

    genrelay bulk submit FILE [--endpoint E] [--priority low] [--rate 100/s] ...
    genrelay bulk status BULK_ID
    genrelay bulk collect BULK_ID [--timeout 60] [--download DIR]
    genrelay bulk cancel BULK_ID

`add_subcommands` adds `bulk` to the `genrelay` parser; `main` runs a parsed command.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

from genrelay.producers.addresses import Found, look_up, require_reachable
from genrelay.producers.bulk import commands
from genrelay.producers.bulk.commands import (
    Connector,
    KafkaConnector,
    KafkaTarget,
    OnError,
    Output,
    RunOptions,
    SubmitOptions,
)
from genrelay.producers.bulk.download import S3Config
from genrelay.producers.bulk.errors import BulkError
from genrelay.producers.bulk.keys import check_bulk_id
from genrelay.producers.bulk.plan import Defaults
from genrelay.producers.bulk.rate import parse_rate
from genrelay.producers.bulk.state import DEFAULT_STATE_ROOT
from genrelay.producers.errors import BrokerError, UnreachableError
from genrelay.schemas.topics import DEFAULT_TOPICS

_EXIT_USAGE = 2
_EXIT_INTERRUPTED = 130

_DESCRIPTION = """\
Submit every line of a JSONL or CSV file as a request, at a bounded rate and low priority,
wait for the outcomes, and write a manifest (one row per key: status, stored objects,
sizes, SHA-256) and an error file. Running the same command again resumes the run without
paying twice: keys are derived from the bulk id and each line's work.
"""


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bulk submit|status|collect|cancel` to a parser's subcommands."""
    bulk = subparsers.add_parser(
        "bulk",
        help="submit a file of requests and collect the results",
        description=_DESCRIPTION,
    )
    commands_ = bulk.add_subparsers(dest="bulk_command", required=True, metavar="COMMAND")

    submit = commands_.add_parser("submit", help="submit a JSONL or CSV file and wait")
    submit.add_argument("file", type=Path, help="JSONL (one request or input per line) or CSV")
    submit.add_argument(
        "--endpoint", help="endpoint for lines that name none; lets a line be a bare input"
    )
    submit.add_argument(
        "--priority",
        choices=["low", "normal"],
        default="low",
        help="queue priority of lines that set none (default: low)",
    )
    submit.add_argument(
        "--rate",
        type=_rate,
        default=commands.DEFAULT_RATE,
        metavar="N/s",
        help="records sent per second, e.g. 20/s or 600/min (default: 100/s)",
    )
    submit.add_argument(
        "--on-error",
        choices=[mode.value for mode in OnError],
        default=OnError.SKIP.value,
        help="invalid lines: skip them and send the rest, or abort before sending anything",
    )
    submit.add_argument("--manifest", type=Path, help="default: FILE's stem + .manifest.jsonl")
    submit.add_argument("--errors", type=Path, help="default: FILE's stem + .errors.jsonl")
    submit.add_argument(
        "--download",
        type=Path,
        metavar="DIR",
        help="copy the stored files here (later, at collect, with --no-wait)",
    )
    submit.add_argument(
        "--bulk-id", type=_bulk_id, help="run id (default: a hash of FILE's content)"
    )
    submit.add_argument(
        "--no-wait", action="store_true", help="send, then exit without waiting for outcomes"
    )
    submit.add_argument(
        "--timeout",
        type=float,
        default=commands.DEFAULT_WAIT_TIMEOUT_S,
        help="seconds to wait for outcomes (default: a day)",
    )
    _add_kafka_arguments(submit, from_env=True)
    _add_s3_arguments(submit)
    _add_state_argument(submit)

    status = commands_.add_parser("status", help="show a run's counts")
    status.add_argument("bulk_id", type=_bulk_id)
    _add_state_argument(status)

    collect = commands_.add_parser("collect", help="collect a run's outcomes into its manifest")
    collect.add_argument("bulk_id", type=_bulk_id)
    collect.add_argument(
        "--timeout",
        type=float,
        default=commands.DEFAULT_COLLECT_TIMEOUT_S,
        help="seconds to wait for outcomes still to come (default: 60)",
    )
    collect.add_argument(
        "--download", type=Path, metavar="DIR", help="copy stored files here (default: as submit)"
    )
    _add_kafka_arguments(collect, from_env=False)
    _add_s3_arguments(collect)
    _add_state_argument(collect)

    cancel = commands_.add_parser("cancel", help="cancel every key of a run without an outcome")
    cancel.add_argument("bulk_id", type=_bulk_id)
    _add_kafka_arguments(cancel, from_env=False)
    _add_state_argument(cancel)


def main(args: argparse.Namespace) -> int:
    """Run a parsed `genrelay bulk` command; Ctrl-C or SIGTERM stops it, resumable."""
    try:
        return asyncio.run(_until_terminated(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return _EXIT_INTERRUPTED


async def run(
    args: argparse.Namespace,
    *,
    connector: Connector | None = None,
    output: Output | None = None,
) -> int:
    """Run a parsed `genrelay bulk` command in the running event loop; return its exit status."""
    connector = connector or KafkaConnector()
    output = output or Output()
    try:
        if args.bulk_command == "submit":
            return await commands.submit(_submit_options(args), connector, output)
        if args.bulk_command == "status":
            return commands.status(_run_options(args), output)
        if args.bulk_command == "collect":
            return await commands.collect(_run_options(args), connector, output)
        if args.bulk_command == "cancel":
            return await commands.cancel(_run_options(args), connector, output)
    except BulkError as exc:
        print(f"genrelay bulk: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except BrokerError as exc:
        print(f"genrelay bulk: Kafka: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled bulk command {args.bulk_command}")


async def _until_terminated(args: argparse.Namespace) -> int:
    # SIGTERM stops the run like Ctrl-C does: logs closed, manifest written, resumable.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.bulk_command == "submit":
        # The real connector's addresses must answer: else one line, at once.
        try:
            await _preflight(args, _submit_options(args))
        except (UnreachableError, BulkError) as exc:
            print(f"genrelay bulk: {exc}", file=sys.stderr)
            return _EXIT_USAGE
    return await run(args)


def _submit_options(args: argparse.Namespace) -> SubmitOptions:
    return SubmitOptions(
        source=args.file,
        kafka=_kafka_target(args) or _book_kafka_target(args),
        defaults=Defaults(endpoint=args.endpoint, priority=args.priority),
        rate=args.rate,
        on_error=OnError(args.on_error),
        wait=not args.no_wait,
        timeout=args.timeout,
        manifest=args.manifest,
        errors=args.errors,
        download=args.download,
        bulk_id=args.bulk_id,
        state_root=args.state_dir,
        s3=_s3_config(args),
    )


def _run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        bulk_id=args.bulk_id,
        state_root=args.state_dir,
        kafka=_kafka_target(args) if hasattr(args, "bootstrap") else None,
        timeout=getattr(args, "timeout", commands.DEFAULT_COLLECT_TIMEOUT_S),
        download=getattr(args, "download", None),
        s3=_s3_config(args) if hasattr(args, "s3_endpoint") else None,
    )


def _kafka_target(args: argparse.Namespace) -> KafkaTarget | None:
    # For a run that exists, unset values are taken from what it was submitted with.
    if args.bootstrap is None:
        return None
    return KafkaTarget(
        args.bootstrap,
        args.requests_topic or DEFAULT_TOPICS.requests,
        args.completions_topic or DEFAULT_TOPICS.completions,
    )


async def _preflight(args: argparse.Namespace, options: SubmitOptions) -> None:
    """Kafka, and the object store when files are to be downloaded, answer: else one line."""
    found = look_up("kafka_bootstrap", args.bootstrap, flag_name="--bootstrap")
    await require_reachable("kafka_bootstrap", Found(options.kafka.bootstrap, found.source))
    if options.download is not None and options.s3 is not None:
        s3 = look_up("s3_endpoint", args.s3_endpoint, flag_name="--s3-endpoint")
        await require_reachable("s3_endpoint", Found(options.s3.endpoint, s3.source))


def _book_kafka_target(args: argparse.Namespace) -> KafkaTarget:
    return KafkaTarget(
        look_up("kafka_bootstrap", args.bootstrap, flag_name="--bootstrap").value,
        args.requests_topic or DEFAULT_TOPICS.requests,
        args.completions_topic or DEFAULT_TOPICS.completions,
    )


def _s3_config(args: argparse.Namespace) -> S3Config:
    # Flags, then $GENRELAY_S3_*, then the local stack's file, then the defaults.
    config = S3Config.from_env(os.environ)
    return dataclasses.replace(
        config,
        endpoint=look_up("s3_endpoint", args.s3_endpoint, flag_name="--s3-endpoint").value,
        access_key=look_up("s3_access_key", args.s3_access_key).value,
        secret_key=look_up("s3_secret_key", args.s3_secret_key).value,
        secure=config.secure or bool(args.s3_secure),
    )


def _add_kafka_arguments(parser: argparse.ArgumentParser, *, from_env: bool) -> None:
    # Submit reads the environment; the other commands default to what the run was sent with.
    def default(name: str, fallback: str | None = None) -> str | None:
        return os.environ.get(name, fallback) if from_env else None

    origin = (
        "$GENRELAY_KAFKA_BOOTSTRAP, else the local stack's .genrelay/stack.json, else"
        " 127.0.0.1:9092"
        if from_env
        else "as the run was submitted"
    )
    parser.add_argument(
        "--bootstrap",
        default=default("GENRELAY_KAFKA_BOOTSTRAP"),
        help=f"Kafka bootstrap servers (default: {origin})",
    )
    parser.add_argument(
        "--requests-topic",
        default=default("GENRELAY_TOPIC_REQUESTS"),
        help=f"default: $GENRELAY_TOPIC_REQUESTS or {DEFAULT_TOPICS.requests}",
    )
    parser.add_argument(
        "--completions-topic",
        default=default("GENRELAY_TOPIC_COMPLETIONS"),
        help=f"default: $GENRELAY_TOPIC_COMPLETIONS or {DEFAULT_TOPICS.completions}",
    )


def _add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("object store, for --download (default: $GENRELAY_S3_*)")
    group.add_argument("--s3-endpoint", help="host:port")
    group.add_argument("--s3-access-key")
    group.add_argument("--s3-secret-key", help="prefer $GENRELAY_S3_SECRET_KEY: flags are visible")
    group.add_argument("--s3-secure", action="store_true", help="use HTTPS")


def _add_state_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("GENRELAY_BULK_STATE_DIR", DEFAULT_STATE_ROOT)),
        help=f"where runs keep their state (default: $GENRELAY_BULK_STATE_DIR or "
        f"{DEFAULT_STATE_ROOT})",
    )


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _bulk_id(text: str) -> str:
    try:
        return check_bulk_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
