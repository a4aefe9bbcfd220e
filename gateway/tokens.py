"""The per-process token cache: per-key expiry from the JWT, single-flight, refresh-ahead.

Keyed by (tenant, subtenant). An entry lives until the token's ``exp`` minus a
safety margin (never more than 24 h), so an expired or nearly expired token is
never served. Concurrent misses for one key share one upstream call; other keys
never wait on it. Once 75% of an entry's usable life has passed, the next
request still gets the cached token at once while one background thread fetches
its successor, so a warm key never makes a user wait on Zipteams.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from cachetools import TLRUCache
from flask import Flask, current_app

from .zipteams import DashboardToken, ZipteamsClient

logger = logging.getLogger(__name__)

MAX_LIFETIME = 86400.0
REFRESH_AT = 0.75          # fraction of the usable lifetime after which we refresh
MARGIN_CAP = 0.10          # the margin never eats more than this share of a short token's life
REFRESH_RETRY = 30.0       # seconds between refresh attempts after a failed refresh

Key = tuple[str, str]


@dataclass(frozen=True)
class Entry:
    token: DashboardToken
    expires_at: float       # not served at or after this moment
    refresh_at: float       # refreshed in the background from this moment


class TokenCache:
    """Caches ``fetch(tenant, subtenant) -> DashboardToken`` results.

    ``clock`` returns wall-clock seconds (the JWT's ``exp`` is wall-clock);
    tests inject a fake one. ``spawn`` starts a background refresh; tests may
    run it inline.
    """

    def __init__(self, fetch: Callable[[str, str], DashboardToken], *, margin: float = 60.0,
                 maxsize: int = 10000, clock: Callable[[], float] = time.time,
                 spawn: Callable[[Callable[[], None]], None] | None = None):
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._spawn = spawn or _daemon_thread
        self._lock = threading.Lock()
        self._entries: TLRUCache = TLRUCache(maxsize, ttu=lambda _k, e, _now: e.expires_at, timer=clock)
        self._inflight: dict[Key, Future] = {}
        self._refreshing: set[Key] = set()
        self.stats = {"hits": 0, "misses": 0, "refreshes": 0, "refresh_failures": 0}

    # ---------------------------------------------------------------- reading
    def get(self, tenant: str, subtenant: str) -> DashboardToken:
        """A valid token for the pair, fetching it if needed (one fetch per key at a time)."""
        key = (tenant, subtenant)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self.stats["hits"] += 1
                if self._clock() >= entry.refresh_at and key not in self._refreshing \
                        and key not in self._inflight:
                    self._refreshing.add(key)
                    self._spawn(lambda: self._refresh(key, entry))
                return entry.token
            self.stats["misses"] += 1
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            return future.result().token
        try:
            entry = self._load(key)
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
            if entry is not None and (token is None or entry.token.value == token.value):
                del self._entries[key]
                logger.info("token evicted tenant=%s subtenant=%s fingerprint=%s",
                            tenant, subtenant, entry.token.fingerprint)

    def peek(self, tenant: str, subtenant: str) -> DashboardToken | None:
        """The cached token if any, without fetching or counting."""
        with self._lock:
            entry = self._entries.get((tenant, subtenant))
        return entry.token if entry else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ---------------------------------------------------------------- loading
    def _entry_for(self, token: DashboardToken) -> Entry:
        now = self._clock()
        lifetime = min(token.expires_at, now + MAX_LIFETIME) - now
        usable = lifetime - min(self._margin, lifetime * MARGIN_CAP)
        return Entry(token, now + usable, now + usable * REFRESH_AT)

    def _load(self, key: Key) -> Entry:
        entry = self._entry_for(self._fetch(*key))
        with self._lock:
            self._entries[key] = entry
        logger.info("token fetched tenant=%s subtenant=%s fingerprint=%s serve_until=%.0f",
                    key[0], key[1], entry.token.fingerprint, entry.expires_at)
        return entry

    def _refresh(self, key: Key, old: Entry) -> None:
        try:
            entry = self._load(key)
            self.stats["refreshes"] += 1
            logger.info("token refreshed tenant=%s subtenant=%s fingerprint=%s",
                        key[0], key[1], entry.token.fingerprint)
        except Exception as exc:  # noqa: BLE001 - a failed refresh must not kill the thread
            self.stats["refresh_failures"] += 1
            logger.warning("token refresh failed tenant=%s subtenant=%s error=%s; "
                           "serving the current token until it expires", key[0], key[1], exc)
            with self._lock:
                current = self._entries.get(key)
                if current is old:
                    retry = min(self._clock() + REFRESH_RETRY, old.expires_at)
                    self._entries[key] = Entry(old.token, old.expires_at, retry)
        finally:
            with self._lock:
                self._refreshing.discard(key)


def _daemon_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="token-refresh", daemon=True).start()


# ------------------------------------------------------------------ Flask glue
def init_app(app: Flask) -> None:
    """Create the process's client and cache from the app's settings."""
    cfg = app.config
    client = ZipteamsClient(cfg["ZIPTEAMS_API_URL"], cfg["ZIPTEAMS_API_KEY"], cfg["ZIPTEAMS_API_SECRET"],
                            timeout=cfg["ZIPTEAMS_TIMEOUT"], clock=cfg.get("CLOCK", time.time))
    app.extensions["zipteams"] = client
    app.extensions["tokens"] = TokenCache(client.fetch_token, margin=cfg["GATEWAY_TOKEN_MARGIN"],
                                          maxsize=cfg["GATEWAY_TOKEN_CACHE_SIZE"],
                                          clock=cfg.get("CLOCK", time.time))


def cache() -> TokenCache:
    return current_app.extensions["tokens"]
