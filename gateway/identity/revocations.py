"""Security state every worker must agree on: revoked sessions and used hand-off ids.

A signed cookie stays valid until it expires, so logging out must also record
the session id as revoked where every worker looks; a hand-off JWT's ``jti``
must be usable once across all workers. With Redis configured that is Redis
(``gateway.shared``'s one client, shared by every instance); otherwise an SQLite file on this host
(``GATEWAY_STATE_DB``), which every worker of this instance shares. What happens
when the store is down or silent is stated per use in ``SecurityState``.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import sqlite3
import struct
import tempfile
import threading
import time
from typing import Callable

from gateway.errors import GatewayError
from gateway.memo import Memo
from gateway.ops import metrics
# The one back-off policy for every call to the store, and the one "could not say" error.
from gateway.shared import LOG_EVERY, RETRY_AFTER_ERROR, StoreUnavailable

logger = logging.getLogger(__name__)

ANSWERS = 16384  # revocation answers remembered per process, while nothing new was marked
CHECK_SECONDS = 1.0  # how often the counter file's identity and SQLite's own change count are read


class ChangeCounter:
    """How many marks were written to the SQLite file: 8 bytes of a small file every process
    of this host maps shared (``<db>.changes``, next to the database's real path). Reading it
    is a memory read, no system call; once a second a reader checks that the file at that
    path is still the one it maps (a temp cleaner may have removed it), and maps it again.
    ``read`` answers (how many times it was mapped, the count), so a new file that happens
    to hold the old count still reads as a change."""

    def __init__(self, path: str, monotonic: Callable[[], float] = time.monotonic):
        self.path = path
        self._monotonic = monotonic
        self._checked_at = float("-inf")
        self._inode = None
        self._map = None
        self._mapped = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
            self._inode = os.fstat(fd).st_ino
            self._mapped += 1
        finally:
            os.close(fd)

    def _still_ours(self) -> None:
        now = self._monotonic()
        if now - self._checked_at < CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            same = os.stat(self.path).st_ino == self._inode
        except OSError:
            same = False
        if not same:
            self._open()

    def read(self) -> tuple[int, int]:
        self._still_ours()
        return self._mapped, struct.unpack_from("<Q", self._map, 0)[0]

    def bump(self) -> None:
        self._checked_at = float("-inf")
        self._still_ours()
        with open(self.path, "rb+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # writers are rare (logout, hand-off): a file lock is plenty
            try:
                struct.pack_into("<Q", self._map, 0, struct.unpack_from("<Q", self._map, 0)[0] + 1)
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
      older instance on the same file) moves SQLite's own ``PRAGMA data_version``, which is
      read once every ``CHECK_SECONDS``: such a write is seen within that.

    The answers carry no time limit of their own: a returning user is asked about less
    often than once a second, and an answer that expired every second was never used.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.path = path
        self._clock, self._monotonic = clock, monotonic
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        self._changes = ChangeCounter(os.path.realpath(path) + ".changes", monotonic)
        self._answers: tuple[tuple, Memo] = ((), self._memo())  # (the versions they hold for, answers)
        self._data_version: tuple[float, int] = (float("-inf"), -1)  # (read at, value)
        with self._lock:
            db = self._connect()
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, until REAL NOT NULL)")

    def __repr__(self) -> str:
        return f"SqliteState({self.path!r})"

    def _memo(self) -> Memo:
        return Memo(ANSWERS)

    def _written_elsewhere(self) -> int:
        """SQLite's count of commits by other connections, read at most every CHECK_SECONDS."""
        read_at, value = self._data_version
        now = self._monotonic()
        if now - read_at >= CHECK_SECONDS:
            with self._lock:
                value = self._connect().execute("PRAGMA data_version").fetchone()[0]
            self._data_version = (now, value)
        return value

    def _connect(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self._db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            self._pid = os.getpid()
            self._data_version = (float("-inf"), -1)  # a new connection counts from its own start
        return self._db

    def mark(self, key: str, ttl: float) -> bool:
        """Record ``key`` until ``ttl`` seconds from now; False if it was already recorded."""
        now = self._clock()
        with self._lock:
            db = self._connect()
            try:
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
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise StoreUnavailable(str(exc)) from None
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
            version = (self._changes.read(), self._written_elsewhere())
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from None
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
            answers[1].put(key, until)
        return until > self._clock()


class HandoffUnverifiable(GatewayError):
    status_code = 503
    code = "handoff_unverifiable"
    title = "This sign-in link cannot be checked right now"
    message = "We could not make sure that this sign-in link is used only once, so it was not used."
    hint = "Go back to the page you came from and open the dashboard again in a minute."


class SecurityState:
    """Revocations and single-use ids, with one stated policy each for a store that is down or silent.

    - Revocation check: fails open. "Store unavailable" is never "revoked": a Redis
      outage must not sign every user out. The trade-off: during an outage a copied
      cookie of a signed-out session is accepted until the store answers again (the
      session's idle and absolute limits still hold).
    - Recording a revocation: best effort, logged when it could not be recorded.
    - Single use of a hand-off id: fails closed, with a plain 503 page (HandoffUnverifiable),
      not a 401 that looks like an attack.
    After a failure the store is not asked again for ``retry_after`` seconds (a silent
    Redis costs one time-out per window, not one per request), and it is logged at most
    once a minute.
    """

    def __init__(self, backend, *, retry_after: float = RETRY_AFTER_ERROR, log_every: float = LOG_EVERY,
                 monotonic: Callable[[], float] = time.monotonic):
        self.backend = backend
        self._retry_after, self._log_every, self._monotonic = retry_after, log_every, monotonic
        self._down_until = 0.0
        self._logged_at = float("-inf")
        self._lock = threading.Lock()

    def _up(self) -> bool:
        return self._monotonic() >= self._down_until

    def _unavailable(self, use: str, exc: Exception | None, consequence: str) -> None:
        metrics.STATE_UNAVAILABLE.labels(use).inc()
        now = self._monotonic()
        with self._lock:
            if exc is not None:
                self._down_until = now + self._retry_after
            log = now - self._logged_at >= self._log_every
            if log:
                self._logged_at = now
        if log:
            logger.error("security state store unavailable (%s): %s; retried every %gs, logged once a minute",
                         exc or "backing off", consequence, self._retry_after)

    def revoke_session(self, sid: str, ttl: float) -> None:
        consequence = ("a logout could not be recorded: the cookie is cleared in this browser, but a copy "
                       "could be replayed until it expires")
        if not self._up():
            return self._unavailable("revoke", None, consequence)
        try:
            self.backend.mark("sid:" + sid, ttl)
        except StoreUnavailable as exc:
            self._unavailable("revoke", exc, consequence)

    def session_revoked(self, sid: str) -> bool:
        consequence = "sessions are accepted without the revocation check until it answers"
        if not self._up():
            self._unavailable("revocation_check", None, consequence)
            return False
        try:
            return self.backend.marked("sid:" + sid)
        except StoreUnavailable as exc:
            self._unavailable("revocation_check", exc, consequence)
            return False

    def use_once(self, ident: str, ttl: float) -> bool:
        """True the first time ``ident`` is seen (within ``ttl``), False on every replay.

        Raises HandoffUnverifiable when the store cannot say.
        """
        consequence = "hand-offs are refused with a 503 page until it answers"
        if not self._up():
            self._unavailable("single_use", None, consequence)
            raise HandoffUnverifiable("single-use store unavailable")
        try:
            return self.backend.mark("jti:" + ident, ttl)
        except StoreUnavailable as exc:
            self._unavailable("single_use", exc, consequence)
            raise HandoffUnverifiable("single-use store unavailable") from None


def default_db_path(secret_key: str) -> str:
    """A per-deployment file in the temp directory (the same for every worker of it)."""
    tag = hashlib.sha256(secret_key.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"zipteams-gateway-{tag}.sqlite3")


def init_app(app) -> None:
    cfg = app.config
    backend = app.extensions["shared"]  # gateway.shared: the one Redis client, when there is one
    if backend is None:
        backend = SqliteState(cfg["GATEWAY_STATE_DB"] or default_db_path(cfg["GATEWAY_SECRET_KEY"]),
                              clock=cfg.get("CLOCK", time.time))
    app.extensions["state"] = SecurityState(backend)
