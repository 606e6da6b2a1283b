"""What a process and the machine spent, read from /proc, and the statistics the report uses.

Every figure comes from the kernel's own accounting of separate processes: CPU seconds are
`utime + stime` of `/proc/<pid>/stat`, memory is `VmRSS`/`VmHWM` of `/proc/<pid>/status`, and
the machine's busy share comes from `/proc/stat`, so a reader can tell how much of two cores
other programs on the same machine took during a run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state(0) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} missing in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident memory now."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The highest resident memory the process has had (the kernel's high-water mark)."""
    return _status_kb(pid, "VmHWM") * 1024


def available_memory_bytes() -> int:
    """`MemAvailable` of /proc/meminfo: what can be allocated without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable missing in /proc/meminfo")


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # steal included; guest time is already inside user
    return total - idle, total


def pid_listening_on(port: int) -> int | None:
    """The process with a listening TCP socket on `port` (e.g. the broker), if visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == _LISTEN and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class CpuSpent:
    """CPU seconds per watched process and the machine's busy share over one interval."""

    wall_seconds: float
    process_seconds: Mapping[str, float]
    machine_busy_share: float
    cpus: int

    def as_json(self) -> dict[str, Any]:
        ours = sum(self.process_seconds.values())
        capacity = self.wall_seconds * self.cpus
        return {
            "cpus": self.cpus,
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": {name: round(s, 3) for name, s in self.process_seconds.items()},
            # Shares of the whole machine (1.0 = every core busy for the whole interval).
            "share_of_machine": {
                name: round(s / capacity, 3) for name, s in self.process_seconds.items()
            },
            "machine_busy_share": round(self.machine_busy_share, 3),
            "others_share": round(max(0.0, self.machine_busy_share - ours / capacity), 3),
        }


class CpuWatch:
    """Snapshots CPU time of named processes and of the machine; `stop()` gives the difference.

    A process that ends during the interval is reported with what it had used at its last
    reading.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._machine = (0, 0)
        self._began = 0.0

    def start(self) -> CpuWatch:
        self._start = self._read()
        self._last = dict(self._start)
        self._machine = _machine_ticks()
        self._began = time.monotonic()
        return self

    def _read(self) -> dict[str, float]:
        seen: dict[str, float] = {}
        for name, pid in self._pids.items():
            try:
                seen[name] = cpu_seconds(pid)
            except OSError:
                continue
        return seen

    def stop(self) -> CpuSpent:
        wall = time.monotonic() - self._began
        self._last.update(self._read())
        busy0, total0 = self._machine
        busy1, total1 = _machine_ticks()
        spent = {name: self._last.get(name, start) - start for name, start in self._start.items()}
        share = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        return CpuSpent(wall, spent, share, os.cpu_count() or 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 to 100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values: Iterable[float]) -> dict[str, float | int | None]:
    """p50, p99, mean and max of millisecond values, rounded for the report."""
    data = list(values)
    if not data:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    return {
        "n": len(data),
        "p50": round(percentile(data, 50), 2),
        "p99": round(percentile(data, 99), 2),
        "mean": round(sum(data) / len(data), 2),
        "max": round(max(data), 2),
    }


def host_facts() -> dict[str, Any]:
    """The machine a run measured: CPUs, memory and the load before the run."""
    return {
        "cpus": os.cpu_count(),
        "memory_available_gb": round(available_memory_bytes() / 1e9, 1),
        "load_average": load_average(),
    }
