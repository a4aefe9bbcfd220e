"""Which Redis the shared tier is on, how to reach it, and whether it answers.

``GATEWAY_CACHE_URL`` names the deployment (``gateway.redisurl``): plain (redis://, unix://),
TLS (rediss://), Sentinel (redis+sentinel://) or Cluster (redis+cluster://, rediss+cluster://).
The client is always one of redis-py's own: ``Redis``, ``Sentinel(...).master_for(...)`` or
``RedisCluster``, so failover and MOVED/ASK redirections are theirs to follow. This is the only
module that imports redis-py (``gateway.shared`` takes its error classes from here).
``check_shared_tier`` is what start-up and ``gateway check`` report.
"""
from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote

from gateway import bounded
from gateway.config import redact_url
from gateway.redisurl import split_redis_url

logger = logging.getLogger(__name__)

TIMEOUT = 0.5  # seconds for a connection or an answer: Redis is an optimisation, never worth a wait


def __getattr__(name: str):
    """``ERRORS`` and ``LOCK_ERRORS``, redis-py's classes, imported on first use: redis-py weighs
    about 10 MB per worker, and a gateway without Redis (memory://, the default) never needs it."""
    if name == "ERRORS":
        import redis
        from redis.exceptions import RedisClusterException

        # ValueError: redis-py 6.0's cluster pipeline reads a connection closed under it while a
        # master restarts ("I/O operation on closed file"); a failed call like any other (seen as a
        # 500 in test_a_failover_under_load_... at the lowest version).
        return (redis.RedisError, RedisClusterException, OSError, ValueError)
    if name == "LOCK_ERRORS":
        from redis.exceptions import LockError

        return (LockError,)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# The settings (gateway.config) besides GATEWAY_CACHE_URL that shape the connection.
TLS_FILES = {"GATEWAY_REDIS_CA_FILE": "ssl_ca_certs", "GATEWAY_REDIS_CERT_FILE": "ssl_certfile",
             "GATEWAY_REDIS_KEY_FILE": "ssl_keyfile"}
CLUSTER_FIX = "give the cluster as redis+cluster://host:port,host:port (rediss+cluster:// with TLS)"
NOT_REDIS = "the server does not answer as Redis does"
NOT_REDIS_FIX = "check that GATEWAY_CACHE_URL points at Redis (rediss:// for one that speaks TLS)"
# redis-py's own words for a handshake reply no Redis gives (a Redis refusing says so in an error reply).
HANDSHAKE_SURPRISES = ("Bad response from PING", "Invalid RESP version", "Error setting client name",
                       "Invalid Database", "Invalid Username or Password")  # the last: neither OK nor an error
UNKNOWN_COMMAND = re.compile(r"(?:ERR )?unknown command '([A-Za-z|]{1,32})'", re.IGNORECASE)


def _errors() -> tuple:
    return __getattr__("ERRORS")


def connect(url: str, settings: Mapping[str, Any]):
    """A redis-py client for ``url``; nothing is sent until it is first used."""
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    target = split_redis_url(url)
    # No retries of our own asking: a failed call is failed soft at once (gateway.shared), and
    # redis-py 6+ would otherwise retry with backoff by default.
    timeouts = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, "retry": Retry(NoBackoff(), 0)}
    auth = {}
    if settings.get("GATEWAY_REDIS_USERNAME"):
        auth["username"] = settings["GATEWAY_REDIS_USERNAME"]
    if settings.get("GATEWAY_REDIS_PASSWORD"):
        auth["password"] = settings["GATEWAY_REDIS_PASSWORD"]
    tls = {arg: settings[name] for name, arg in TLS_FILES.items() if settings.get(name)} if target.tls else {}
    if target.tls:
        # Said, not left to the default: the certificate must be the CA's and name this host.
        tls.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    if target.mode in ("plain", "TLS"):
        # URL user-info wins in redis-py's from_url; config refuses both at once.
        return redis.Redis.from_url(url, health_check_interval=30, **timeouts, **auth, **tls)
    if target.username:
        auth["username"] = target.username
    if target.password is not None:
        auth["password"] = target.password
    if target.mode == "Sentinel":
        sentinel_kwargs = dict(timeouts)
        if settings.get("GATEWAY_REDIS_SENTINEL_PASSWORD"):
            sentinel_kwargs["password"] = settings["GATEWAY_REDIS_SENTINEL_PASSWORD"]
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs,
                            db=target.db, **timeouts, **auth)
        return sentinel.master_for(target.master)
    nodes = [ClusterNode(host, port) for host, port in target.nodes]
    return RedisCluster(startup_nodes=nodes, **timeouts, **auth, **({"ssl": True, **tls} if target.tls else {}))


