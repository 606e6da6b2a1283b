"""Write, or check, the JSON Schemas generated from the record models.

python -m genrelay.schemas.generate          # rewrite schemas/json/*.json
python -m genrelay.schemas.generate --check  # exit 1 if a checked-in schema has drifted
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from genrelay.schemas.budgets import BudgetRecord
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.costs import CostRecord
from genrelay.schemas.progress import ProgressEvent
from genrelay.schemas.requests import RequestRecord
from genrelay.schemas.webhooks import WebhookDelivery

JSON_DIR = Path(__file__).resolve().parent / "json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# File name -> (title, record type). A breaking change adds a new `.vN.json` entry.
SCHEMAS: dict[str, tuple[str, Any]] = {
    "request.v1.json": ("RequestRecord", RequestRecord),
    "completion.v1.json": ("CompletionEvent", CompletionEvent),
    "progress.v1.json": ("ProgressEvent", ProgressEvent),
    "webhook-delivery.v1.json": ("WebhookDelivery", WebhookDelivery),
    "cost.v1.json": ("CostRecord", CostRecord),
    "budget.v1.json": ("BudgetRecord", BudgetRecord),
}


def render(name: str) -> str:
    """The text of one generated schema file."""
    title, record_type = SCHEMAS[name]
    schema = {"$schema": DRAFT, "title": title, **TypeAdapter(record_type).json_schema()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def drifted(directory: Path = JSON_DIR) -> list[str]:
    """Names of schema files that are missing from `directory` or differ from the models."""
    return [
        name
        for name in SCHEMAS
        if not (directory / name).is_file() or (directory / name).read_text() != render(name)
    ]


def write(directory: Path = JSON_DIR) -> list[str]:
    """Rewrite the schema files that drifted; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = drifted(directory)
    for name in changed:
        (directory / name).write_text(render(name))
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m genrelay.schemas.generate")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a schema drifted"
    )
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="schema directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted(args.dir)
        for name in stale:
            print(f"{name} is out of date; run python -m genrelay.schemas.generate")
        return 1 if stale else 0
    for name in write(args.dir):
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
