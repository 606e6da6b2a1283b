"""The local state store of one owned ledger partition: an SQLite file beside the replica.

It holds every finished key of the partition (the bulk of a dedup window), so memory holds
only open keys. The ledger topic stays the truth; the store is a cache of it, the way Kafka
Streams keeps a local store per task with a checkpoint of the changelog offset it reflects:

- the checkpoint is written only when the partition is let go cleanly (revoked, shut down),
  together with the open keys, and removed as soon as the partition is owned again, so a
  crash never leaves a checkpoint behind a store that may be ahead of or behind it;
- a replica that owns the partition again reads only the ledger from the checkpoint on;
  without a checkpoint (first start, a crash, another machine) it rebuilds from the topic.

SQLite from the standard library: point lookups and batched upserts of a few microseconds,
one file per partition, nothing to install or run.

A rebuild writes a fresh file by appending, with no index (B-tree inserts at random keys
thrash SQLite's page cache: 1,000,000 keys took 15 s that way, 2.5 s appended), then sorts
once to build the indexes and turns the write-ahead log on (`settle`). A crash in between
leaves a file without a checkpoint, which is thrown away like any store without one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import NamedTuple, TypeVar

# The files SQLite keeps beside a store in write-ahead-log mode.
_SIDE_FILES = ("-wal", "-shm", "-journal")
# A checkpoint older than this is not trusted: compaction may since have removed tombstones
# (after the topic's delete.retention.ms, a day by default) that the store would miss.
CHECKPOINT_MAX_AGE_SECONDS = 12 * 3600

# The layout this code writes (`PRAGMA user_version`); a store of another one is rebuilt.
_FORMAT = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key TEXT NOT NULL,
    updated REAL NOT NULL,   -- the state's updated_at (epoch seconds), for the dedup window
    finished INTEGER NOT NULL,
    value BLOB NOT NULL      -- the ledger record as written to the topic
);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    written REAL NOT NULL
);
"""
# Keys tombstoned while rebuilding, each with the last row it removes (rows are appended).
_GONE = "CREATE TABLE gone (key TEXT NOT NULL, through INTEGER NOT NULL)"
# Built after a rebuild's rows are in: one sort each instead of a B-tree insert per row.
_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS keys_by_key ON keys (key)"
_UPDATED_INDEX = "CREATE INDEX IF NOT EXISTS keys_by_updated ON keys (finished, updated)"
# SQLite's page cache per store, while rebuilding and after (its default, 2 MB).
_REBUILD_CACHE_KB = 16 * 1024
_CACHE_KB = 2_000
_Item = TypeVar("_Item")
# Rows bound to one statement at most (SQLite binds up to 32,766 parameters since 3.32).
_MOST_ROWS_PER_STATEMENT = 5_000


@dataclass(frozen=True)
class Checkpoint:
    """The store reflects the partition's committed records before `next_offset`."""

    next_offset: int
    written: float


class StoredState(NamedTuple):
    """One key's state as a row (a tuple: the store binds it as it is)."""

    key: str
    updated: float
    finished: bool
    value: bytes


