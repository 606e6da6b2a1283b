"""The `genrelay` command line.

genrelay local       the whole embedded stack (Kafka, MinIO, emulator, relay) until Ctrl-C
genrelay run         one relay replica, configured by GENRELAY_* variables
genrelay emulator    the fal-compatible queue emulator alone
genrelay submit      put one request on Kafka (and with --wait, print its outcome)
genrelay bulk …      submit a JSONL/CSV file, follow it, collect a manifest, cancel it
genrelay bench       end-to-end figures against the baselines, in one run
genrelay chaos       run fault scenarios and check the invariants held
genrelay audit       check from fal's billing that every key was paid for once
genrelay inspect     what happened to one key: its ledger states, event, files, trace
genrelay dead-letters  list, show and re-drive refused requests
genrelay budgets     set, list and remove spend caps per tenant
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrelay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("local", help="run genrelay on the embedded local stack until Ctrl-C")
    commands.add_parser("run", help="run one relay replica (settings from GENRELAY_* variables)")
    commands.add_parser("emulator", help="run the fal-compatible emulator", add_help=False)
    from genrelay.producers import submit_command

    submit_command.add_arguments(commands.add_parser("submit", help="submit one request"))
    from genrelay.producers.bulk import cli as bulk_cli

    bulk_cli.add_subcommands(commands)
    from genrelay.bench import cli as bench_cli
    from genrelay.chaos import cli as chaos_cli

    bench_cli.add_arguments(commands.add_parser("bench", help="run the benchmark scenarios"))
    chaos_cli.add_arguments(commands.add_parser("chaos", help="run fault scenarios"))
    from genrelay.operations import audit_cli

    audit_cli.add_arguments(
        commands.add_parser("audit", help="check fal's billing: one charge per key")
    )
    from genrelay.operations import inspect_cli

    inspect_cli.add_arguments(commands.add_parser("inspect", help="the story of one key"))
    from genrelay.operations import dead_letters_cli

    dead_letters_cli.add_arguments(
        commands.add_parser("dead-letters", help="list, show and re-drive dead letters")
    )
    from genrelay.operations import budgets_cli

    budgets_cli.add_arguments(commands.add_parser("budgets", help="spend caps per tenant"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `genrelay` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        from genrelay.emulator.cli import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command not in ("run", "local"):  # those configure their own logging
        # Client commands show their own progress; library chatter only when it matters.
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "local":
        from genrelay.deploy.local.runner import run_local

        return asyncio.run(run_local())
    if args.command == "run":
        from genrelay.consumer.service.process import serve

        return serve()
    if args.command == "submit":
        from genrelay.producers import submit_command

        return submit_command.main(args)
    if args.command == "bulk":
        from genrelay.producers.bulk import cli as bulk_cli

        return bulk_cli.main(args)
    if args.command == "bench":
        from genrelay.bench import cli as bench_cli

        return bench_cli.main(args)
    if args.command == "dead-letters":
        from genrelay.operations import dead_letters_cli

        return dead_letters_cli.main(args)
    if args.command == "budgets":
        from genrelay.operations import budgets_cli

        return budgets_cli.main(args)
    if args.command == "inspect":
        from genrelay.operations import inspect_cli

        return inspect_cli.main(args)
    if args.command == "audit":
        from genrelay.operations import audit_cli

        return audit_cli.main(args)
    if args.command == "chaos":
        from genrelay.chaos import cli as chaos_cli

        return chaos_cli.main(args)
    raise AssertionError(f"unhandled command {args.command}")
