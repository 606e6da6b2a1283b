"""Where the relay's CPU goes: py-spy samples the relay process while a scenario runs.

py-spy reads the target's memory from outside (`--nonblocking`: without pausing it), so the
relay runs unmodified. The collapsed stacks it writes are summarised here by function (own
time, and time including callees) and by library.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(:\d+)?\)$")
_TOP = 15


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, else on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """`async with Profiler(pid, out): ...` records the process while the block runs."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.seconds = 0.0
        self._process: asyncio.subprocess.Process | None = None
        self._began = 0.0

    async def __aenter__(self) -> Self:
        executable = py_spy()
        if executable is None:
            raise RuntimeError("py-spy is not installed")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            executable,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--function",
            "--nonblocking",
            # Only the thread holding the GIL: CPU spent in Python, not threads blocked in I/O.
            "--gil",
            "--output",
            str(self.out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._began = time.monotonic()
        return self

    def summary(self) -> dict[str, Any]:
        """`summarise` of the recording, plus the share of the time a thread held the GIL."""
        found = summarise(self.out.read_text())
        capacity = self.rate * self.seconds
        found["gil_held_share"] = round(found["samples"] / capacity, 3) if capacity else None
        found["file"] = str(self.out)
        return found

    async def __aexit__(self, *exc_info: object) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        self.seconds = time.monotonic() - self._began
        # SIGINT is py-spy's "stop and write the file".
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), timeout=60)
        except TimeoutError:
            process.kill()
            await process.wait()


_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<rest>.*)$")
_REPO = str(Path(__file__).resolve().parents[1]) + "/"
_PARTS = frozenset({"bench", "consumer", "deploy", "emulator", "producers", "schemas"})


def _relative(path: str) -> str:
    """A frame's file relative to site-packages, the stdlib or this repository."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if (stdlib := _STDLIB.search(path)) is not None:
        return stdlib["rest"]
    return path.removeprefix(_REPO)


def _library(path: str) -> str:
    if _STDLIB.search(path) is not None and "site-packages/" not in path:
        return "stdlib " + _relative(path).split("/", 1)[0].removesuffix(".py")
    parts = _relative(path).split("/")
    if parts[0] == "genrelay" and len(parts) > 1:
        parts = parts[1:]
    if parts[0] in _PARTS:
        return "genrelay." + parts[0]
    return parts[0].removesuffix(".py") or "?"


def summarise(collapsed: str) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, and samples by library."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        names = []
        for frame in frames:
            match = _FRAME.match(frame)
            function, path = (match["function"], match["path"]) if match else (frame, "")
            names.append((f"{function} ({_relative(path)})", path))
        if not names:
            continue
        leaf, leaf_path = names[-1]
        own[leaf] += count
        libraries[_library(leaf_path)] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"what": name, "share": round(n / total, 3)} for name, n in counter.most_common(_TOP)
        ]

    return {
        "samples": total,
        "own_time": shares(own),
        "inclusive_time": shares(inclusive),
        "by_library": shares(libraries),
    }
