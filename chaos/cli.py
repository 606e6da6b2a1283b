"""`genrelay chaos`: run fault scenarios against a private loopback stack and print the table.

    genrelay chaos --list                 the scenarios
    genrelay chaos kill-replicas          one scenario at its full size
    genrelay chaos --all                  every scenario, one after another
    genrelay chaos --all --smoke          the small CI version (a few dozen jobs, short faults)

It starts its own Kafka, MinIO and Toxiproxy on 127.0.0.1 (from the provisioning cache), the
emulator in this process and the relays as child processes. Each scenario is bounded in jobs
and in wall-clock time. The exit code is 0 only if every scenario kept every invariant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from genrelay.chaos.environment import ChaosStack
from genrelay.chaos.report import ScenarioReport, table
from genrelay.chaos.runner import WEBHOOK_MODES, run_scenario
from genrelay.chaos.scenarios import BY_NAME, SCENARIOS, Scenario, Size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `genrelay chaos`."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"one or more of: {', '.join(BY_NAME)}"
    )
    parser.add_argument("--all", action="store_true", help="run every scenario")
    parser.add_argument(
        "--smoke", action="store_true", help="the small CI size: a few dozen jobs, short faults"
    )
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="this many jobs per scenario (same arrival rate)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the emulator's random seed")
    parser.add_argument(
        "--webhooks",
        choices=WEBHOOK_MODES,
        default="on",
        help="on (default); lost: fal loses every webhook; off: the relays poll only",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the reports here")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep server data and relay logs in DIR (default: a temporary directory, "
        "kept only when a scenario fails)",
    )


def _selected(args: argparse.Namespace) -> list[Scenario] | str:
    unknown = [name for name in args.scenarios if name not in BY_NAME]
    if unknown:
        return f"unknown scenario(s) {unknown}; known: {', '.join(BY_NAME)}"
    if args.all:
        return list(SCENARIOS)
    if not args.scenarios:
        return "name a scenario, or use --all (--list shows them)"
    return [BY_NAME[name] for name in args.scenarios]


def _size(scenario: Scenario, args: argparse.Namespace) -> Size:
    size = scenario.smoke if args.smoke else scenario.full
    if args.jobs is not None:
        size = size.with_jobs(args.jobs)
    return size


def _command(scenario: Scenario, args: argparse.Namespace) -> str:
    words = ["genrelay", "chaos", scenario.name]
    if args.smoke:
        words.append("--smoke")
    if args.jobs is not None:
        words += ["--jobs", str(args.jobs)]
    if args.seed:
        words += ["--seed", str(args.seed)]
    if args.webhooks != "on":
        words += ["--webhooks", args.webhooks]
    return shlex.join(words)


def main(args: argparse.Namespace) -> int:
    """Run the selected scenarios; 0 if all kept their invariants, 1 if not, 2 on misuse."""
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:<17} {scenario.summary}")
        return 0
    if args.jobs is not None and args.jobs < 1:
        print("genrelay chaos: --jobs must be at least 1", file=sys.stderr)
        return 2
    chosen = _selected(args)
    if isinstance(chosen, str):
        print(f"genrelay chaos: {chosen}", file=sys.stderr)
        return 2
    # Connection errors are the point here; the relays' own logs are in their files.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    root: Path = args.keep or Path(tempfile.mkdtemp(prefix="genrelay-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    reports = asyncio.run(_run(chosen, args, root))
    print(table(reports))
    print()
    for report in reports:
        print(report.details())
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
    return 0 if reports and all(r.ok for r in reports) else 1


async def _run(
    chosen: list[Scenario], args: argparse.Namespace, root: Path
) -> list[ScenarioReport]:
    reports: list[ScenarioReport] = []
    stack = ChaosStack(root / "stack", keep_dir=True)
    try:
        async with stack, stack.client() as api:
            for scenario in chosen:
                size = _size(scenario, args)
                print(
                    f"chaos: {scenario.name}: {size.load.jobs} jobs, cap {size.cap_s:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                report = await run_scenario(
                    scenario,
                    size,
                    stack.servers,
                    api=api,
                    workdir=root / "relays" / scenario.name,
                    size_name="smoke" if args.smoke else "full",
                    command=_command(scenario, args),
                    seed=args.seed,
                    webhooks=args.webhooks,
                )
                print(f"chaos: {table([report]).splitlines()[-1]}", file=sys.stderr, flush=True)
                reports.append(report)
    finally:
        if args.keep is None and all(r.ok for r in reports):
            await asyncio.to_thread(_remove, root)
        else:
            print(f"chaos: logs and data kept in {root}", file=sys.stderr)
    return reports


def _remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
