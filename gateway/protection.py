"""Protecting Zipteams and ourselves: rate limit, 429 back-off, circuit breaker, retries,
and a fetch shared across processes through Redis.

The order of checks for one token fetch: a 429 back-off in force refuses at
once; an open breaker refuses at once; the rate limiter admits the request or
refuses it with the wait; then the call, retried with backoff and jitter on
connection errors and 5xx inside a total deadline. Refusals never reach
Zipteams and are counted in ``gateway_zipteams_refused_total``.
"""
from __future__ import annotations

import collections
import logging
import math
import random
import threading
import time
from typing import Callable

from . import metrics
from .errors import ServiceBusy
from .shared import LOCK_SLACK, Shared
from .zipteams import (DashboardToken, ZipteamsBadRequest, ZipteamsClient, ZipteamsError, ZipteamsForbidden,
                       ZipteamsInvalidToken, ZipteamsRateLimited, ZipteamsServerError, ZipteamsTimeout,
                       ZipteamsUnreachable, parse_token)

logger = logging.getLogger(__name__)

# Answers that say Zipteams is up but will not give *this* request a token: never an outage.
CONFIGURATION_ERRORS = (ZipteamsBadRequest, ZipteamsForbidden, ZipteamsInvalidToken)
CONFIG_HINTS = {
    "zipteams_forbidden": "Zipteams refused the partner key or secret (ZIPTEAMS_API_KEY/SECRET)",
    "zipteams_bad_request": "Zipteams refused the tenant or subtenant id: check the tenants file",
    "zipteams_missing_tenant": "Zipteams says the tenant id is missing: check the tenants file",
    "zipteams_missing_subtenant": "Zipteams says the subtenant id is missing: check the tenants file",
    "zipteams_invalid_token": "Zipteams sent a token that is not for this tenant/subtenant or not a usable JWT",
}
MAX_LIMITER_WAIT = 2.0
REFRESH_RESERVE = 0.2     # share of the rate window only refreshes of tokens in use may take    # a user waits this long at most for a rate-limit slot
BACKOFF_BASE = 0.2
BACKOFF_CAP = 2.0


class ZipteamsThrottled(ServiceBusy):
    """We refused to send a token request, to stay inside Zipteams' limits."""
    code = "zipteams_throttled"


class BreakerOpen(ServiceBusy):
    """Zipteams kept failing: token requests fail fast until the cool-down ends."""
    code = "zipteams_breaker_open"
    title = "The dashboard is unavailable"
    message = "The dashboard service is failing, so we are giving it a short break."
    hint = "Try again in a minute."


