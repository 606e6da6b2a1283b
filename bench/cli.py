"""`genrelay bench`: every scenario's figures, measured side by side in one run.

    genrelay bench                         the full run (about half an hour on 2 cores)
    genrelay bench --smoke                 a few hundred jobs per scenario: checks it works
    genrelay bench --scenario throughput   one scenario (repeat the flag for more)
    genrelay bench --stack-json .genrelay/stack.json   on a running stack, not a new one

Prints a table and writes every figure to `--out` (JSON). Exits 1 when a scenario failed, a
figure is missing, or any key was paid for other than exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from genrelay.bench.context import Plan
from genrelay.bench.report import render_table, write_json
from genrelay.bench.runner import CHOICES, run_bench
from genrelay.deploy.local.stack import LocalStack, StackInfo

DEFAULT_OUT = Path(".genrelay") / "bench.json"
_STACK_FIELDS = ("kafka_bootstrap", "s3_endpoint", "s3_access_key", "s3_secret_key")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bench` command's flags."""
    parser.add_argument(
        "--smoke", action="store_true", help="a few hundred jobs per scenario (CI: it works)"
    )
    parser.add_argument("--jobs", type=int, help="jobs per throughput burst (default 10,000)")
    parser.add_argument(
        "--concurrency", type=int, help="in-flight jobs for genrelay and baselines (default 500)"
    )
    parser.add_argument(
        "--webhook-loss",
        type=float,
        metavar="SHARE",
        help="share of webhooks the emulator loses in the throughput scenario (default 0)",
    )
    parser.add_argument(
        "--scenario",
        dest="scenarios",
        action="append",
        choices=CHOICES,
        default=[],
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON of every figure ({DEFAULT_OUT})"
    )
    parser.add_argument(
        "--stack-json",
        type=Path,
        help="use the running stack this file describes (as `genrelay local` writes it)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the relay with py-spy during the throughput and realistic runs; stacks go "
        "to DIR",
    )


def plan_from(args: argparse.Namespace) -> Plan:
    plan = Plan.smoke_test() if args.smoke else Plan.full()
    if args.jobs is not None:
        plan = plan.with_jobs(args.jobs)
    if args.concurrency is not None:
        plan = plan.with_concurrency(args.concurrency)
    if args.webhook_loss is not None:
        plan = plan.with_webhook_loss(args.webhook_loss)
    return plan


def read_stack(path: Path) -> StackInfo:
    """A `StackInfo` from `.genrelay/stack.json`; further entries are kept as extras."""
    data = json.loads(path.read_text())
    extra = {k: str(v) for k, v in data.items() if k not in _STACK_FIELDS}
    return StackInfo(**{k: str(data[k]) for k in _STACK_FIELDS}, extra=extra)


@contextlib.asynccontextmanager
async def _stack(path: Path | None) -> AsyncIterator[StackInfo]:
    if path is not None:
        yield read_stack(path)
        return
    print("bench: starting the local stack (Kafka, MinIO)", file=sys.stderr, flush=True)
    async with LocalStack() as stack:
        yield stack.info


async def _run(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    workdir = Path(tempfile.mkdtemp(prefix="genrelay-bench-"))
    async with _stack(args.stack_json) as stack:
        results = await run_bench(
            stack,
            plan,
            args.scenarios,
            workdir=workdir,
            profile_dir=args.profile,
            checkpoint=lambda partial: write_json(partial, args.out),
        )
    write_json(results, args.out)
    print(render_table(results))
    print(f"\nevery figure: {args.out}")
    if results["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"bench: incomplete or overspent; process logs kept in {workdir}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    """Run the bench as `args` (from `add_arguments`) say; returns the exit code."""
    return asyncio.run(_run(args))
