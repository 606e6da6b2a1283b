"""`genrelay budgets`: spend caps per tenant, changed while the relay runs.

    genrelay budgets set shop --usd 250 --period month                # fail when exceeded
    genrelay budgets set bulk-jobs --usd 40 --period day --when-exceeded wait
    genrelay budgets list                                             # budgets and spend
    genrelay budgets remove shop

A budget is a record on `GENRELAY_TOPIC_BUDGETS` (compacted, keyed by tenant; `""` is the
requests without a tenant). Every replica follows the topic: a change takes effect within a
second, and a raised budget releases keys that were waiting for it. `list` adds each
tenant's spend in the current period, from every replica's spend records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from genrelay.consumer.service.config import Settings
from genrelay.producers.addresses import reachable_kafka
from genrelay.producers.errors import BrokerError, UnreachableError
from genrelay.producers.kafka import read_topic
from genrelay.schemas.base import from_json_bytes, to_json_bytes
from genrelay.schemas.budgets import BudgetRecord, SpendRecord, period_start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    actions = parser.add_subparsers(dest="budgets_command", required=True)
    setting = actions.add_parser("set", help="set (or change) a tenant's budget")
    setting.add_argument("tenant", help='the requests\' tenant ("" for those without one)')
    setting.add_argument("--usd", type=float, required=True, help="the budget per period, USD")
    setting.add_argument("--period", choices=("day", "month"), default="month")
    setting.add_argument(
        "--when-exceeded",
        choices=("fail", "wait"),
        default="fail",
        help="fail: end `budget_exceeded` unpaid; wait: wait, unposted, until it fits",
    )
    removing = actions.add_parser("remove", help="remove a tenant's budget")
    removing.add_argument("tenant")
    listing = actions.add_parser("list", help="budgets, and spend in the current period")
    listing.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    """0: done; 2: unusable settings, arguments or Kafka."""
    return asyncio.run(command(args))


async def command(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
        bootstrap = await reachable_kafka(args.bootstrap)
        if args.budgets_command == "list":
            return await _list(bootstrap, settings, as_json=args.json)
        if args.budgets_command == "set":
            budget = BudgetRecord(
                tenant=args.tenant,
                usd=args.usd,
                period=args.period,
                when_exceeded=args.when_exceeded,
                set_at=datetime.now(UTC),
            )
            await _write(bootstrap, settings.topic_budgets, args.tenant, to_json_bytes(budget))
        else:
            await _write(bootstrap, settings.topic_budgets, args.tenant, None)
        return 0
    except ValidationError as exc:
        print(f"genrelay budgets: invalid settings or arguments: {exc}", file=sys.stderr)
    except (UnreachableError, BrokerError, KafkaError) as exc:
        print(f"genrelay budgets: {exc}", file=sys.stderr)
    return 2


async def _write(bootstrap: str, topic: str, tenant: str, value: bytes | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await (await producer.send(topic, value, key=tenant.encode()))
    finally:
        await producer.stop()


async def _list(bootstrap: str, settings: Settings, *, as_json: bool) -> int:
    budgets: dict[str, BudgetRecord] = {}
    for message in await read_topic(bootstrap, settings.topic_budgets):
        tenant = message.key.decode()
        if message.value is None:
            budgets.pop(tenant, None)
        else:
            budgets[tenant] = from_json_bytes(BudgetRecord, message.value)
    spent: dict[tuple[int, str, str], float] = {}
    for message in await read_topic(bootstrap, settings.topic_spend):
        if message.value is not None:
            record = from_json_bytes(SpendRecord, message.value)
            spent[(record.partition, record.tenant, record.period_start)] = record.usd
    now = datetime.now(UTC)
    rows = []
    for tenant, budget in sorted(budgets.items()):
        start = period_start(budget.period, now)
        used = sum(usd for (_, t, s), usd in spent.items() if t == tenant and s == start)
        rows.append({**budget.model_dump(mode="json"), "period_start": start, "spent_usd": used})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no budgets")
    for row in rows:
        print(
            f"{row['tenant'] or '(none)':<20} {row['spent_usd']:>12.4f} of {row['usd']:.4f} USD"
            f" in {row['period_start']} ({row['period']}; when exceeded: {row['when_exceeded']})"
        )
    return 0