# ------------------------------------------------------------------ breaker
class CircuitBreaker:
    CLOSED, HALF_OPEN, OPEN = 0, 1, 2
    NAMES = {0: "closed", 1: "half-open", 2: "open"}

    def __init__(self, failures: int, cooldown: float, *, clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[float, Callable[[], None]], None] | None = None):
        self.failures, self.cooldown, self._clock = failures, cooldown, clock
        # Runs ``job`` after ``delay`` seconds; tests may capture it instead.
        self._schedule = schedule or _timer
        self.probe: Callable[[], None] | None = None  # set by ProtectedFetch
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._count = 0
        self._opened_at = 0.0
        self._probing = False
        metrics.BREAKER_STATE.set(self.CLOSED)

    @property
    def state(self) -> int:
        with self._lock:
            if self._state == self.OPEN and self._clock() - self._opened_at >= self.cooldown:
                return self.HALF_OPEN
            return self._state

    def _set(self, state: int) -> None:
        if state != self._state:
            logger.warning("zipteams breaker %s -> %s", self.NAMES[self._state], self.NAMES[state])
        self._state = state
        metrics.BREAKER_STATE.set(state)

    def before(self) -> bool:
        """Raise BreakerOpen unless a request may go now; True if it is the half-open probe."""
        with self._lock:
            if self._state == self.CLOSED:
                return False
            waited = self._clock() - self._opened_at
            if self._state == self.OPEN and waited < self.cooldown:
                raise BreakerOpen("breaker open", retry_after=max(1, math.ceil(self.cooldown - waited)))
            if self._probing:
                raise BreakerOpen("breaker half-open, probe in flight", retry_after=1)
            self._set(self.HALF_OPEN)
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._count = 0
            self._probing = False
            self._set(self.CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._probing = False
            self._count += 1
            opened = self._state == self.HALF_OPEN or self._count >= self.failures
            if opened:
                self._opened_at = self._clock()
                self._set(self.OPEN)
        if opened and self.probe is not None:
            # Closed again by a probe of our own once the cool-down is over, not only by the
            # next user who happens to need a new token (with tokens shared, none may come).
            self._schedule(self.cooldown + 0.1, self._background_probe)

    def _background_probe(self) -> None:
        with self._lock:
            due = self._state == self.OPEN and not self._probing
        if not due:
            return
        try:
            self.probe()
        except Exception as exc:  # noqa: BLE001 - a failed probe reopens the breaker (and schedules the next)
            logger.info("background probe toward Zipteams failed (%s)", type(exc).__name__)

    def neutral(self) -> None:
        """The call said nothing about Zipteams' health (a 429): free the probe slot."""
        with self._lock:
            self._probing = False
            if self._state == self.HALF_OPEN:
                self._opened_at = self._clock() - self.cooldown  # let the next request probe


def _timer(delay: float, job: Callable[[], None]) -> None:
    timer = threading.Timer(delay, job)
    timer.daemon = True
    timer.start()


# ------------------------------------------------------------------ limiter
class RateLimiter:
    """A one-minute sliding window toward Zipteams: shared in Redis, else per process."""

    def __init__(self, per_minute: int, *, shared: Shared | None, processes: int, name: str,
                 clock: Callable[[], float] = time.time):
        self.per_minute = per_minute
        self.local_limit = max(1, per_minute // max(1, processes))
        self._shared, self._name, self._clock = shared, name, clock
        self._window: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def admit(self, refresh: bool = False) -> float:
        """0 if a request may go now (and counts it), else the seconds to wait.

        A share of the window (``REFRESH_RESERVE``) is kept for refreshes of tokens in use:
        a burst of cold requests (a restart, a new team's first visits) never starves the
        refresh that keeps every open dashboard of a team working.
        """
        if self._shared is not None:
            wait = self._shared.admit(self._name, self._limit(self.per_minute, refresh))
            if wait is not None:
                return wait
        now = self._clock()
        limit = self._limit(self.local_limit, refresh)
        with self._lock:
            while self._window and self._window[0] <= now - 60:
                self._window.popleft()
            if len(self._window) < limit:
                self._window.append(now)
                return 0.0
            return max(0.001, self._window[0] + 60 - now)

    @staticmethod
    def _limit(limit: int, refresh: bool) -> int:
        if refresh or limit < 2:
            return limit
        return max(1, limit - max(1, math.ceil(limit * REFRESH_RESERVE)))


# -------------------------------------------------------------- the fetch
class ProtectedFetch:
    """Fetches a token from Zipteams with every protection in front of it."""

    def __init__(self, client: ZipteamsClient, *, limiter: RateLimiter, breaker: CircuitBreaker,
                 retries: int, deadline: float, shared: Shared | None, name: str,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self.client, self.limiter, self.breaker = client, limiter, breaker
        self.retries, self.deadline, self._shared, self._name = retries, deadline, shared, name
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self._rng = rng or random.Random()
        self._backoff_until = 0.0

    def _refuse(self, reason: str, error: Exception) -> None:
        metrics.ZIPTEAMS_REFUSED.labels(reason).inc()
        logger.info("token request not sent reason=%s", reason)
        raise error

    def _check_backoff(self) -> None:
        until = self._backoff_until
        if self._shared is not None:
            until = max(until, self._shared.backoff_until(self._name))
        left = until - self._clock()
        if left > 0:
            self._refuse("backoff", ZipteamsThrottled("Zipteams asked us to wait", retry_after=math.ceil(left)))

    def __call__(self, tenant: str, subtenant: str, *, refresh: bool = False) -> DashboardToken:
        self._check_backoff()
        try:
            probe = self.breaker.before()
        except BreakerOpen as exc:
            self._refuse("breaker", exc)
        # A probe asks one question: is Zipteams back? It is not retried.
        retries = 0 if probe else self.retries
        started = self._monotonic()
        attempt = 0
        settled = False  # the breaker heard the outcome; otherwise the probe slot is freed below
        try:
            while True:
                wait = self.limiter.admit(refresh)
                if wait > 0:
                    if wait <= MAX_LIMITER_WAIT and self._monotonic() - started + wait < self.deadline:
                        self._sleep(wait)
                        continue
                    self._refuse("rate_limit", ZipteamsThrottled(
                        "local rate limit toward Zipteams reached", retry_after=max(1, math.ceil(wait))))
                left = self.deadline - (self._monotonic() - started)
                if left <= 0:
                    self.breaker.failure()
                    settled = True
                    raise ZipteamsTimeout(f"deadline of {self.deadline:g}s spent", tenant=tenant, subtenant=subtenant)
                try:
                    token = self.client.fetch_token(tenant, subtenant, within=left)
                except ZipteamsRateLimited as exc:
                    self._backoff_until = self._clock() + exc.retry_after
                    if self._shared is not None:
                        self._shared.set_backoff(self._name, exc.retry_after)
                    raise
                except (ZipteamsServerError, ZipteamsUnreachable) as exc:
                    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * (0.5 + self._rng.random())
                    if attempt < retries and self._monotonic() - started + delay < self.deadline:
                        attempt += 1
                        self._sleep(delay)
                        continue
                    self.breaker.failure()
                    settled = True
                    raise exc
                except CONFIGURATION_ERRORS as exc:
                    # Zipteams answered, so it is up: this subtenant (or our key) is misconfigured.
                    # Counted per subtenant, never as an outage that would fail every other team.
                    metrics.ZIPTEAMS_CONFIG_ERRORS.labels(exc.code).inc()
                    logger.error("zipteams configuration error tenant=%s subtenant=%s code=%s: %s",
                                 tenant, subtenant, exc.code, CONFIG_HINTS.get(exc.code, "check the tenants file"))
                    raise
                except ZipteamsError:
                    self.breaker.failure()  # timeouts, malformed envelopes: Zipteams is not well
                    settled = True
                    raise
                self.breaker.success()
                settled = True
                return token
        finally:
            if not settled:
                # Throttled, refused by our limiter, a configuration error, or anything unexpected:
                # nothing learned about Zipteams' health, but the half-open probe slot is freed.
                self.breaker.neutral()


class SharedLoader:
    """One fetch per (tenant, subtenant) across every process that shares the Redis.

    The first process to miss takes a short Redis lock and fetches; the others
    wait for its token to appear in Redis. Without Redis (or while it is down)
    every process fetches for itself, still one fetch per process.
    """

    def __init__(self, fetch: Callable[..., DashboardToken], shared: Shared | None, *,
                 margin: Callable[[DashboardToken], float], deadline: float = 20.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, poll: float = 0.05):
        self._fetch, self._shared, self._serve_until = fetch, shared, margin
        self._deadline = deadline
        self._clock, self._monotonic, self._sleep, self._poll = clock, monotonic, sleep, poll

    def _from_shared(self, tenant: str, subtenant: str, stale: DashboardToken | None) -> DashboardToken | None:
        value = self._shared.get_token(tenant, subtenant)
        if value is None or (stale is not None and value == stale.value):
            return None
        try:
            token = parse_token(value, tenant, subtenant, self._clock())
        except ZipteamsError:
            return None
        if self._serve_until(token) <= self._clock():
            return None
        if stale is not None and token.expires_at <= stale.expires_at:
            return None
        metrics.TOKEN_CACHE.labels("shared_hit").inc()
        return token

    def _fetch_and_share(self, tenant: str, subtenant: str, refresh: bool) -> DashboardToken:
        token = self._get(tenant, subtenant, refresh)
        self._shared.put_token(tenant, subtenant, token.value, self._serve_until(token))
        return token

    def __call__(self, tenant: str, subtenant: str, stale: DashboardToken | None = None) -> DashboardToken:
        shared = self._shared
        refresh = stale is not None
        if shared is None or not shared.available:
            return self._get(tenant, subtenant, refresh)
        token = self._from_shared(tenant, subtenant, stale)
        if token is not None:
            return token
        # The deadline covers the wait for another process's fetch as well as our own fetch.
        give_up = self._monotonic() + self._deadline
        while True:
            ident = shared.acquire(tenant, subtenant, self._deadline + LOCK_SLACK)
            if ident is not None:
                try:
                    # Someone may have finished between our look and our lock.
                    return self._from_shared(tenant, subtenant, stale) or \
                        self._fetch_and_share(tenant, subtenant, refresh)
                finally:
                    shared.release(tenant, subtenant, ident)
            if not shared.available:
                return self._get(tenant, subtenant, refresh)
            self._sleep(self._poll)
            token = self._from_shared(tenant, subtenant, stale)
            if token is not None:
                return token
            if self._monotonic() > give_up:
                # A live holder is still fetching: never start a second fetch beside it.
                logger.warning("waited %gs for another process's token fetch tenant=%s subtenant=%s",
                               self._deadline, tenant, subtenant)
                raise ZipteamsTimeout(f"another process's fetch took longer than {self._deadline:g}s",
                                      tenant=tenant, subtenant=subtenant)

    def _get(self, tenant: str, subtenant: str, refresh: bool) -> DashboardToken:
        return self._fetch(tenant, subtenant, refresh=refresh)

    def forget(self, tenant: str, subtenant: str, token: DashboardToken) -> None:
        if self._shared is not None:
            self._shared.delete_token(tenant, subtenant, token.value)
