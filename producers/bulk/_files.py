"""File writing that survives a crash: atomic replacement and append-only logs."""

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` by way of a temporary file, so `path` is never half written."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with one compact JSON object per line."""
    write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def complete_lines(path: Path) -> list[str]:
    """The non-empty lines of a log; a last line without its newline is left out."""
    # A line without its newline was cut short by a crash while being appended.
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n")[:-1] if line]


def open_log(path: Path) -> IO[str]:
    """Open a log for appending, first dropping a last line a crash cut short."""
    if path.exists():
        content = path.read_bytes()
        complete = content.rfind(b"\n") + 1
        if complete != len(content):
            os.truncate(path, complete)
    return path.open("a", encoding="utf-8")


def append_line(log: IO[str], line: str) -> None:
    """Append one line and hand it to the operating system at once."""
    log.write(line + "\n")
    log.flush()
