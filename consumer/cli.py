"""The `genrelay` command line."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("local", help="run genrelay on the embedded local stack until Ctrl-C")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `genrelay` command."""
    args = _parser().parse_args(argv)
    if args.command == "local":
        from genrelay.deploy.local.runner import run_local

        return asyncio.run(run_local())
    raise AssertionError(f"unhandled command {args.command}")