def hidden_in(url: str, settings: Mapping[str, Any]) -> list[str]:
    """The passwords a line about the tier must never carry: the URL's and the settings'."""
    return [p for p in (split_redis_url(url).password, settings.get("GATEWAY_REDIS_PASSWORD"),
                        settings.get("GATEWAY_REDIS_SENTINEL_PASSWORD")) if p]


def _shown(exc: BaseException, raw: str, hidden: list[str]) -> str:
    """The words of an error a line may carry (an allow-list): redis-py's own, about the connection and
    TLS; of a reply the server sent, only its error code, because a reply may repeat a command's
    arguments (a server that does not know AUTH repeats the password). Then any password left is masked."""
    from redis.exceptions import InvalidResponse, ResponseError
    from redis.sentinel import MasterNotFoundError

    for secret in hidden:  # first: redact_url would cut one with "@", "?" or "#" into pieces not found
        raw = raw.replace(secret, "***").replace(quote(secret, safe=""), "***")
    if isinstance(exc, ResponseError):
        unknown, code = UNKNOWN_COMMAND.match(raw), raw.split(" ", 1)[0]
        text = (f"unknown command '{unknown[1]}'" if unknown else code if code.isalpha() and code.isupper()
                else "an error reply")
    elif isinstance(exc, InvalidResponse):
        text = "a reply not in Redis' protocol"
    elif isinstance(exc, MasterNotFoundError):  # its list of each Sentinel's error is left out
        text = raw.split(" : ", 1)[0]
    else:
        text = redact_url(raw)
    return text.strip()[:300] or type(exc).__name__  # cut: a few errors carry the repr of every client tried


def not_redis(exc: BaseException) -> bool:
    """Whether an error says that what answers is not Redis: redis-py's surprise at a reply (not one
    of its own errors), a reply outside Redis' protocol, or a handshake reply no Redis gives."""
    from redis.exceptions import ConnectionError as RedisConnectionError, InvalidResponse, ResponseError

    if not isinstance(exc, _errors()) or isinstance(exc, InvalidResponse):
        return True
    if isinstance(exc, ResponseError):  # a command the gateway needs, unknown there (a Sentinel's port...)
        return UNKNOWN_COMMAND.match(str(exc)) is not None
    return isinstance(exc, RedisConnectionError) and str(exc).startswith(HANDSHAKE_SURPRISES)


def describe(exc: BaseException, hidden: list[str] = ()) -> tuple[str, bool]:
    """What went wrong, in words naming no secret (``hidden``: ``hidden_in``'s), and whether it is a
    configuration error (a retry would not help: wrong deployment, credentials or certificate authority)."""
    from redis.exceptions import AskError, AuthenticationError, MovedError, NoPermissionError
    from redis.sentinel import MasterNotFoundError

    raw = str(exc)  # to tell the kinds apart; only ``text`` is shown
    text = _shown(exc, raw, list(hidden))
    if not_redis(exc):
        return f"{NOT_REDIS} ({type(exc).__name__}: {text}): {NOT_REDIS_FIX}", True
    # redis-py 5 raises a plain ResponseError for them outside RedisCluster; 6+ a MovedError/AskError.
    if isinstance(exc, (MovedError, AskError)) or raw.startswith(("MOVED ", "ASK ")):
        return (f"a Redis Cluster node answered with a redirection ({type(exc).__name__}): "
                f"{CLUSTER_FIX}", True)
    if isinstance(exc, MasterNotFoundError):
        # redis-py asks every Sentinel and reports only the name: a wrong Sentinel password, master
        # name or address all end here.
        return (f"no Sentinel named a primary ({text}): check the Sentinel addresses, the master name in "
                "the URL and GATEWAY_REDIS_SENTINEL_PASSWORD", True)
    if isinstance(exc, (AuthenticationError, NoPermissionError)) or raw.startswith(("WRONGPASS", "NOAUTH", "NOPERM")):
        return (f"the ACL user was refused ({type(exc).__name__}: {text}): check GATEWAY_REDIS_USERNAME, "
                "GATEWAY_REDIS_PASSWORD, and that the user may use keys zg:* with get, set, exists, del, "
                "eval, evalsha, script load and ping (e.g. +@read +@write +@scripting +@connection)", True)
    if "mismatch" in raw and ("certificate verify failed" in raw or "CERTIFICATE_VERIFY_FAILED" in raw):
        return (f"TLS: the server's certificate does not name the host in GATEWAY_CACHE_URL ({text}): use a "
                "host name the certificate carries", True)
    if "certificate verify failed" in raw or "CERTIFICATE_VERIFY_FAILED" in raw:
        return (f"TLS: the server's certificate was not accepted ({text}): GATEWAY_REDIS_CA_FILE must hold "
                "the CA that signed it", True)
    if "CERTIFICATE_REQUIRED" in raw or "EOF occurred in violation of protocol" in raw:
        # TLS 1.3 servers refuse a missing client certificate after the handshake: a bare EOF.
        return (f"TLS: the server ended the connection after the handshake ({text}): if it asks for a "
                "client certificate, set GATEWAY_REDIS_CERT_FILE and GATEWAY_REDIS_KEY_FILE", True)
    if "SSL" in raw:
        return f"TLS failed ({type(exc).__name__}: {text})", True
    return f"{type(exc).__name__}: {text}", False


