"""Reading a bulk file: JSONL or CSV bytes in, one JSON object per numbered line out.

Line numbers count physical lines from 1, as an editor shows them; a CSV record spanning
several lines is numbered by its first. Blank lines are skipped. A line that cannot be read
becomes a `LineError`; a file that cannot be read at all raises `BadInputError`.

CSV: the header names the input fields. Empty cells are left out, and cells holding a JSON
number, `true`/`false`, an object or an array become that value (`7` is the number 7,
`{"width": 64}` an object); anything else is a string.
"""

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import JsonValue

from genrelay.producers.bulk.errors import BadInputError
from genrelay.schemas.dead_letter import DeadLetterReason

_BOM = b"\xef\xbb\xbf"
_JSON_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


class SourceFormat(StrEnum):
    """How a bulk file is written."""

    JSONL = "jsonl"
    CSV = "csv"

    @classmethod
    def of(cls, path: Path) -> "SourceFormat":
        """CSV for a `.csv` file, JSONL for anything else."""
        return cls.CSV if path.suffix.lower() == ".csv" else cls.JSONL


@dataclass(frozen=True, slots=True)
class Row:
    """One line's JSON object; `input_only` when it holds model input fields only (CSV)."""

    line: int
    fields: dict[str, Any]
    input_only: bool


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that is not sent: its number, a machine-readable type, and what was wrong.

    `type` is a dead-letter reason code (`not_json`, `schema_violation`, ...) where one
    applies, so a line refused here reads like a record the relay would refuse.
    """

    line: int
    type: str
    message: str


def read_rows(content: bytes, source_format: SourceFormat) -> Iterator[Row | LineError]:
    """The rows of a bulk file, in file order."""
    if source_format is SourceFormat.CSV:
        return _csv_rows(content)
    return _jsonl_rows(content)


def _jsonl_rows(content: bytes) -> Iterator[Row | LineError]:
    for number, raw in enumerate(content.removeprefix(_BOM).split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            # NaN and Infinity are not JSON, and the relay would refuse them.
            value = pydantic_core.from_json(line, allow_inf_nan=False)
        except ValueError as exc:
            yield LineError(number, DeadLetterReason.NOT_JSON.value, f"not UTF-8 JSON: {exc}")
            continue
        if not isinstance(value, dict):
            yield LineError(
                number, DeadLetterReason.NOT_OBJECT.value, "the line is JSON, but not an object"
            )
            continue
        yield Row(number, value, input_only=False)


def _csv_rows(content: bytes) -> Iterator[Row | LineError]:
    text = _decoded(content)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        _check_header(header)
        first_line = reader.line_num + 1
        for cells in reader:
            if any(cells):
                yield _csv_row(first_line, header, cells)
            first_line = reader.line_num + 1
    except csv.Error as exc:
        raise BadInputError(f"line {reader.line_num}: not readable as CSV: {exc}") from exc


def _decoded(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise BadInputError(f"line {line}: the file is not UTF-8") from exc


def _check_header(header: list[str]) -> None:
    names = [name.strip() for name in header]
    if not all(names):
        raise BadInputError("line 1: every CSV column needs a name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadInputError(f"line 1: CSV columns named more than once: {', '.join(repeated)}")


def _csv_row(line: int, header: list[str], cells: list[str]) -> Row | LineError:
    if len(cells) > len(header):
        return LineError(
            line,
            DeadLetterReason.SCHEMA_VIOLATION.value,
            f"the row has {len(cells)} cells but the header names {len(header)} columns",
        )
    fields = {
        name.strip(): _cell_value(cell) for name, cell in zip(header, cells, strict=False) if cell
    }
    return Row(line, fields, input_only=True)


def _cell_value(cell: str) -> JsonValue:
    if cell in ("true", "false") or cell[0] in "{[" or _JSON_NUMBER.match(cell):
        try:
            value: JsonValue = pydantic_core.from_json(cell, allow_inf_nan=False)
        except ValueError:
            return cell  # e.g. a prompt that starts with "[": text after all
        return value
    return cell
