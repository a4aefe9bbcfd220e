"""Security state every worker must agree on: revoked sessions and used hand-off ids.

A signed cookie stays valid until it expires, so logging out must also record
the session id as revoked where every worker looks; a hand-off JWT's ``jti``
must be usable once across all workers. With Redis configured that is Redis
(``gateway.shared``'s one client, shared by every instance); otherwise an SQLite database in a
private directory on this host (``GATEWAY_STATE_DIR``, ``gateway.identity.hoststate``), which every
worker of this instance shares. What happens when the store is down or silent is stated per use
in ``SecurityState``.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

from gateway import bounded, statedir
from gateway.errors import GatewayError
from gateway.identity.hoststate import SqliteState, private_dir
from gateway.ops import metrics
# The one back-off policy for every call to the store, and the one "could not say" error.
from gateway.shared import LOG_EVERY, RETRY_AFTER_ERROR, StoreUnavailable

logger = logging.getLogger(__name__)


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
      not a 401 that looks like an attack, whose Retry-After is the time left until the
      store is asked again.
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

    def _unverifiable(self) -> HandoffUnverifiable:
        wait = max(1, math.ceil(self._down_until - self._monotonic()))
        return HandoffUnverifiable("single-use store unavailable", retry_after=wait)

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
            raise self._unverifiable()
        try:
            return self.backend.mark("jti:" + ident, ttl)
        except StoreUnavailable as exc:
            self._unavailable("single_use", exc, consequence)
            raise self._unverifiable() from None


def init_app(app) -> None:
    cfg = app.config
    backend = app.extensions["shared"]  # gateway.shared: the one Redis client, when there is one
    if backend is None:
        # Only without Redis: with it, the directory is neither made nor checked.
        directory = private_dir(statedir.state_dir(cfg["GATEWAY_STATE_DIR"]))
        backend = SqliteState(directory, clock=cfg.get("CLOCK", time.time), writes_in_thread=bounded.under_gevent())
    app.extensions["state"] = SecurityState(backend)
