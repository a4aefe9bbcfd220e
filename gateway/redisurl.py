"""What a ``GATEWAY_CACHE_URL`` names: the Redis deployment, its nodes and its user-info.

Pure parsing for the settings check (``gateway.parsers``) and for ``gateway.sharedtier``,
which connects through redis-py's own clients.
"""
from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit

# GATEWAY_CACHE_URL's schemes and the deployment each one names (gateway.sharedtier connects).
REDIS_MODES = {"redis": "plain", "unix": "plain", "rediss": "TLS", "redis+sentinel": "Sentinel",
               "redis+cluster": "Cluster", "rediss+cluster": "Cluster (TLS)"}


class RedisTarget(NamedTuple):
    """What a Redis URL names: the deployment, its nodes and the credentials in its user-info."""
    mode: str
    tls: bool
    nodes: tuple[tuple[str, int], ...]  # Sentinel or Cluster: the nodes asked first
    master: str                        # Sentinel: the monitored master's name
    db: int
    username: str | None
    password: str | None


def split_redis_url(raw: str) -> RedisTarget:
    """``redis+sentinel://[user:pass@]host:port,host:port/<master>/<db>`` and
    ``redis+cluster://[user:pass@]host:port,host:port``; redis://, rediss:// and unix:// are
    left to redis-py's own URL parsing (nodes empty)."""
    scheme, sep, rest = raw.strip().partition("://")
    mode = REDIS_MODES.get(scheme.lower()) if sep else None
    if mode is None:
        raise ValueError("must be memory://, redis://host:port/db, rediss://host:port/db (TLS), unix:///path, "
                         "redis+sentinel://host:port,host:port/<master>/<db> or redis+cluster://host:port,host:port")
    tls = scheme.lower() in ("rediss", "rediss+cluster")
    if mode in ("plain", "TLS"):
        parts = urlsplit(raw.strip())
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
        except ValueError:
            raise ValueError("has an invalid port") from None
        if scheme.lower() != "unix" and not parts.hostname:
            raise ValueError("has no host: redis://host:port/db")
        return RedisTarget(mode, tls, (), "", 0, unquote(parts.username or "") or None,
                           unquote(parts.password) if parts.password is not None else None)
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":") if at else ("", "", "")
    nodes = []
    for host in hosts.split(","):
        parts = urlsplit("//" + host.strip())
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        if not parts.hostname or port is None:
            raise ValueError("needs host:port for every node, comma-separated")
        nodes.append((parts.hostname, port))
    path = path.split("?")[0].strip("/")
    master, db = "", 0
    if mode == "Sentinel":
        master, _, db_text = path.partition("/")
        if not master or (db_text and not db_text.isdigit()):
            raise ValueError("must name the master: redis+sentinel://host:port,host:port/<master-name>/<db>")
        db = int(db_text or 0)
    elif path:
        raise ValueError("takes no path: a cluster has only database 0 (redis+cluster://host:port,host:port)")
    return RedisTarget(mode, tls, tuple(nodes), master, db, unquote(user) or None,
                       unquote(password) if colon else None)
