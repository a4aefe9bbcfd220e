"""Protecting Zipteams and ourselves: rate budget, 429 back-off, circuit breaker, retries,
a cap on threads waiting for Zipteams, and a fetch shared across processes through Redis.

The order of checks for one token fetch: a 429 back-off in force refuses at
once; an open breaker refuses at once; the rate limiter admits the request or
refuses it with the wait; then the call, retried with backoff and jitter on
connection errors and 5xx inside a total deadline. Refusals never reach
Zipteams and are counted in ``gateway_zipteams_refused_total``. The breaker,
the back-off and the rate window are the instance's (``gateway.tokens.instance``):
every worker shares them, and with Redis the window and back-off are shared
by every instance too.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from typing import Callable

from gateway.ops import metrics
from gateway.tokens.breaker import BreakerOpen, CircuitBreaker  # also imported from here by ops and the tests
from gateway.errors import ServiceBusy
from gateway.tokens.instance import InstanceState
from gateway.shared import Shared
from gateway.tokens.client import (DashboardToken, ZipteamsBadRequest, ZipteamsClient, ZipteamsError, ZipteamsForbidden,
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
MAX_LIMITER_WAIT = 2.0    # a user waits this long at most for a rate-limit slot
REFRESH_RESERVE = 0.2     # share of the rate window only refreshes of tokens in use may take
AUTO_MIN_RPM = 30         # the auto budget never goes below the old fixed default
FETCHES_PER_TEAM = 2      # auto: a first token and one renewal per team and fetching process, per minute
GATE_PATIENCE = 2.0       # as long as a user waits for a rate-limit slot; a healthy Zipteams answers well within it
GATE_RETRY_AFTER = 5
BACKOFF_BASE = 0.2
BACKOFF_CAP = 2.0


class ZipteamsThrottled(ServiceBusy):
    """We refused to send a token request, to stay inside Zipteams' limits."""
    code = "zipteams_throttled"


class ZipteamsQueueFull(ServiceBusy):
    """Too many of this worker's threads already wait for Zipteams: keep the rest for cached users."""
    code = "zipteams_queue_full"
    message = "Many people are waiting for the dashboard service right now."


# ------------------------------------------------------------------ budget
def budget_per_minute(setting: int | str, *, teams: int, processes: int, cooldown: float) -> int:
    """ZIPTEAMS_MAX_RPM as a number: the setting itself, or the ``auto`` size.

    auto: every team's first token and one renewal in the same minute, in every process
    that fetches for itself (each worker without Redis, one fetch for all with it), plus one
    breaker probe per cool-down; never below AUTO_MIN_RPM. A fifth of it is kept for
    refreshes (``REFRESH_RESERVE``), so first tokens get the rest: a cold start warms every
    team within a minute. Zipteams publishes no limit (its 429 only says "try again in 60
    seconds"), so this sizes for what the rules need rather than for a number we don't know.
    """
    if setting != "auto":
        return int(setting)
    probes = math.ceil(60 / cooldown)
    return max(AUTO_MIN_RPM, FETCHES_PER_TEAM * teams * processes + probes)


def first_token_limit(limit: int) -> int:
    """The part of a minute's budget that first tokens (not refreshes) may use."""
    if limit < 2:
        return limit
    return max(1, limit - max(1, math.ceil(limit * REFRESH_RESERVE)))


class RateLimiter:
    """A one-minute sliding window toward Zipteams, and the 429 back-off.

    Shared in Redis by every instance when it is configured and answering; otherwise the
    instance's window (every worker of this instance counts in one window, so one busy
    worker may use the whole budget). ``per_minute`` may be a function: the auto budget
    follows the team count when the rules are reloaded.
    """

    def __init__(self, per_minute: int | Callable[[], int], *, shared: Shared | None, name: str,
                 instance: InstanceState | None = None, clock: Callable[[], float] = time.time):
        self._per_minute = per_minute if callable(per_minute) else (lambda: per_minute)
        self._shared, self._name, self._clock = shared, name, clock
        if instance is None:
            instance = InstanceState(window_capacity=max(4096, 4 * self.per_minute))
        self._instance = instance
        self._capped = False

    @property
    def per_minute(self) -> int:
        return self._per_minute()

    def admit(self, refresh: bool = False) -> float:
        """0 if a request may go now (and counts it), else the seconds to wait.

        A share of the window (``REFRESH_RESERVE``) is kept for refreshes of tokens in use:
        a burst of cold requests (a restart, a new team's first visits) never starves the
        refresh that keeps every open dashboard of a team working.
        """
        limit = self.per_minute
        if not refresh:
            limit = first_token_limit(limit)
        if self._shared is not None:
            wait = self._shared.admit(self._name, limit)
            if wait is not None:
                return wait
        if limit > self._instance.capacity and not self._capped:
            # The window's ring was sized at start; the rules have grown far beyond that since.
            self._capped = True
            logger.warning("rate budget of %d/minute capped at %d until the next restart",
                           limit, self._instance.capacity)
        return self._instance.admit(limit, self._clock())

    # ------------------------------------------------------------- 429 back-off
    def back_off(self, seconds: float) -> None:
        """Zipteams answered 429: no token request from this instance (or any, with Redis) for ``seconds``."""
        until = self._clock() + seconds
        with self._instance.lock:
            self._instance["backoff_until"] = max(self._instance["backoff_until"], until)
        if self._shared is not None:
            self._shared.set_backoff(self._name, seconds)

    def backoff_left(self) -> float:
        with self._instance.lock:
            until = self._instance["backoff_until"]
        if self._shared is not None:
            until = max(until, self._shared.backoff_until(self._name))
        return until - self._clock()


