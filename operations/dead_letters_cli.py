"""`genrelay dead-letters`: the requests genrelay refused, and sending them back.

    genrelay dead-letters list [--reason R] [--since ISO] [--json]
    genrelay dead-letters show 2:117
    genrelay dead-letters redrive 2:117 [2:118 …]        # the original records, as sent
    genrelay dead-letters redrive 2:117 --file fixed.jsonl  # corrected records instead

Settings (Kafka, topic names) are the relay's `GENRELAY_*` variables; Kafka is found like the
other client commands (flag, variable, the local stack's file, default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from genrelay.consumer.service.config import Settings
from genrelay.operations.arguments import moment
from genrelay.operations.dead_letters import (
    DeadLetter,
    Redrive,
    counts,
    fixed_redrives,
    read_dead_letters,
    redrive_of,
    select,
    send,
)
from genrelay.producers.addresses import reachable_kafka
from genrelay.producers.errors import BrokerError, UnreachableError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    actions = parser.add_subparsers(dest="dead_letters_command", required=True)
    listing = actions.add_parser("list", help="dead letters, newest last, with counts by reason")
    listing.add_argument("--reason", help="only this reason (e.g. idempotency_conflict)")
    listing.add_argument("--since", type=moment, help="only those written since (ISO 8601)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="one dead letter, with its record")
    show.add_argument("id", help="partition:offset, as `list` shows it")
    redrive = actions.add_parser("redrive", help="send dead letters back to the requests topic")
    redrive.add_argument("ids", nargs="+", metavar="ID", help="partition:offset")
    redrive.add_argument(
        "--file", type=Path, help="corrected request records (JSONL) replacing the one ID"
    )


def main(args: argparse.Namespace) -> int:
    """0: done; 1: an id is unknown or cannot be re-driven; 2: unusable settings or Kafka."""
    return asyncio.run(command(args))


async def command(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
        bootstrap = await reachable_kafka(args.bootstrap)
        letters = await read_dead_letters(bootstrap, settings.topic_dead_letter)
        if args.dead_letters_command == "list":
            return _list(letters, args)
        by_id = {letter.id: letter for letter in letters}
        if args.dead_letters_command == "show":
            return _show(by_id, args.id)
        return await _redrive(by_id, args, bootstrap, settings.topic_requests)
    except ValidationError as exc:
        print(f"genrelay dead-letters: invalid GENRELAY_* settings: {exc}", file=sys.stderr)
    except (UnreachableError, BrokerError) as exc:
        print(f"genrelay dead-letters: {exc}", file=sys.stderr)
    return 2


def _list(letters: list[DeadLetter], args: argparse.Namespace) -> int:
    chosen = select(letters, reason=args.reason, since=args.since)
    if args.json:
        body = {"counts": counts(chosen), "dead_letters": [d.summary() for d in chosen]}
        print(json.dumps(body, indent=2))
        return 0
    for letter in chosen:
        summary = letter.summary()
        error = (summary["error"] or "")[:100]
        print(
            f"{letter.id:>10}  {summary['at'][:19]}  {letter.reason:<26} {summary['key']}  {error}"
        )
    listed = ", ".join(f"{reason} {n}" for reason, n in counts(chosen).items()) or "none"
    print(f"{len(chosen)} dead letters: {listed}")
    return 0


def _show(by_id: dict[str, DeadLetter], letter_id: str) -> int:
    letter = by_id.get(letter_id)
    if letter is None:
        print(f"genrelay dead-letters: no dead letter {letter_id}", file=sys.stderr)
        return 1
    print(json.dumps(letter.to_json(), indent=2))
    return 0


async def _redrive(
    by_id: dict[str, DeadLetter], args: argparse.Namespace, bootstrap: str, topic: str
) -> int:
    if args.file is not None and len(args.ids) != 1:
        print("genrelay dead-letters: --file replaces exactly one dead letter", file=sys.stderr)
        return 1
    redrives: list[Redrive] = []
    for letter_id in args.ids:
        letter = by_id.get(letter_id)
        if letter is None:
            print(f"genrelay dead-letters: no dead letter {letter_id}", file=sys.stderr)
            return 1
        try:
            if args.file is not None:
                redrives += fixed_redrives(letter, args.file.read_text().splitlines())
            else:
                redrives.append(redrive_of(letter))
        except (ValueError, OSError) as exc:
            print(f"genrelay dead-letters: {exc}", file=sys.stderr)
            return 1
    await send(bootstrap, topic, redrives)
    print(f"re-drove {len(redrives)} record(s) onto {topic}")
    return 0
