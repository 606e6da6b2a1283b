"""`genrelay inspect KEY`: what happened to one request, from any replica's records.

    genrelay inspect order-42/hero          # its ledger states, event(s), files, trace id
    genrelay inspect order-42/hero --json   # the same as JSON

Settings (Kafka, topic names, partitions) are the relay's `GENRELAY_*` variables, with Kafka
found like the other client commands (flag, variable, the local stack's file, default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from pydantic import ValidationError

from genrelay.consumer.service.config import Settings
from genrelay.operations.key_history import key_history
from genrelay.producers.addresses import reachable_kafka
from genrelay.producers.errors import BrokerError, UnreachableError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("key", help="the idempotency key")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    """0: the key is known; 1: it is not; 2: Kafka or the settings are unusable."""
    return asyncio.run(command(args))


async def command(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"genrelay inspect: invalid GENRELAY_* settings: {exc}", file=sys.stderr)
        return 2
    try:
        bootstrap = await reachable_kafka(args.bootstrap)
    except UnreachableError as exc:
        print(f"genrelay inspect: {exc}", file=sys.stderr)
        return 2
    try:
        history = await key_history(
            bootstrap, settings.topic_ledger, settings.topic_completions, args.key
        )
    except BrokerError as exc:
        print(f"genrelay inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(history.to_json(), indent=2) if args.json else history.text())
    return 0 if history.found else 1
