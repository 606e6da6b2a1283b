"""Child server processes of the local stack: started in their own process group, stopped for sure.

Each server runs as a child in a new session (so its whole process group can be signalled) and,
on Linux, with a parent-death signal, so a crashed or killed parent never leaves a broker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StackStartError(RuntimeError):
    """A server of the local stack could not be started; the message carries its log's tail."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when we die.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ManagedProcess:
    """One server process with its log file; `stop()` is idempotent."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def exit_code(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return self._proc.poll() if self._proc else None

    def fail(self, what: str) -> StackStartError:
        """An error naming this process's log and quoting its tail."""
        return StackStartError(
            f"{self.name} {what}; log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # The leader may be gone while helpers it forked live on in its group.
        self._signal_group(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the process group at once (crash simulation)."""
        if self._proc is not None:
            self._signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP (or SIGCONT) the process group: a replica that stalls, then wakes up."""
        if self._proc is not None:
            self._signal_group(self._proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in a process group, read from /proc."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            members.append(int(entry.name))
    return members


def wait_until_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no live process of the group remains (zombies awaiting reaping don't count)."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
