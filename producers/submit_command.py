"""`genrelay submit ENDPOINT INPUT_JSON [--key K] [--wait]`: one request from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from genrelay.producers.addresses import look_up, require_reachable
from genrelay.producers.client import GenrelayProducer
from genrelay.producers.completions import CompletionWatcher
from genrelay.producers.errors import UnreachableError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", help="provider endpoint id, e.g. fal-ai/flux/schnell")
    parser.add_argument("input", help='the model input as JSON, e.g. \'{"prompt": "a cat"}\'')
    parser.add_argument("--key", help="idempotency key (default: derived from the request)")
    parser.add_argument("--priority", choices=["normal", "low"], default="normal")
    parser.add_argument("--wait", action="store_true", help="print the completion event")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    parser.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (default: $GENRELAY_KAFKA_BOOTSTRAP, else the local"
        " stack's .genrelay/stack.json, else 127.0.0.1:9092)",
    )


async def run(args: argparse.Namespace) -> int:
    """Submit, print the key, and with --wait print the completion event."""
    found = look_up("kafka_bootstrap", args.bootstrap, flag_name="--bootstrap")
    await require_reachable("kafka_bootstrap", found)
    bootstrap = found.value
    async with GenrelayProducer.connect(bootstrap) as producer:
        key = await producer.submit(
            args.endpoint, json.loads(args.input), idempotency_key=args.key, priority=args.priority
        )
    print(f"submitted {key}", flush=True)
    if not args.wait:
        return 0
    async with CompletionWatcher.connect(bootstrap) as watcher:
        event = await watcher.await_completion(key, args.timeout)
    print(event.model_dump_json(indent=2))
    for artifact in event.artifacts:
        print(f"stored s3://{artifact.bucket}/{artifact.key} ({artifact.size} bytes)")
    return 0 if event.status == "succeeded" else 1


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except UnreachableError as exc:
        print(f"genrelay submit: {exc}", file=sys.stderr)
        return 2
