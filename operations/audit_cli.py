"""`genrelay audit`: did fal bill each key once? Read from fal's side.

    genrelay audit --hours 24                 # the last day, as text; exit 1 on a double charge
    genrelay audit --since 2026-12-01 --until 2026-12-02 --json report.json
    genrelay audit --hours 24 --publish-costs # and what fal billed each key, to genrelay.costs

It reads fal's billing events for the window (`GET /v1/models/billing-events?source=
tagged-billed`, with the `gr.key` tag every genrelay submit carries) and genrelay's
completion topic (read committed), with the relay's own `GENRELAY_*` settings (the fal key
must be allowed to read billing: fal asks for an admin key there). Keys announced within
`--billing-lag-minutes` of the window's end are not yet expected to be billed.

With `--publish-costs` it writes, for every key fal billed in the window, a cost record (the
requests billed, units, USD) to `GENRELAY_TOPIC_COSTS` (compacted, keyed by idempotency key;
running it again rewrites the same records). Run it on a schedule, like the audit itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from genrelay.consumer.errors import ProviderError
from genrelay.consumer.provider.fal_platform import FalPlatform
from genrelay.consumer.service.config import Settings
from genrelay.operations.arguments import moment
from genrelay.operations.audit import AuditReport, audit, cost_records
from genrelay.producers.kafka import read_topic
from genrelay.schemas.base import from_json_bytes, to_json_bytes
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.costs import CostRecord


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--since", type=moment, help="window start, ISO 8601 (UTC if no zone)")
    parser.add_argument("--until", type=moment, help="window end (exclusive); default now")
    parser.add_argument(
        "--hours", type=float, default=24.0, help="window length when --since is not given"
    )
    parser.add_argument(
        "--billing-lag-minutes",
        type=float,
        default=60.0,
        help="how long fal's billing may take to report a request",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the report ('-': stdout)"
    )
    parser.add_argument(
        "--publish-costs",
        action="store_true",
        help="write each billed key's cost record to the costs topic",
    )


def main(args: argparse.Namespace) -> int:
    """0: no key billed twice; 1: a double charge; 2: the records could not be read."""
    return asyncio.run(command(args))


async def command(args: argparse.Namespace) -> int:
    """`main`, in a running event loop."""
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"genrelay audit: invalid GENRELAY_* settings: {exc}", file=sys.stderr)
        return 2
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(hours=args.hours)
    try:
        lag = timedelta(minutes=args.billing_lag_minutes)
        report = await run_audit(settings, since, until, lag)
    except ProviderError as exc:
        print(f"genrelay audit: cannot read fal's records: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        text = json.dumps(report.to_json(), indent=2) + "\n"
        if str(args.json) == "-":
            sys.stdout.write(text)
        else:
            args.json.write_text(text)
    if args.json is None or str(args.json) != "-":
        print(f"audit {since.isoformat()} .. {until.isoformat()}")
        print(report.text())
    if args.publish_costs:
        records = cost_records(report, datetime.now(UTC))
        try:
            await publish_costs(settings, records)
        except KafkaError as exc:
            print(f"genrelay audit: cannot write {settings.topic_costs}: {exc}", file=sys.stderr)
            return 2
        print(f"{len(records)} cost records written to {settings.topic_costs}", file=sys.stderr)
    return 0 if report.ok else 1


async def publish_costs(settings: Settings, records: list[CostRecord]) -> None:
    """Write the records, keyed by idempotency key, each acknowledged by every replica."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                settings.topic_costs, to_json_bytes(record), key=record.idempotency_key.encode()
            )
            for record in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def run_audit(
    settings: Settings, since: datetime, until: datetime, billing_lag: timedelta
) -> AuditReport:
    """Read both sides of the window and compare them."""
    async with FalPlatform(
        settings.fal_key.get_secret_value(), base_url=settings.fal_platform_url
    ) as fal:
        billed = await fal.billing_events(start=since, end=until)
    records = await read_topic(settings.kafka_bootstrap, settings.topic_completions)
    announced = [from_json_bytes(CompletionEvent, r.value) for r in records if r.value]
    # Keys announced in the window, and long enough ago for fal to have billed them.
    settled = (since + billing_lag, min(until, datetime.now(UTC) - billing_lag))
    return audit(billed, announced, settled=settled)
