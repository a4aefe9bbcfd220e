"""The shared Redis tier: the gateway's one Redis client and one key namespace.

Several workers on several instances share one Redis (``GATEWAY_CACHE_URL``) for:
encrypted tokens, the fetch lock and the rate window (``gateway.tokens``), and the
revoked sessions and single-use hand-off ids (``gateway.identity.revocations``). Keys are
``zg:<hash of the partner's API URL and key>:{<group>}:<use>``, so partners sharing one
Redis never see each other's entries. The braces are Redis Cluster's hash tag: the keys of one
(tenant, subtenant) pair (its token and its fetch lock) live in one slot, as do one budget's rate
window and back-off, and no command or script touches more than one key, so nothing spans
slots on a cluster. Tokens are stored encrypted with AES-GCM under a key
derived from ``GATEWAY_SECRET_KEY``, bound to their Redis key, so a Redis reader learns
nothing usable.

One stated failure policy per use:
- tokens, lock, rate window: fail soft. Redis is an optimisation there, never a
  dependency: "nothing shared", logged once a minute, and Redis is left alone for a few
  seconds before it is asked again.
- marks (revocations, single-use ids): ``mark``/``marked`` raise ``StoreUnavailable``,
  and ``gateway.identity.revocations.SecurityState`` applies the policy of each use
  (a revocation check fails open, a single-use check fails closed).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable, Mapping

from gateway import sharedtier
from gateway.ops import metrics
from gateway.config import redact_url

logger = logging.getLogger(__name__)

LOCK_SLACK = 5.0          # an instance's probe slot outlives the probe's deadline by this
LOCK_LEASE = 6.0          # a fetch lock lives this long unless its holder renews it...
LOCK_RENEW = 2.0          # ...which it does this often while its fetch runs
RETRY_AFTER_ERROR = 5.0   # seconds Redis is left alone after it failed
LOG_EVERY = 60.0
# Sliding one-minute window: admit and record a request if under the limit,
# else answer how many milliseconds until the oldest leaves the window.
_WINDOW = """
local now = tonumber(ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - 60000)
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('zadd', KEYS[1], now, ARGV[3])
  redis.call('pexpire', KEYS[1], 61000)
  return 0
