"""The security state's store without Redis: one SQLite file per host, shared by its workers.

Marks (revoked session ids, used hand-off ids) are rows with an expiry. Every worker of
the host reads and writes the same file; each remembers its answers while nothing was
written, which a change counter next to the file (and SQLite's own change count) tells.
``gateway.identity.revocations`` states what happens when this store cannot answer.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
from typing import Callable

from gateway.memo import Memo
from gateway.shared import LOG_EVERY, StoreUnavailable

logger = logging.getLogger(__name__)

ANSWERS = 16384  # revocation answers remembered per process, while nothing new was marked
CHECK_SECONDS = 1.0  # how often the counter file's identity and SQLite's own change count are read


class ChangeCounter:
    """How many marks were written to the SQLite file: 8 bytes of a small file next to the
    database (``<db>.changes``). Reading it is one ``pread`` (a memory map of it would fault
    and kill the worker if the file were truncated); once a second a reader checks that the
    file at that path is still the one it has open (a temp cleaner may have removed it), and
    opens it again. ``read`` answers (how many times it was opened, the count), so a new
    file that happens to hold the old count, or a short one, still reads as a change."""

    def __init__(self, path: str, monotonic: Callable[[], float] = time.monotonic):
        self.path = path
        self._monotonic = monotonic
        self._checked_at = float("-inf")
        self._fd = -1
        self._retired = -1
        self._inode = None
        self._opened = 0
        self._why = ""  # why it could not be opened, while it cannot
        self._lock = threading.Lock()  # for opening again only (once a second at most), never for a read
        with self._lock:
            self._reopen()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # The descriptor it replaces stays open until the next replacement (a second at least):
        # a reading thread may hold its number, and closing it at once could let another file
        # take that number mid-read. The one before that is closed: no leak, however often.
        if self._retired >= 0:
            os.close(self._retired)
        self._retired = self._fd
        self._inode, self._fd = os.fstat(fd).st_ino, fd
        self._opened += 1

    def _still_ours(self) -> None:
        if self._monotonic() - self._checked_at < CHECK_SECONDS:
            return
        with self._lock:  # two threads opening at once would close one descriptor twice
            now = self._monotonic()
            if now - self._checked_at < CHECK_SECONDS:
                return
            self._checked_at = now
            try:
                same = os.stat(self.path).st_ino == self._inode
            except OSError:
                same = False
            if not same:
                self._reopen()

    def _reopen(self) -> None:
        try:
            self._open()
            self._why = ""
        except OSError as exc:
            self._inode = None  # stays so, and reads fail, until it could be opened again
            self._why = f"{type(exc).__name__}: {exc.strerror or exc}"

    def read(self) -> tuple[int, int]:
        self._still_ours()
        if self._inode is None:
            raise OSError(f"it could not be opened ({self._why})")
        data = os.pread(self._fd, 8, 0)
        return self._opened, struct.unpack("<Q", data)[0] if len(data) == 8 else -1

    def bump(self) -> None:
        self._checked_at = float("-inf")
        self._still_ours()  # then the file at the path, however it stands, is the one moved
        # Its own open file, for the lock: a worker's inherited descriptor shares its lock with the master's.
        with open(self.path, "rb+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # writers are rare (logout, hand-off): a file lock is plenty
            try:
                data = os.pread(fh.fileno(), 8, 0)
                count = struct.unpack("<Q", data)[0] if len(data) == 8 else 0
                os.pwrite(fh.fileno(), struct.pack("<Q", (count + 1) & 0xFFFFFFFFFFFFFFFF), 0)  # wraps, never fails
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class SqliteState:
    """Per-host marks in one SQLite file (WAL: many readers, one writer at a time).

    One connection per process (a forked worker opens its own), used under a lock. Every
    signed-in request asks whether its session was revoked, and marks are written only on
    logout and hand-off; under load the read (and taking the lock and the interpreter lock
    back after it) was a quarter of a returning user's request. So answers are remembered
    in a ``Memo`` for as long as nothing was written to the file:

    - any mark written by a process of this host moves the change counter, and the next
      check (in any process) asks SQLite again;
    - a write the counter missed (its file removed, or a writer that does not move it: an
      older instance on the same file) moves SQLite's own ``PRAGMA data_version``, read
      once every ``CHECK_SECONDS``;
    - at the same check, a database file (or its shared-memory index, ``-shm``) that was
      removed, replaced or made anew is opened again: a connection keeps the file it
      opened and would never see what is written to the new one.

    So such a write is seen within ``CHECK_SECONDS``. The answers carry no time limit of
    their own: a returning user is asked about less often than once a second, and an
    answer that expired every second was never used.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        # Resolved once (in gunicorn's master, the app being preloaded), so that every worker
        # opens the same file even if a symlink on the way is pointed elsewhere later.
        self.path = os.path.realpath(path)
        self._clock, self._monotonic = clock, monotonic
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        self._opened = 0  # connections made by this object: a new one is a new view of the file
        self._identity: tuple = ()
        self._counter_logged_at = float("-inf")
        self._changes = ChangeCounter(self.path + ".changes", monotonic)
        self._answers: tuple[tuple, Memo] = ((), self._memo())  # (the versions they hold for, answers)
        self._version: tuple[float, tuple] = (float("-inf"), ())  # (checked at, (connection, data_version))
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        return f"SqliteState({self.path!r})"

    def _memo(self) -> Memo:
        return Memo(ANSWERS)

    def _files(self) -> tuple:
        found = []
        for name in (self.path, self.path + "-shm"):
            try:
                info = os.stat(name)
                found.append((info.st_dev, info.st_ino))
            except OSError:
                found.append(None)
        return tuple(found)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            # On every connection, not once: the file may be new (removed, or a fresh worker's).
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, until REAL NOT NULL)")
            self._db, self._pid = db, os.getpid()
            self._identity = self._files()
            self._opened += 1
            self._version = (float("-inf"), ())
        return self._db

    def _db_version(self) -> tuple:
        """Which view of the file this process has, and SQLite's count of commits by other
        connections; both checked at most every CHECK_SECONDS."""
        checked_at, version = self._version
        now = self._monotonic()
        if now - checked_at >= CHECK_SECONDS:
            with self._lock:
                db = self._current()
                version = (self._opened, db.execute("PRAGMA data_version").fetchone()[0])
            self._version = (now, version)
        return version

    def _current(self) -> sqlite3.Connection:
        """The connection, opened again if the file (or its -shm) is not the one it has open. Under the lock."""
        db = self._connect()
        if self._files() != self._identity:
            logger.warning("revocation store %s was removed or replaced; opened again", self.path)
            db.close()
            self._db = None
            db = self._connect()
        return db

    def mark(self, key: str, ttl: float) -> bool:
        """Record ``key`` until ``ttl`` seconds from now; False if it was already recorded."""
        now = self._clock()
        with self._lock:
            # Written to the file at the path, not one removed since the last check: a logout
            # written to a removed file would be lost. If it goes while we write, write again.
            for _ in range(3):
                db = None
                try:
                    db = self._current()
                    db.execute("BEGIN IMMEDIATE")
                    row = db.execute("SELECT until FROM marks WHERE key = ?", (key,)).fetchone()
                    if row is not None and row[0] > now:
                        db.execute("COMMIT")
                        return False
                    db.execute("INSERT OR REPLACE INTO marks (key, until) VALUES (?, ?)", (key, now + ttl))
                    if hash(key) % 64 == 0:  # now and then, forget what has expired
                        db.execute("DELETE FROM marks WHERE until <= ?", (now,))
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    try:
                        if db is not None:
                            db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    raise StoreUnavailable(str(exc)) from None
                if self._files() == self._identity:
                    break
        # Our own commits do not move our connection's data_version: forget here, whatever the counter does.
        self._answers = ((), self._memo())
        try:
            self._changes.bump()
        except OSError as exc:  # recorded all the same: other processes see it within CHECK_SECONDS
            logger.warning("revocation change counter %s could not be moved (%s)", self._changes.path,
                           type(exc).__name__)
        return True

    def marked(self, key: str) -> bool:
        # The versions are read before SQLite is: a mark committed after they were read moves
        # them, and an answer given before that commit is then never used again.
        try:
            counted = self._changes.read()
        except OSError as exc:
            # The counter only saves SQLite reads: without it every check asks SQLite.
            self._counter_failed(exc)
            counted = None
        try:
            version = (counted, self._db_version())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        answers = self._answers
        if answers[0] != version:
            answers = self._answers = (version, self._memo())
        until = answers[1].get(key)
        if until is None:
            try:
                with self._lock:
                    row = self._connect().execute("SELECT until FROM marks WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from None
            until = row[0] if row is not None else 0.0
            if counted is not None:  # without the counter, no answer may be kept
                answers[1].put(key, until)
        return until > self._clock()

    def _counter_failed(self, exc: OSError) -> None:
        now = self._monotonic()
        if now - self._counter_logged_at >= LOG_EVERY:
            self._counter_logged_at = now
            logger.warning("revocation change counter %s cannot be read: %s; every check asks SQLite "
                           "until it can; logged once a minute", self._changes.path, exc)