@dataclass
class TierCheck:
    """One look at the shared tier: its mode, where it is, its round trip, what is wrong."""
    mode: str
    where: str
    round_trip_ms: float | None = None
    problems: list[str] = field(default_factory=list)
    not_redis: bool = False  # something else answers there: no use asking it again (gateway.shared)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def line(self) -> str:
        if self.ok:
            return f"shared tier: {self.mode} Redis at {self.where}, round trip {self.round_trip_ms:.1f} ms"
        return "shared tier NOT in use: " + "; ".join(self.problems)


def namespace(config: Mapping[str, Any]) -> str:
    """What a partner's keys are scoped by: its API URL and key (hashed into the prefix)."""
    return config.get("ZIPTEAMS_API_URL", "") + "|" + config.get("ZIPTEAMS_API_KEY", "")


def key_prefix(namespace: str) -> str:
    """``zg:<hash of the namespace>:``, the start of every key of one partner."""
    return "zg:" + hashlib.sha256(namespace.encode()).hexdigest()[:16] + ":"


def check_shared_tier(config: Mapping[str, Any]) -> TierCheck | None:
    """Connect as the gateway would, send a PING, and write, read and delete one key in the
    gateway's key space; None with ``GATEWAY_CACHE_URL=memory://``. Problems are lines that
    name the setting, the redacted URL and the fix."""
    url = config["GATEWAY_CACHE_URL"]
    if url == "memory://":
        return None
    where = redact_url(url)
    check = TierCheck(split_redis_url(url).mode, where)
    client = None
    try:
        client = connect(url, config)
        client.ping()  # the connection (and TLS handshake) first: the round trip is the second
        started = time.perf_counter()
        client.ping()
        check.round_trip_ms = (time.perf_counter() - started) * 1000
        if check.mode in ("plain", "TLS") and _is_cluster_node(client):
            check.problems.append(f"GATEWAY_CACHE_URL={where} is a node of a Redis Cluster (cluster_enabled:1), "
                                  f"given as a single server: {CLUSTER_FIX}")
            return check
        key = f"{key_prefix(namespace(config))}{{probe-{secrets.token_hex(8)}}}:probe"  # the gateway's own key space
        value = secrets.token_hex(8).encode()
        written, read_back = client.set(key, value, px=10_000), client.get(key)
        client.delete(key)
        # Redis answers a plain SET with OK, and gives the value back unless it evicted it at once (a
        # full cache may): neither an OK missing nor another value comes from a Redis.
        if not written or read_back not in (value, None):
            check.not_redis = True
            check.problems.append(f"GATEWAY_CACHE_URL={where} ({check.mode}): {NOT_REDIS} (a key written "
                                  f"read back as something else): {NOT_REDIS_FIX}")
    except bounded.TimedOut:
        raise  # the caller's deadline in all (log_start), raised here under gevent: not an answer
    except Exception as exc:  # noqa: BLE001 - whatever the server answered, the tier is not usable (describe)
        reason, _ = describe(exc, hidden_in(url, config))
        check.not_redis = not_redis(exc)
        check.problems.append(f"GATEWAY_CACHE_URL={where} ({check.mode}): {reason}")
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing what never worked
                pass
    return check


def _is_cluster_node(client) -> bool:
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except bounded.TimedOut:
        raise
    except Exception:  # noqa: BLE001 - INFO refused to this ACL user: the probe key below may still meet a MOVED
        return False


START_LIMIT = 5.0  # seconds in all for the start-up look (a Redis that trickles its answers resets each read's)


def log_start(config: Mapping[str, Any]) -> TierCheck | None:
    """The start-up line: the mode and round trip, or an ERROR line saying exactly what is wrong.
    Never holds the start longer than START_LIMIT (gateway.bounded)."""
    try:
        check = bounded.call(START_LIMIT, check_shared_tier, config)
    except bounded.TimedOut:
        url = config["GATEWAY_CACHE_URL"]
        check = TierCheck(split_redis_url(url).mode, redact_url(url), problems=[
            f"GATEWAY_CACHE_URL={redact_url(url)}: no complete answer within {START_LIMIT:g} s in all: check that it "
            "points at a healthy Redis"])
    if check is not None:
        if check.ok:
            logger.info("%s", check.line)
        else:
            logger.error("%s; until this is fixed every instance serves from its own cache and fetches "
                         "directly (see the shared tier's failure policy)", check.line)
    return check