end
local oldest = redis.call('zrange', KEYS[1], 0, 0, 'withscores')
return math.max(1, tonumber(oldest[2]) + 60000 - now)
"""


class StoreUnavailable(Exception):
    """The store could not say (down, silent or failing); the message names no secret."""


def derive_key(secret_key: str) -> bytes:
    # cryptography here and in Shared, not at the top: a gateway without Redis never loads its
    # bindings, about 6 MB a worker (docs/performance.md, "Memory").
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"zipteams-gateway",
                info=b"token cache v1").derive(secret_key.encode())


class Shared:
    """The one Redis client: fail-soft for tokens, lock and window; strict for marks."""

    def __init__(self, url: str, secret_key: str, *, namespace: str, settings: Mapping[str, Any] | None = None,
                 client=None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self._url, self._settings = url, settings or {}
        self._where = redact_url(url)  # for reprs and log lines: never the password
        self._mode = sharedtier.split_redis_url(url).mode
        self._client, self._window = client, None  # made at first use (RedisCluster connects when made)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(derive_key(secret_key))
        # Partners sharing one Redis never see each other's entries.
        self._ns = sharedtier.key_prefix(namespace)
        self._clock, self._monotonic = clock, monotonic
        self._down_until = 0.0
        self._last_log = -LOG_EVERY
        self._was_down = False
        self._healthy: bool | None = None  # what the gauge last said
        self._lock = threading.Lock()
        self.lock_errors = sharedtier.LOCK_ERRORS

    def __repr__(self) -> str:
        return f"Shared({self._where!r}, namespace={self._ns!r})"

    @property
    def _redis(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = sharedtier.connect(self._url, self._settings)
        return self._client

    # ------------------------------------------------------------ health
    @property
    def available(self) -> bool:
        return self._monotonic() >= self._down_until

    def _gauge(self, healthy: bool) -> None:
        if self._healthy is not healthy:
            self._healthy = healthy
            metrics.SHARED_TIER_HEALTHY.labels(self._mode).set(1 if healthy else 0)

    def _failed(self, what: str, exc: Exception) -> None:
        metrics.REDIS_ERRORS.inc()
        self._gauge(False)
        now = self._monotonic()
        with self._lock:
            self._down_until = now + RETRY_AFTER_ERROR
            self._was_down = True
            if now - self._last_log >= LOG_EVERY:
                self._last_log = now
                reason, misconfigured = sharedtier.describe(exc, sharedtier.hidden_in(self._url, self._settings))
                # A wrong deployment, credential or CA is an operator's error, not an outage.
                logger.log(logging.ERROR if misconfigured else logging.WARNING,
                           "%s at %s (%s during %s): serving from the local cache and fetching directly; "
                           "retrying Redis every %.0fs", "shared tier misconfigured" if misconfigured
                           else "redis unavailable", self._where, reason, what, RETRY_AFTER_ERROR)

    def _ok(self) -> None:
        self._gauge(True)
        if self._was_down:
            with self._lock:
                if self._was_down:
                    self._was_down = False
                    logger.warning("redis is back: the token cache is shared again")

    def call(self, what: str, fn, default=None):
        if not self.available:
            return default
        try:
            result = fn()
        except self.lock_errors:
            raise  # about that lock (not ours any more), not about Redis' health
        except Exception as exc:  # noqa: BLE001 - redis-py's errors, or its surprise at a server that is not Redis
            self._failed(what, exc)
            return default
        self._ok()
        return result

    def ping(self) -> bool:
        return bool(self.call("ping", self._redis.ping, False))

    # ------------------------------------------------------------ tokens
    def key(self, group: str, use: str) -> str:
        """The Redis key of ``use`` in ``group``; every key of one group hashes to one cluster slot."""
        return f"{self._ns}{{{group}}}:{use}"

    def _token_key(self, tenant: str, subtenant: str) -> str:
        return self.key(f"{tenant}/{subtenant}", "token")

    def get_token(self, tenant: str, subtenant: str) -> str | None:
        key = self._token_key(tenant, subtenant)
        blob = self.call("get", lambda: self._redis.get(key))
        if not blob or len(blob) < 13:
            return None
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], key.encode())
            return json.loads(plain)["t"]
        except Exception:  # noqa: BLE001 - a foreign, stale-key or tampered entry is just absent
            logger.warning("shared token entry for %s/%s could not be decrypted; ignoring it",
                           tenant, subtenant)
            return None

    def put_token(self, tenant: str, subtenant: str, token: str, expires_at: float) -> None:
        key = self._token_key(tenant, subtenant)
        ttl_ms = int((expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, json.dumps({"t": token}).encode(), key.encode())
        self.call("set", lambda: self._redis.set(key, blob, px=ttl_ms))

    def delete_token(self, tenant: str, subtenant: str, token: str) -> None:
        if self.get_token(tenant, subtenant) == token:
            self.call("delete", lambda: self._redis.delete(self._token_key(tenant, subtenant)))

    # ------------------------------------------------------------- locks
    def acquire(self, tenant: str, subtenant: str) -> "FetchLock | None":
        """The fetch lock for this pair if we may fetch it now; None if someone else is fetching it.

        redis-py's Lock on a short lease that its holder renews while the fetch runs: a
        fetch however slow keeps it (waiters never fetch beside a live holder), and the lock
        of a holder that died (``kill -9`` mid-fetch) is gone within ``LOCK_LEASE`` seconds
        instead of stalling the team for a whole deadline. Also None when Redis is
        unreachable: callers then check ``available``.
        """
        lock = self.call("lock", lambda: self._redis.lock(
            self.key(f"{tenant}/{subtenant}", "lock"), timeout=LOCK_LEASE, blocking=False,
            thread_local=False))  # renewed from another thread
        if lock is None or not self.call("lock", lambda: lock.acquire(blocking=False), False):
            return None
        return FetchLock(self, lock)

    # ------------------------------------------------------------- marks
    def mark(self, key: str, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds; False if it was already recorded."""
        def record() -> bool:
            fresh = self._redis.set(self.key(key, "mark"), b"1", nx=True, px=max(1, int(ttl * 1000)))
            legacy = self._legacy_key(key)
            return bool(fresh) and not (legacy and self._redis.exists(legacy))
        return self._strict(record)

    def marked(self, key: str) -> bool:
        legacy = self._legacy_key(key)
        keys = (self.key(key, "mark"),) + ((legacy,) if legacy else ())
        return bool(self._strict(lambda: self._redis.exists(*keys)))

    def _legacy_key(self, key: str) -> str | None:
        """Where releases before the hash-tagged keys kept a mark. They still count while they live
        (GATEWAY_SESSION_MAX at most), so an upgrade brings back no signed-out session; only on a
        single server (plain or TLS), the one deployment those releases worked on."""
        return f"{self._ns}state:{key}" if self._mode in ("plain", "TLS") else None

    def _strict(self, fn):
        """For marks: the store's answer, or StoreUnavailable (their caller applies each use's policy)."""
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - as in ``call``
            self._gauge(False)
            raise StoreUnavailable(f"{type(exc).__name__} from {self._where}") from None
        self._gauge(True)
        return result

    # -------------------------------------------------------- rate window
    def admit(self, name: str, limit: int) -> float | None:
        """0 if a request may go now, else seconds to wait; None when Redis cannot say."""
        key = self.key(f"budget/{name}", "rate")
        now_ms = int(self._clock() * 1000)
        member = f"{now_ms}-{secrets.token_hex(4)}"
        result = self.call("rate", lambda: self._script()(keys=[key], args=[now_ms, limit, member]))
        return None if result is None else int(result) / 1000.0

    def _script(self):
        if self._window is None:
            self._window = self._redis.register_script(_WINDOW)
        return self._window

    def set_backoff(self, name: str, seconds: float) -> None:
        key = self.key(f"budget/{name}", "backoff")
        until = self._clock() + seconds
        self.call("backoff", lambda: self._redis.set(key, str(until), px=int(seconds * 1000)))

    def backoff_until(self, name: str) -> float:
        raw = self.call("backoff", lambda: self._redis.get(self.key(f"budget/{name}", "backoff")))
        try:
            return float(raw) if raw else 0.0
        except ValueError:
            return 0.0


