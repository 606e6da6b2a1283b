"""Where client commands find Kafka and the object store: one address book.

Each value comes from the first of: a command-line flag, a `GENRELAY_*` variable, the local
stack's `.genrelay/stack.json` (written by `deploy/local/run.sh` while it runs, so the
README's examples work on it as written), or the default. `Found.source` says which, so an
error can name the setting to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from genrelay.producers.errors import UnreachableError

STACK_FILE = Path(".genrelay") / "stack.json"

# Setting -> (variable, key in stack.json, default).
_BOOK: dict[str, tuple[str, str, str]] = {
    "kafka_bootstrap": ("GENRELAY_KAFKA_BOOTSTRAP", "kafka_bootstrap", "127.0.0.1:9092"),
    "s3_endpoint": ("GENRELAY_S3_ENDPOINT", "s3_endpoint", "127.0.0.1:9000"),
    "s3_access_key": ("GENRELAY_S3_ACCESS_KEY", "s3_access_key", ""),
    "s3_secret_key": ("GENRELAY_S3_SECRET_KEY", "s3_secret_key", ""),
}


@dataclass(frozen=True)
class Found:
    value: str
    source: str  # the flag, `$VARIABLE`, the stack file, or "default"


def look_up(
    setting: str,
    flag: str | None = None,
    *,
    flag_name: str | None = None,
    env: Mapping[str, str] | None = None,
    stack_file: Path = STACK_FILE,
) -> Found:
    """The value of `setting` (a key of the book) and where it came from."""
    variable, stack_key, default = _BOOK[setting]
    if flag is not None:
        return Found(flag, flag_name or "--" + setting.replace("_", "-"))
    environment = os.environ if env is None else env
    if environment.get(variable):
        return Found(environment[variable], f"${variable}")
    stacked = _stack(stack_file).get(stack_key)
    if stacked:
        return Found(stacked, str(stack_file))
    return Found(default, "default")


def _stack(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


_HINTS = {
    "kafka_bootstrap": "--bootstrap or GENRELAY_KAFKA_BOOTSTRAP",
    "s3_endpoint": "--s3-endpoint or GENRELAY_S3_ENDPOINT",
}


async def require_reachable(setting: str, found: Found, *, timeout: float = 3.0) -> None:
    """Raise `UnreachableError` (one clear line) unless a TCP connection to the first address of
    `found` opens within `timeout` s: a client fails fast instead of retrying for minutes."""
    first = found.value.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    where = f"{first} (from {found.source})"
    hint = _HINTS.get(setting, setting)
    if found.source == str(STACK_FILE):
        hint += "; or start the local stack again (deploy/local/run.sh)"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        what = "Kafka" if setting == "kafka_bootstrap" else "the object store"
        reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        raise UnreachableError(f"cannot reach {what} at {where}: {reason}; set {hint}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def reachable_kafka(flag_value: str | None) -> str:
    """The Kafka bootstrap a client command uses (`--bootstrap`, else the usual places), once
    it answers; `UnreachableError` otherwise."""
    found = look_up("kafka_bootstrap", flag_value, flag_name="--bootstrap")
    await require_reachable("kafka_bootstrap", found)
    return found.value
