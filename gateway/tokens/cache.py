"""The per-process token cache: per-key expiry from the JWT, single-flight, refresh-ahead.

Keyed by (tenant, subtenant). An entry lives until the token's ``exp`` minus a
safety margin (never more than 24 h), so an expired or nearly expired token is
never served. Concurrent misses for one key share one upstream call; other keys
never wait on it. Once 75% of an entry's usable life has passed, the next
request still gets the cached token at once while one background thread fetches
its successor, so a warm key never makes a user wait on Zipteams. Behind this
per-process cache sits the shared loader (``protection.SharedLoader``), which
makes the fetch once across processes when Redis is configured.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from flask import Flask, current_app

from gateway.memo import Memo
from gateway.ops import audit, metrics
from gateway.tokens.breaker import CircuitBreaker
from gateway.tokens.budget import FetchGate, RateLimiter, budget_per_minute
from gateway.tokens.protection import ProtectedFetch, SharedLoader
from gateway.shared import LOCK_SLACK
from gateway.tokens.client import DashboardToken, ZipteamsClient

logger = logging.getLogger(__name__)

MAX_LIFETIME = 86400.0
REFRESH_AT = 0.75          # fraction of the usable lifetime after which we refresh
MARGIN_CAP = 0.10          # the margin never eats more than this share of a short token's life
REFRESH_RETRY = 30.0       # seconds between refresh attempts after a failed refresh
HISTORY = 8                # tokens remembered per key while still valid (for the proxy's scrubber)

Key = tuple[str, str]


@dataclass(frozen=True)
class Entry:
    token: DashboardToken
    expires_at: float       # not served at or after this moment
    refresh_at: float       # refreshed in the background from this moment


def serve_window(token: DashboardToken, now: float, margin: float) -> tuple[float, float]:
    """(serve until, refresh from) for a token, the same in every process that holds it.

    Both come from the token's own iat/exp, not from when a process saw it, so
    every worker refreshes at the same moment and stops serving at the same moment.
    """
    start = max(min(token.issued_at, now), now - MAX_LIFETIME)
    end = min(token.expires_at, start + MAX_LIFETIME)
    lifetime = max(end - start, 0.0)
    serve_until = end - min(margin, lifetime * MARGIN_CAP)
    return serve_until, start + (serve_until - start) * REFRESH_AT


class TokenCache:
    """Caches ``fetch(tenant, subtenant, stale) -> DashboardToken`` results.

    ``stale`` is the token being replaced on a refresh (None on a miss), so a
    shared loader can tell a newer token from the one we already have.
    ``clock`` returns wall-clock seconds (the JWT's ``exp`` is wall-clock);
    tests inject a fake one. ``spawn`` starts a background refresh; tests may
    run it inline. ``gate`` caps the request threads that fetch or wait for a
    fetch (background refreshes have threads of their own and are not counted).
    """

    def __init__(self, fetch: Callable[..., DashboardToken], *, margin: float = 60.0,
                 maxsize: int = 10000, clock: Callable[[], float] = time.time,
                 spawn: Callable[[Callable[[], None]], None] | None = None,
                 on_evict: Callable[[str, str, DashboardToken], None] | None = None,
                 gate: FetchGate | None = None):
        self._fetch = fetch
        self._gate = gate
        self._margin = margin
        self._clock = clock
        self._spawn = spawn or _daemon_thread
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._entries = Memo(maxsize, clock=clock)  # each entry until its token stops being served
        self._inflight: dict[Key, Future] = {}
        self._refreshing: set[Key] = set()
        # Every token obtained per key that has not expired: a dashboard may echo an
        # older one after a renewal, and the proxy must recognise it to scrub it.
        self._history: dict[Key, tuple[DashboardToken, ...]] = {}
        self.stats = {"hits": 0, "misses": 0, "refreshes": 0, "refresh_failures": 0}

    def serve_until(self, token: DashboardToken) -> float:
        return serve_window(token, self._clock(), self._margin)[0]

    # ---------------------------------------------------------------- reading
    def get(self, tenant: str, subtenant: str) -> DashboardToken:
        """A valid token for the pair, fetching it if needed (one fetch per key at a time)."""
        key = (tenant, subtenant)
        refresh = False
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self.stats["hits"] += 1
                refresh = self._clock() >= entry.refresh_at and key not in self._refreshing \
                    and key not in self._inflight
                if refresh:
                    self._refreshing.add(key)
        if entry is not None:
            metrics.TOKEN_CACHE_HIT.inc()
            if refresh:
                # Started outside the lock: the refresh takes it to store its result.
                self._spawn(lambda: self._refresh(key, entry))
            return entry.token
        if self._gate is None:
            return self._miss(key)
        ticket = self._gate.enter()  # raises ZipteamsQueueFull past the cap
        try:
            return self._miss(key)
        finally:
            self._gate.leave(ticket)

    def _miss(self, key: Key) -> DashboardToken:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:  # filled while we were away from the lock (or waiting at the gate)
                return entry.token
            self.stats["misses"] += 1
            metrics.TOKEN_CACHE.labels("miss").inc()
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            return future.result().token
        try:
            entry = self._load(key, None)
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._inflight[key]
        future.set_result(entry)
        return entry.token

    def evict(self, tenant: str, subtenant: str, token: DashboardToken | None = None) -> None:
        """Forget the pair's token (only if it is still ``token``, when given)."""
        key = (tenant, subtenant)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (token is not None and entry.token.value != token.value):
                return
            self._entries.pop(key)
        logger.info("token evicted tenant=%s subtenant=%s fingerprint=%s",
                    tenant, subtenant, entry.token.fingerprint)
        if self._on_evict is not None:
            self._on_evict(tenant, subtenant, entry.token)

    def valid_values(self, tenant: str, subtenant: str, current: DashboardToken) -> tuple[str, ...]:
        """The values of every still-valid token obtained for the pair, ``current`` first."""
        now = self._clock()
        with self._lock:
            held = self._history.get((tenant, subtenant), ())
        return (current.value,) + tuple(t.value for t in held if t.expires_at > now and t.value != current.value)

    def peek(self, tenant: str, subtenant: str) -> DashboardToken | None:
        """The cached token if any, without fetching or counting."""
        with self._lock:
            entry = self._entries.get((tenant, subtenant))
        return entry.token if entry else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ---------------------------------------------------------------- loading
    def _load(self, key: Key, stale: Entry | None) -> Entry:
        token = self._fetch(*key, stale.token if stale else None)
        now = self._clock()
        expires_at, refresh_at = serve_window(token, now, self._margin)
        if stale is not None and token.expires_at <= stale.token.expires_at:
            # Not newer than what we had (the spec's token has no jti: Zipteams may hand the same
            # one back): its refresh time has passed already, and every request would start
            # another refresh. Ask again after a back-off instead.
            logger.info("refresh brought no newer token tenant=%s subtenant=%s; asking again in %gs",
                        key[0], key[1], REFRESH_RETRY)
            refresh_at = min(now + REFRESH_RETRY, max(expires_at, now))
        entry = Entry(token, expires_at, refresh_at)
        with self._lock:
            self._entries.put(key, entry, until=expires_at)
            held = self._history.get(key, ())
            if token not in held:
                kept = tuple(t for t in held if t.expires_at > now)[-(HISTORY - 1):]
                self._history[key] = kept + (token,)
        audit.event("token_fetched" if stale is None else "token_refreshed", tenant=key[0],
                    subtenant=key[1], fingerprint=token.fingerprint, serve_until=int(expires_at))
        return entry

    def _refresh(self, key: Key, old: Entry) -> None:
        try:
            self._load(key, old)
            self.stats["refreshes"] += 1
            metrics.TOKEN_CACHE.labels("refresh").inc()
        except Exception as exc:  # noqa: BLE001 - a failed refresh must not kill the thread
            self.stats["refresh_failures"] += 1
            metrics.TOKEN_CACHE.labels("refresh_failure").inc()
            logger.warning("token refresh failed tenant=%s subtenant=%s error=%s; "
                           "serving the current token until it expires", key[0], key[1], exc)
            with self._lock:
                current = self._entries.get(key)
                if current is old:
                    retry = min(self._clock() + REFRESH_RETRY, old.expires_at)
                    self._entries.put(key, Entry(old.token, old.expires_at, retry), until=old.expires_at)
        finally:
            with self._lock:
                self._refreshing.discard(key)


def _daemon_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="token-refresh", daemon=True).start()


