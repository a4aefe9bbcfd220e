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
import stat
import threading
import time
import weakref
from typing import Callable

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
    """``path`` made (0700) if missing, then checked with every store file in it; returns it.

    Raises ConfigError (one line naming GATEWAY_STATE_DIR) if the directory or a store file is a
    symlink, not what it should be (a directory, regular files), owned by another user, or open to
    group or others in any way: another local user could then delete or forge marks, or lock the
    shared-memory file (a read lock needs only read access) so that no logout is recorded. Also if
    another user could move the directory (or one above it) away and put one of theirs in its place:
    every directory above it must be root's or the gateway's user's, and writable by no one else
    unless sticky (as /tmp is).
    """
    path = os.path.abspath(path)
    _refuse_if_others_can_move(path)  # before anything is made in it
    try:
        os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path, 0o700)
        except FileExistsError:
            pass  # made meanwhile, perhaps by someone else: checked below like any other
        except OSError as exc:
            raise ConfigError(f"GATEWAY_STATE_DIR: cannot create {path}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise ConfigError(f"GATEWAY_STATE_DIR: cannot read {path}: {exc.strerror or exc}") from None
    _refuse_unless_private(path, directory=True)
    _refuse_if_others_can_move(path)
    for name in STORE_FILES:
        _refuse_unless_private(os.path.join(path, name), directory=False)
    return path


def _refuse_unless_private(path: str, *, directory: bool) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if directory:
            raise ConfigError(f"GATEWAY_STATE_DIR: {path} vanished while it was being checked") from None
        return  # a store file not made yet: made 0600 by SqliteState
    except OSError as exc:
        raise ConfigError(f"GATEWAY_STATE_DIR: cannot read {path}: {exc.strerror or exc}") from None
    what, mode = ("directory", "0700") if directory else ("store file", "0600")
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symlink"
    elif directory and not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif not directory and not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"is owned by uid {info.st_uid}, not by the gateway's user (uid {os.geteuid()})"
    elif info.st_mode & 0o077:
        problem = f"is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}; it must be {mode})"
    else:
        return
    raise ConfigError(f"GATEWAY_STATE_DIR: the {what} {path} {problem}; the revocation store needs a "
                      f"directory only the gateway's user can reach (mode 700, files 600): fix it, or remove "
                      f"it and the gateway makes it")


def _refuse_if_others_can_move(path: str) -> None:
    # Every directory above it, not only the parent: whoever may rename any of them can put a
    # tree of their own at the same path for the next worker to open (a grandparent owned by
    # another user is enough).
    parent = os.path.dirname(path)
    while True:
        _refuse_if_others_can_replace_in(parent, path)
        above = os.path.dirname(parent)
        if above == parent:
            return
        parent = above


def _refuse_if_others_can_replace_in(parent: str, path: str) -> None:
    try:
        info = os.stat(parent)
    except FileNotFoundError:
        return  # made by makedirs, then checked again
    except OSError as exc:
        raise ConfigError(f"GATEWAY_STATE_DIR: cannot read {parent}: {exc.strerror or exc}") from None
    if info.st_uid not in (0, os.geteuid()):
        problem = f"is owned by uid {info.st_uid}, who could replace the directory"
    elif info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        problem = f"lets other users replace the directory (mode {stat.S_IMODE(info.st_mode):04o}, not sticky)"
    else:
        return
    raise ConfigError(f"GATEWAY_STATE_DIR: the directory {parent} above {path} {problem}; "
                      "choose a directory whose parents only root or the gateway's user can write to")


class SqliteState:
    """Per-host marks in ``<directory>/state.sqlite3`` (WAL: readers never wait for the writer).

    One connection per process, kept by the pid that opened it: gunicorn preloads the app
    in its master and forks the workers, and a connection must never cross a fork, so each
    worker opens its own on first use and never touches one it inherited. The threads of a
    process share theirs under a lock (a check holds it for a few microseconds). A check is a
    primary-key lookup, every time: no answer is remembered, so a mark written by any worker
    counts in every other at once.
    """

    def __init__(self, directory: str, clock: Callable[[], float] = time.time, timeout: float = BUSY_TIMEOUT):
        self.path = os.path.join(directory, DB_NAME)
        self._clock, self._timeout = clock, timeout
        self._lock = threading.Lock()
        self._connections: dict[int, sqlite3.Connection] = {}
        # Closed with the store (an app made and dropped, as the tests do) or at exit: Python
        # 3.13 warns about a connection collected unclosed.
        weakref.finalize(self, _close_own, self._connections)
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
        try:
            with self._lock:
                db = self._connection()
                written = db.execute(_MARK, (key, now + ttl, now)).rowcount == 1
                if written and hash(key) % PURGE_EVERY == 0:
                    db.execute(_PURGE, (now,))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return written

    def marked(self, key: str) -> bool:
        try:
            with self._lock:
                row = self._connection().execute(_LOOKUP, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return row is not None and row[0] > self._clock()


def _close_own(connections: dict[int, sqlite3.Connection]) -> None:
    # Only this process's: one inherited across a fork belongs to the parent, which closes it.
    db = connections.pop(os.getpid(), None)
    if db is not None:
        db.close()
