"""One protected token fetch, and a fetch shared across processes through Redis.

Protecting Zipteams and ourselves: the rate budget and the thread cap are in
``gateway.tokens.budget``, the breaker in ``gateway.tokens.breaker``.

The order of checks for one token fetch: a 429 back-off in force refuses at
once; an open breaker refuses at once; the rate limiter admits the request or
refuses it with the wait; then the call, retried with backoff and jitter on
connection errors and 5xx inside a total deadline. Refusals never reach
Zipteams and are counted in ``gateway_zipteams_refused_total``. The breaker
is each worker process's own; so are the back-off and the rate window (a
share of the budget) without Redis, while with Redis every process of every
instance shares those two.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable

from gateway.ops import metrics
from gateway.shared import Shared
from gateway.tokens.breaker import BreakerOpen, CircuitBreaker
from gateway.tokens.budget import MAX_LIMITER_WAIT, RateLimiter, ZipteamsThrottled
from gateway.tokens.client import (DashboardToken, ZipteamsBadRequest, ZipteamsClient, ZipteamsError,
                                   ZipteamsForbidden, ZipteamsInvalidToken, ZipteamsRateLimited,
                                   ZipteamsServerError, ZipteamsTimeout, ZipteamsUnreachable, parse_token)

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
BACKOFF_BASE = 0.2
BACKOFF_CAP = 2.0


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