# ------------------------------------------------------------------ Flask glue
def init_app(app: Flask) -> None:
    """Build the process's token pipeline from the app's settings:
    cache -> shared loader (Redis) -> protections -> Zipteams client."""
    cfg = app.config
    clock = cfg.get("CLOCK", time.time)
    client = ZipteamsClient(cfg["ZIPTEAMS_API_URL"], cfg["ZIPTEAMS_API_KEY"], cfg["ZIPTEAMS_API_SECRET"],
                            timeout=cfg["ZIPTEAMS_TIMEOUT"], clock=clock)
    shared = app.extensions["shared"]  # gateway.shared: the one Redis client, or None
    # The partner key names the budget; hashed so it never appears in Redis.
    name = hashlib.sha256(cfg["ZIPTEAMS_API_KEY"].encode()).hexdigest()[:16]
    rules = app.extensions["rules"]
    cooldown = cfg["GATEWAY_BREAKER_COOLDOWN"]
    # Without Redis every worker fetches each team for itself; with it, one fetch serves all.
    workers = cfg["WEB_CONCURRENCY"]
    fetching = 1 if shared is not None else workers

    def per_minute() -> int:
        # Follows the rules: a reload that adds teams raises the auto budget at once.
        return budget_per_minute(cfg["ZIPTEAMS_MAX_RPM"], teams=len(rules.current()),
                                 processes=fetching, cooldown=cooldown)

    # Each worker's own breaker and, unless Redis answers, its own share of the budget and
    # its own 429 back-off (gateway.tokens.breaker, gateway.tokens.budget).
    breaker = CircuitBreaker(cfg["GATEWAY_BREAKER_FAILURES"], cooldown,
                             probe_lease=cfg["ZIPTEAMS_DEADLINE"] + LOCK_SLACK,
                             schedule=cfg.get("BREAKER_SCHEDULE"))
    limiter = RateLimiter(per_minute, shared=shared, name=name, workers=workers, clock=clock)
    fetch = ProtectedFetch(client, limiter=limiter, breaker=breaker, retries=cfg["ZIPTEAMS_RETRIES"],
                           deadline=cfg["ZIPTEAMS_DEADLINE"], clock=clock, sleep=cfg.get("SLEEP", time.sleep))

    def probe() -> None:
        # One real token request for the first team in the rules: is Zipteams back?
        first = rules.current().subtenants[0]
        fetch(first.tenant, first.id)

    breaker.probe = probe
    margin = cfg["GATEWAY_TOKEN_MARGIN"]
    loader = SharedLoader(fetch, shared, margin=lambda t: serve_window(t, clock(), margin)[0],
                          deadline=cfg["ZIPTEAMS_DEADLINE"], clock=clock)
    app.extensions["zipteams"] = client
    app.extensions["breaker"] = breaker
    app.extensions["limiter"] = limiter
    # Half of a worker's threads at most wait on Zipteams; the rest serve users whose token is cached.
    gate = FetchGate(max(1, cfg["GATEWAY_THREADS"] // 2))
    app.extensions["tokens"] = TokenCache(loader, margin=margin, maxsize=cfg["GATEWAY_TOKEN_CACHE_SIZE"],
                                          clock=clock, on_evict=loader.forget, gate=gate)


def cache() -> TokenCache:
    return current_app.extensions["tokens"]