# ------------------------------------------------------------ thread cap
class FetchGate:
    """At most ``limit`` threads of this process inside a token fetch or waiting on one.

    A stalled Zipteams would otherwise hold every thread, and users whose token is cached
    would queue behind those waiting for one. Past the limit a thread waits for a place
    only while the fetches ahead of it are young (a healthy Zipteams answers well within
    ``patience``, as in a cold start's burst of first visits); once they have run longer
    than that, Zipteams is slow, waiting would hold one more thread, and the request gets
    a fast 503 with Retry-After instead.
    """

    def __init__(self, limit: int, *, patience: float = GATE_PATIENCE,
                 monotonic: Callable[[], float] = time.monotonic):
        self.limit, self.patience, self._monotonic = max(1, limit), patience, monotonic
        self._cond = threading.Condition()
        self._inside: dict[int, float] = {}  # ticket -> when its holder entered
        self._tickets = itertools.count()

    def enter(self) -> int:
        with self._cond:
            arrived = self._monotonic()
            while len(self._inside) >= self.limit:
                now = self._monotonic()
                waited, oldest = now - arrived, now - min(self._inside.values())
                if max(waited, oldest) >= self.patience:
                    metrics.ZIPTEAMS_REFUSED.labels("threads").inc()
                    raise ZipteamsQueueFull(f"{len(self._inside)} threads already wait for Zipteams",
                                            retry_after=GATE_RETRY_AFTER)
                self._cond.wait(self.patience - max(waited, oldest))
            ticket = next(self._tickets)
            self._inside[ticket] = self._monotonic()
            return ticket

    def leave(self, ticket: int) -> None:
        with self._cond:
            self._inside.pop(ticket, None)
            self._cond.notify()


# -------------------------------------------------------------- the fetch
class ProtectedFetch:
    """Fetches a token from Zipteams with every protection in front of it."""

    def __init__(self, client: ZipteamsClient, *, limiter: RateLimiter, breaker: CircuitBreaker,
                 retries: int, deadline: float, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        self.client, self.limiter, self.breaker = client, limiter, breaker
        self.retries, self.deadline = retries, deadline
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self._rng = rng or random.Random()

    def _refuse(self, reason: str, error: Exception) -> None:
        metrics.ZIPTEAMS_REFUSED.labels(reason).inc()
        logger.info("token request not sent reason=%s", reason)
        raise error

    def __call__(self, tenant: str, subtenant: str, *, refresh: bool = False,
                 within: float | None = None) -> DashboardToken:
        """``within``: what is left of the caller's deadline (after waiting on another
        process's fetch); the fetch never runs past it, nor past ZIPTEAMS_DEADLINE."""
        deadline = self.deadline if within is None else min(self.deadline, within)
        if deadline <= 0:
            raise ZipteamsTimeout(f"deadline of {self.deadline:g}s spent waiting", tenant=tenant, subtenant=subtenant)
        left = self.limiter.backoff_left()
        if left > 0:
            self._refuse("backoff", ZipteamsThrottled("Zipteams asked us to wait", retry_after=math.ceil(left)))
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
                    if wait <= MAX_LIMITER_WAIT and self._monotonic() - started + wait < deadline:
                        self._sleep(wait)
                        continue
                    self._refuse("rate_limit", ZipteamsThrottled(
                        "local rate limit toward Zipteams reached", retry_after=max(1, math.ceil(wait))))
                left = deadline - (self._monotonic() - started)
                if left <= 0:
                    self.breaker.failure(probe)
                    settled = True
                    raise ZipteamsTimeout(f"deadline of {deadline:g}s spent", tenant=tenant, subtenant=subtenant)
                try:
                    token = self.client.fetch_token(tenant, subtenant, within=left)
                except ZipteamsRateLimited as exc:
                    self.limiter.back_off(exc.retry_after)
                    raise
                except (ZipteamsServerError, ZipteamsUnreachable) as exc:
                    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * (0.5 + self._rng.random())
                    if attempt < retries and self._monotonic() - started + delay < deadline:
                        attempt += 1
                        self._sleep(delay)
                        continue
                    self.breaker.failure(probe)
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
                    self.breaker.failure(probe)  # timeouts, malformed envelopes: Zipteams is not well
                    settled = True
                    raise
                self.breaker.success(probe)
                settled = True
                return token
        finally:
            if not settled:
                # Throttled, refused by our limiter, a 429, a configuration error, or anything
                # unexpected: nothing learned about Zipteams' health, but the probe slot is freed.
                self.breaker.neutral(probe)


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

    def _fetch_and_share(self, tenant: str, subtenant: str, refresh: bool, within: float) -> DashboardToken:
        token = self._get(tenant, subtenant, refresh, within)
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
            held = shared.acquire(tenant, subtenant)
            if held is not None:
                try:
                    # Someone may have finished between our look and our lock. Our fetch gets
                    # only what the wait left of the deadline, not a whole deadline of its own.
                    return self._from_shared(tenant, subtenant, stale) or \
                        self._fetch_and_share(tenant, subtenant, refresh, give_up - self._monotonic())
                finally:
                    held.release()
            if not shared.available:
                return self._get(tenant, subtenant, refresh, give_up - self._monotonic())
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

    def _get(self, tenant: str, subtenant: str, refresh: bool, within: float | None = None) -> DashboardToken:
        if within is None:
            return self._fetch(tenant, subtenant, refresh=refresh)
        return self._fetch(tenant, subtenant, refresh=refresh, within=within)

    def forget(self, tenant: str, subtenant: str, token: DashboardToken) -> None:
        if self._shared is not None:
            self._shared.delete_token(tenant, subtenant, token.value)