class FetchLock:
    """A held fetch lock, renewed in the background until released."""

    def __init__(self, shared: Shared, lock):
        self._shared, self._lock = shared, lock
        self._done = threading.Event()
        threading.Thread(target=self._renew, daemon=True, name="fetch-lock-renewal").start()

    def _renew(self) -> None:
        while not self._done.wait(LOCK_RENEW):
            try:
                self._shared.call("lock renewal", lambda: self._lock.extend(LOCK_LEASE, replace_ttl=True))
            except self._shared.lock_errors:
                return  # it expired under us (Redis lost it): nothing left to renew

    def release(self) -> None:
        self._done.set()
        try:
            self._shared.call("unlock", self._lock.release)
        except self._shared.lock_errors:
            pass  # expired already: someone else may hold it now, and it is theirs


def init_app(app) -> None:
    """The instance's one client; None with ``memory://`` or when what answers there is not Redis (the host's
    store and each process's cache serve instead). The start-up line says which, and why."""
    cfg = app.config
    app.extensions["shared"] = None
    if cfg["GATEWAY_CACHE_URL"] == "memory://":
        return
    # Kept: ``gateway check``, which makes the app moments before, reports it instead of probing again.
    check = app.extensions["shared_tier_check"] = sharedtier.log_start(cfg)
    if check.not_redis:
        return
    app.extensions["shared"] = Shared(
        cfg["GATEWAY_CACHE_URL"], cfg["GATEWAY_SECRET_KEY"], settings=cfg,
        namespace=sharedtier.namespace(cfg), clock=cfg.get("CLOCK", time.time))
