"""Named crash points for fault tests: the process kills itself (SIGKILL) when it reaches one.

`GENRELAY_FAILPOINT=after_post` (or `after_post:3` for the third time it is reached) makes the
relay die exactly at that boundary, which no external `kill -9` can time. Unset, a check is
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = frozenset({"before_post", "after_post", "after_submitted", "mid_download", "after_commit"})

_armed: tuple[str, int] | None = None
_seen: Counter[str] = Counter()


def arm(spec: str | None) -> None:
    """Arm a crash point from its spec (`name` or `name:n`); None disarms."""
    global _armed
    if not spec:
        _armed = None
        return
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {sorted(POINTS)}")
    _armed = (name, int(count or 1))
    _seen.clear()


def reached(name: str) -> None:
    """Die here if this point is armed and this is its n-th arrival."""
    if _armed is None or _armed[0] != name:
        return
    _seen[name] += 1
    if _seen[name] == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get("GENRELAY_FAILPOINT"))
