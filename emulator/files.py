"""Output files: rendered once, served from expiring URLs, kept in a bounded memory cache.

A file is remembered by its spec, not its bytes. Bytes live in an LRU cache bounded by
`file_cache_bytes`; an evicted file is rendered again from its spec on download, which gives
the same bytes because rendering is deterministic.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from genrelay.emulator.expiry import Deadlines
from genrelay.emulator.rendering import FileSpec, render


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One served file: where it lives, what it is, and until when it is served."""

    token: str
    name: str
    spec: FileSpec
    size: int
    expires_at: float | None

    @property
    def content_type(self) -> str:
        return self.spec.content_type

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class RenderCache:
    """Rendered bytes by spec, least recently used first out, bounded in total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[FileSpec, bytes] = OrderedDict()
        self._size = 0

    async def get(self, spec: FileSpec) -> bytes:
        data = self._items.get(spec)
        if data is not None:
            self._items.move_to_end(spec)
            return data
        # Large images take milliseconds to encode; keep them off the event loop.
        data = render(spec) if spec.cheap else await asyncio.to_thread(render, spec)
        self._put(spec, data)
        return data

    def _put(self, spec: FileSpec, data: bytes) -> None:
        if len(data) > self.max_bytes or spec in self._items:
            return
        self._items[spec] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)

    def clear(self) -> None:
        self._items.clear()
        self._size = 0


class FileStore:
    """Tokens of served files and their deadlines."""

    def __init__(self, cache_bytes: int) -> None:
        self.cache = RenderCache(cache_bytes)
        self._entries: dict[str, FileEntry] = {}
        self._deadlines: Deadlines[str] = Deadlines()

    def __len__(self) -> int:
        return len(self._entries)

    async def add(self, spec: FileSpec, name: str, lifetime_s: float | None) -> FileEntry:
        """Render `spec` (for its size) and serve it under a new token for `lifetime_s`."""
        data = await self.cache.get(spec)
        expires_at = None if lifetime_s is None else time.monotonic() + lifetime_s
        entry = FileEntry(secrets.token_urlsafe(16), name, spec, len(data), expires_at)
        self._entries[entry.token] = entry
        if expires_at is not None:
            self._deadlines.push(expires_at, entry.token)
        return entry

    def find(self, token: str, name: str) -> FileEntry | None:
        """The live entry for a download path, or None once unknown or expired."""
        entry = self._entries.get(token)
        if entry is None or entry.name != name or entry.expired(time.monotonic()):
            return None
        return entry

    async def read(self, entry: FileEntry) -> bytes:
        return await self.cache.get(entry.spec)

    def sweep(self, now: float) -> int:
        """Forget expired files; returns how many went."""
        removed = 0
        for token in self._deadlines.pop_due(now):
            if self._entries.pop(token, None) is not None:
                removed += 1
        return removed

    def clear(self) -> None:
        self._entries.clear()
        self._deadlines.clear()
        self.cache.clear()