class PartitionStore:
    """One partition's store; `open()` it, `close()` it, and checkpoint on a clean release."""

    def __init__(self, path: Path, topic: str, partition: int) -> None:
        self.path = path
        self._topic = topic
        self._partition = partition
        self._db: sqlite3.Connection | None = None
        self._rebuilding = False

    def open(self) -> Checkpoint | None:
        """Open the store and take its checkpoint (which is removed: the store is now live).

        None means there is nothing to trust: the store is now empty and being rebuilt from
        the topic (`settle` it once the rebuild is done).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect(rebuilding=False)
            row: tuple[str, int, int, float] | None = None
            if self.db.execute("PRAGMA user_version").fetchone()[0] == _FORMAT:
                row = self.db.execute(
                    "SELECT topic, partition, next_offset, written FROM checkpoint WHERE id = 1"
                ).fetchone()
                self.db.execute("DELETE FROM checkpoint")
        except sqlite3.DatabaseError:
            row = None  # a file a crash left half-written: rebuilt like any store
        if row is not None and self._trusted(topic=row[0], partition=row[1], written=row[3]):
            return Checkpoint(row[2], row[3])
        self.clear()
        return None

    def _trusted(self, *, topic: str, partition: int, written: float) -> bool:
        fresh = time.time() - written < CHECKPOINT_MAX_AGE_SECONDS
        return fresh and (topic, partition) == (self._topic, self._partition)

    def clear(self) -> None:
        """Empty the store for a rebuild: a fresh file, appended to without an index."""
        self.close()
        for stale in (self.path, *(self.path.with_name(self.path.name + x) for x in _SIDE_FILES)):
            stale.unlink(missing_ok=True)
        self._db = self._connect(rebuilding=True)
        self.db.executescript(_SCHEMA)
        self.db.execute(_GONE)
        self._rebuilding = True

    def settle(self) -> None:
        """After a rebuild: index the rows, keep each key's last state, journal again.

        Blocking for about a second per 1,000,000 keys, mostly without the GIL (each index is
        one statement): run it on a thread.
        """
        if not self._rebuilding:
            return
        try:
            self.db.execute(_KEY_INDEX)
        except sqlite3.IntegrityError:
            # A key that finished more than once while being rebuilt: its last row stands.
            self.db.execute(
                "DELETE FROM keys WHERE rowid NOT IN (SELECT max(rowid) FROM keys GROUP BY key)"
            )
            self.db.execute(_KEY_INDEX)
        self.db.execute(
            "DELETE FROM keys WHERE rowid IN (SELECT keys.rowid FROM gone"
            " JOIN keys ON keys.key = gone.key AND keys.rowid <= gone.through)"
        )
        self.db.execute("DROP TABLE gone")
        self.db.execute(_UPDATED_INDEX)
        self.db.execute(f"PRAGMA user_version={_FORMAT}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA cache_size=-{_CACHE_KB}")
        self._rebuilding = False

    def _connect(self, *, rebuilding: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # A row carries a whole ledger state (a few KB): seven fit a 16 KB page. Larger
            # pages rebuild no faster and make each commit's write-ahead log bigger (a
            # finished key's write took 100 µs on 64 KB pages, 40 µs on 16 KB ones).
            db.execute("PRAGMA page_size=16384")
            # The topic is the truth: a store lost with the machine is rebuilt, so no fsync
            # waits; while rebuilding, the journal only undoes a failed statement (`settle`).
            db.execute(f"PRAGMA journal_mode={'MEMORY' if rebuilding else 'WAL'}")
            db.execute(f"PRAGMA synchronous={'OFF' if rebuilding else 'NORMAL'}")
            if rebuilding:
                # A statement's pages fit (2,000 states): none is written out early and again.
                db.execute(f"PRAGMA cache_size=-{_REBUILD_CACHE_KB}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the state store {self.path} is not open")
        return self._db

    def put_many(self, states: Iterable[StoredState]) -> None:
        self.replace((), states)

    def delete_many(self, keys: Iterable[str]) -> None:
        self.replace(keys, ())

    def replace(self, deleted: Iterable[str], states: Iterable[StoredState]) -> None:
        """Delete `deleted`, then write `states`, in one transaction (none if both are empty)."""
        gone = list(deleted)
        rows = list(states)
        if self._rebuilding:
            self._append(gone, rows)
            return
        if not gone and not rows:
            return
        with self._transaction():
            for chunk in self._chunks(gone, width=1):
                marks = ", ".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM keys WHERE key IN ({marks})", chunk)
            self._insert("INSERT OR REPLACE INTO keys", rows)

    def _append(self, gone: list[str], rows: list[StoredState]) -> None:
        # Rebuilding: rows only go at the end (`settle` sorts them out). A tombstone removes
        # the key's rows so far; a later state of the key is a later row. No transactions: a
        # store left half-written has no checkpoint and is rebuilt, and each statement is one
        # wait for the GIL on a thread.
        if gone:
            through = self.db.execute("SELECT coalesce(max(rowid), 0) FROM keys").fetchone()[0]
            self._insert("INSERT INTO gone", [(key, through) for key in gone])
        self._insert("INSERT INTO keys", rows)

    def _insert(self, into: str, rows: Sequence[tuple[object, ...]]) -> None:
        """As many rows per statement as SQLite binds: it runs a statement without the GIL,
        and `executemany` would take the GIL back for every row (on a thread, each time a
        wait for a busy event loop to let it go)."""
        if not rows:
            return
        width = len(rows[0])
        for chunk in self._chunks(rows, width=width):
            values = ", ".join([f"({', '.join('?' * width)})"] * len(chunk))
            self.db.execute(f"{into} VALUES {values}", list(chain.from_iterable(chunk)))

    def _chunks(self, rows: Sequence[_Item], *, width: int) -> Iterator[Sequence[_Item]]:
        """Slices of as many rows of `width` values as one statement binds: whole ones first,
        so that their statement's text repeats and is prepared once (`sqlite3` caches it)."""
        limit = self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        size = max(1, min(_MOST_ROWS_PER_STATEMENT, limit // width))
        for start in range(0, len(rows), size):
            yield rows[start : start + size]

    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM keys WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def open_states(self) -> Iterator[bytes]:
        """The states of keys that were still open when the store was checkpointed."""
        for (value,) in self.db.execute("SELECT value FROM keys WHERE finished = 0"):
            yield bytes(value)

    def finished_before(self, updated: float, limit: int = 10_000) -> list[str]:
        """Finished keys last changed before `updated` (epoch seconds)."""
        rows = self.db.execute(
            "SELECT key FROM keys WHERE finished = 1 AND updated < ? LIMIT ?", (updated, limit)
        )
        return [key for (key,) in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM keys").fetchone()[0])

    def checkpoint(self, next_offset: int) -> None:
        """Record that the store reflects every committed record before `next_offset`."""
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO checkpoint VALUES (1, ?, ?, ?, ?)",
                (self._topic, self._partition, next_offset, time.time()),
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
