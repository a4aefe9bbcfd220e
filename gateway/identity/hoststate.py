"""The security state's store without Redis: one SQLite database in a private directory.

Marks (revoked session ids, used hand-off ids) are rows with an expiry, in
``<GATEWAY_STATE_DIR>/state.sqlite3``, shared by this host's workers through SQLite's own
locking (WAL mode, a busy timeout). ``private_dir`` refuses a directory another local user
could reach; ``gateway.identity.revocations`` states what happens when the store cannot answer.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import Any, Callable

from gateway import statedir
from gateway.config import ConfigError
from gateway.shared import StoreUnavailable

logger = logging.getLogger(__name__)

DB_NAME = "state.sqlite3"
# Every file SQLite may keep for it: the database, its write-ahead log and shared-memory index
# (WAL mode), and a rollback journal (none in WAL mode, but one may be left from elsewhere).
STORE_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal")
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another's lock before the store counts as unavailable
PURGE_EVERY = 64  # about one mark in this many also deletes the expired ones

_CREATE = "CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, until REAL NOT NULL)"
# One statement, so atomic without a transaction of ours: a row is written if the key is new or
# its mark has expired; rowcount then says whether it was.
_MARK = ("INSERT INTO marks (key, until) VALUES (?, ?) "
         "ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE marks.until <= ?")
_LOOKUP = "SELECT until FROM marks WHERE key = ?"
_PURGE = "DELETE FROM marks WHERE until <= ?"


def private_dir(path: str) -> str:
    """``path`` made (0700) if missing, then checked with every store file in it (gateway.statedir)."""
    return statedir.private_dir(path, STORE_FILES)


class SqliteState:
    """Per-host marks in ``<directory>/state.sqlite3`` (WAL: readers never wait for the writer).

    One connection per process, kept by the pid that opened it: gunicorn preloads the app
    in its master and forks the workers, and a connection must never cross a fork, so each
    worker opens its own on first use and never touches one it inherited. The threads of a
    process share theirs under a lock (a check holds it for a few microseconds). A check is a
    primary-key lookup, every time: no answer is remembered, so a mark written by any worker
    counts in every other at once.

    ``writes_in_thread`` (under gevent, where one OS thread runs all of a worker's requests): a
    mark is written in a native thread of its own, with a connection of its own, so a write that
    waits for another's lock (up to the busy timeout) holds only the request that asked for it.
    Checks stay where they are: in WAL mode a reader never waits for a writer.
    """

    def __init__(self, directory: str, clock: Callable[[], float] = time.time, timeout: float = BUSY_TIMEOUT,
                 writes_in_thread: bool = False):
        self.path = os.path.join(directory, DB_NAME)
        self._clock, self._timeout = clock, timeout
        self._lock = threading.Lock()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._writes_in_thread = writes_in_thread
        self._writers: dict[int, Any] = {}  # per process: a gevent ThreadPoolExecutor of one native thread
        self._write_connections: dict[int, sqlite3.Connection] = {}  # per process: that thread's own
        # Closed with the store (an app made and dropped, as the tests do) or at exit: Python
        # 3.13 warns about a connection collected unclosed.
        weakref.finalize(self, _close_own, self._connections)
        weakref.finalize(self, _close_own, self._write_connections)
        # Made here, 0600 before SQLite sees it: SQLite gives the -wal and -shm files the database
        # file's mode. O_NOFOLLOW: a symlink put here after the check is refused, not followed.
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            db = self._open()
            try:
                db.execute(_CREATE)
            finally:
                db.close()  # not kept: this may be gunicorn's master, about to fork the workers
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"GATEWAY_STATE_DIR: cannot open the revocation store {self.path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None

    def __repr__(self) -> str:
        return f"SqliteState({self.path!r})"

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened on first use. Under the lock."""
        pid = os.getpid()
        db = self._connections.get(pid)
        if db is None:
            db = self._connections[pid] = self._open()
        return db

    def mark(self, key: str, ttl: float) -> bool:
        """Record ``key`` until ``ttl`` seconds from now; False if it was already recorded."""
        now = self._clock()
        if self._writes_in_thread:
            # The greenlet waits for the thread cooperatively: the worker serves everyone else meanwhile.
            return self._writer().submit(self._write_from_thread, key, now + ttl, now).result()
        with self._lock:
            return _write(self._connection(), key, now + ttl, now)

    def _writer(self):
        pid = os.getpid()
        writer = self._writers.get(pid)
        if writer is None:  # a forked worker's first write: the parent's thread did not cross the fork
            from gevent.threadpool import ThreadPoolExecutor

            writer = self._writers[pid] = ThreadPoolExecutor(max_workers=1)
        return writer

    def _write_from_thread(self, key: str, until: float, now: float) -> bool:
        # Only the one writer thread of this process gets here: its connection needs no lock.
        pid = os.getpid()
        try:
            db = self._write_connections.get(pid)
            if db is None:
                db = self._write_connections[pid] = self._open()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return _write(db, key, until, now)

    def marked(self, key: str) -> bool:
        try:
            with self._lock:
                row = self._connection().execute(_LOOKUP, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return row is not None and row[0] > self._clock()


def _write(db: sqlite3.Connection, key: str, until: float, now: float) -> bool:
    try:
        written = db.execute(_MARK, (key, until, now)).rowcount == 1
        if written and hash(key) % PURGE_EVERY == 0:
            db.execute(_PURGE, (now,))
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
    return written


def _close_own(connections: dict[int, sqlite3.Connection]) -> None:
    # Only this process's: one inherited across a fork belongs to the parent, which closes it.
    db = connections.pop(os.getpid(), None)
    if db is not None:
        db.close()
