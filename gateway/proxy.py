"""The dashboard reverse proxy: ``/dashboard/<path>`` on our origin, token attached here.

The browser only ever talks to the gateway. Each request under ``/dashboard/``
is checked (it must stay inside the base path), stripped of our session cookie
and any credentials, given the session's token server-side and forwarded to
the same path under ``ZIPTEAMS_DASHBOARD_URL``; the answer streams back. When
the dashboard echoes its token (pages bootstrap their scripts with it), every
occurrence is replaced by a per-session placeholder on the way out and swapped
back on the way in, so no token ever reaches the browser.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Iterator
from urllib.parse import unquote_to_bytes, urlsplit

import urllib3
from flask import Blueprint, Response, current_app, g, request, session
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from . import audit, tokens
from .auth import login_required
from .embed import NeedsChoice, current_subtenant, user_matches
from .errors import (ChoiceNeeded, CsrfRejected, NotFound, NotLinked, PayloadTooLarge, UpstreamFailure,
                     UpstreamTimeout)
from .memo import Memo
from .peers import peer_is_trusted
from .zipteams import DashboardToken

logger = logging.getLogger(__name__)
bp = Blueprint("proxy", __name__)

BASE = "/dashboard/"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})  # idempotent and without a body to replay
CHUNK = 64 * 1024
SMALL_BODY = 256 * 1024  # answers up to this size are sent whole, with a Content-Length
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "proxy-connection", "proxy-authenticate", "proxy-authorization"})
# Request headers never forwarded: ours, the browser's credentials, and framing we set ourselves.
DROP_REQUEST = frozenset({"host", "cookie", "authorization", "content-length", "accept-encoding",
                          "referer", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                          "forwarded", "x-real-ip"})
DROP_RESPONSE = frozenset({"server", "date"})
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
              "application/x-www-form-urlencoded", "application/ld+json", "image/svg+xml")
# Anything that, once decoded by the upstream or a proxy on the way, could leave the base path.
_BAD_RAW = re.compile(r"%(?:2[fF]|5[cC]|25|0[0-9a-fA-F]|1[0-9a-fA-F]|7[fF])|[\\\x00-\x20\x7f-\uffff]")
_FRAGILE_FRESHNESS = 30.0  # a token younger than this is not evicted on a 401/403


class NeedsNewToken(Exception):
    pass


class DashboardProxy:
    """Forwards requests to the dashboard over one connection pool per process.

    urllib3 directly rather than a requests.Session: a Session keeps one cookie
    jar, which would carry one user's dashboard cookies into another user's
    requests, and its per-request merging costs more than the proxying itself.
    """

    def __init__(self, base_url: str, *, timeout: float, max_body: int, token_in: str,
                 pool_size: int = 32):
        self.base_url = base_url  # ends with "/"
        parts = urlsplit(base_url)
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.upstream_base_path = parts.path
        self.max_body = max_body
        self.token_in = token_in
        self.drop_request: frozenset = DROP_REQUEST | HOP_BY_HOP
        # One pool for the one upstream origin: no per-request URL parsing or pool look-up.
        self.pool = urllib3.connection_from_url(base_url, maxsize=pool_size, block=False, retries=False,
                                                timeout=urllib3.Timeout(connect=timeout, read=timeout))

    def __repr__(self) -> str:
        return f"DashboardProxy(base_url={self.base_url!r})"


def init_app(app) -> None:
    cfg = app.config
    proxy = app.extensions["proxy"] = DashboardProxy(
        cfg["ZIPTEAMS_DASHBOARD_URL"], timeout=cfg["ZIPTEAMS_TIMEOUT"],
        max_body=cfg["GATEWAY_PROXY_MAX_BODY"], token_in=cfg["GATEWAY_PROXY_TOKEN_IN"])
    # Never forwarded, worked out once: ours, credentials, hop-by-hop, the identity headers.
    proxy.drop_request = frozenset(DROP_REQUEST | HOP_BY_HOP | {
        cfg["GATEWAY_USER_HEADER"].lower(), cfg["GATEWAY_GROUPS_HEADER"].lower()})
    # Each (session, subtenant) placeholder, derived once: every page and proxied call asks again.
    app.extensions["placeholders"] = Memo(16384)
    app.register_blueprint(bp)


# --------------------------------------------------------------------- paths
def upstream_path(raw_uri: str) -> str:
    """The raw path after ``/dashboard/``, refused (404) unless it provably stays inside it.

    The check runs on the request line as sent, before any decoding, so that
    the upstream sees exactly the bytes we judged.
    """
    path = raw_uri.split("?", 1)[0]
    if not path.startswith(BASE) or _BAD_RAW.search(path):
        raise NotFound("dashboard path refused")
    rest = path[len(BASE):]
    try:
        decoded = unquote_to_bytes(rest).decode("utf-8")  # strict: overlong forms fail here
    except UnicodeDecodeError:
        raise NotFound("dashboard path is not valid UTF-8") from None
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in decoded):
        raise NotFound("dashboard path has control characters")
    segments = decoded.split("/")
    if any(s in (".", "..") for s in segments) or "" in segments[:-1]:
        raise NotFound("dashboard path has dot or empty segments")
    return rest


def raw_request_uri() -> str:
    env = request.environ
    raw = env.get("RAW_URI") or env.get("REQUEST_URI")
    if raw is None:
        return request.full_path
    if not raw.startswith("/"):
        # An absolute-form request line ("GET http://host/path"): never ours to forward.
        raise NotFound("absolute URL in the request line")
    return raw


# ---------------------------------------------------------------- placeholders
PLACEHOLDER = re.compile(r"zgtoken-[0-9a-f]{32}")


def placeholder_for(key: str) -> str:
    """This session's stand-in for subtenant ``key``'s token; stable across token renewals.

    Derived (HMAC of the session id and the subtenant), so nothing is stored, and
    different for each subtenant, so a page keeps talking to the team it was
    rendered for even after another tab switches the session to another team.
    """
    sid = session["sid"]
    memo = current_app.extensions["placeholders"]
    value = memo.get((sid, key))
    if value is None:
        secret = current_app.config["SECRET_KEY"].encode()
        digest = hmac.new(secret, f"{sid}|{key}".encode(), hashlib.sha256).hexdigest()
        value = "zgtoken-" + digest[:32]
        memo.put((sid, key), value)
    return value


def bound_match(matches):
    """The subtenant a request's placeholder names (its page was rendered for it), if any."""
    found = PLACEHOLDER.search(request.environ.get("QUERY_STRING", "")) or \
        PLACEHOLDER.search(request.path) or PLACEHOLDER.search(request.headers.get("Authorization", ""))
    if not found:
        return None
    for match in matches:
        if hmac.compare_digest(placeholder_for(match.key), found.group(0)):
            return match
    # Forged, from another session, or for a team the user no longer belongs to.
    raise NotLinked("placeholder names no subtenant of this user")


def swap_in(text: str, ph: str, token: str) -> str:
    return text.replace(ph, token) if ph in text else text


class Scrubber:
    """Replaces ``needle`` in a byte stream, also across chunk boundaries."""

    def __init__(self, needle: bytes, replacement: bytes):
        self.needle, self.replacement = needle, replacement
        self.keep = len(needle) - 1
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self.tail + chunk if self.tail else chunk
        if self.needle in buf:
            buf = buf.replace(self.needle, self.replacement)
        # Everything but a possible start of the needle at the end can go out now.
        cut = len(buf) - self.keep
        first = self.needle[:1]
        hold = buf.find(first, max(cut, 0))
        if hold == -1:
            self.tail = b""
            return buf
        self.tail = buf[hold:]
        return buf[:hold]

    def finish(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail


# ------------------------------------------------------------------ outgoing
def _forward_headers(ph: str, token: str, proxy: DashboardProxy) -> dict[str, str]:
    cfg = current_app.config
    drop = proxy.drop_request
    connection = request.headers.get("Connection", "")
    if connection:
        drop = drop | {h.strip().lower() for h in connection.split(",") if h.strip()}
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in drop or lower.startswith("proxy-"):
            continue
        if lower == "origin" and value == request.host_url.rstrip("/"):
            value = proxy.upstream_origin  # same-origin for the dashboard, as it would be framed directly
        headers[name] = swap_in(value, ph, token)
    cookies = _dashboard_cookies()
    if cookies:
        headers["Cookie"] = cookies
    forwarded_for = request.headers.get("X-Forwarded-For", "")
    if not (forwarded_for and peer_is_trusted(request.remote_addr, cfg["GATEWAY_TRUSTED_PROXIES"])):
        forwarded_for = ""
    peer = request.remote_addr or "unknown"
    headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    # Plain bodies, so that a token the dashboard echoes can be found and replaced.
    headers["Accept-Encoding"] = "identity"
    if proxy.token_in == "header:Authorization":
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _dashboard_cookies() -> str:
    """The browser's cookies minus ours: the dashboard's own cookies go back to it."""
    ours = current_app.config["SESSION_COOKIE_NAME"]
    kept = [f"{name}={value}" for name, value in request.cookies.items(multi=True) if name != ours]
    return "; ".join(kept)


def _forward_query(ph: str, token: str, proxy: DashboardProxy) -> str:
    query = request.environ.get("QUERY_STRING", "")
    # The token parameter is ours to set (or, with header:Authorization, to leave out);
    # everything else goes through byte for byte, placeholders swapped back.
    pieces = [swap_in(p, ph, token) for p in query.split("&") if p.split("=", 1)[0] != "token"] if query else []
    if proxy.token_in == "query:token":
        pieces.append("token=" + token)
    return "&".join(pieces)


class RequestBody:
    """The browser's request body, streamed upstream in chunks and cut off at the size limit."""

    def __init__(self, stream, limit: int, length: int | None):
        self.stream, self.limit, self.length = stream, limit, length
        self.seen = 0
        self.too_large = False

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(CHUNK if size is None or size < 0 else size)
        self.seen += len(chunk)
        if self.seen > self.limit:
            self.too_large = True
            raise PayloadTooLarge("request body over the limit")
        return chunk

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk


def _request_body(proxy: DashboardProxy) -> RequestBody | None:
    length = request.content_length
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not length and not chunked:
        return None
    if length is not None and length > proxy.max_body:
        raise PayloadTooLarge(f"request body of {length} bytes over the {proxy.max_body} limit")
    return RequestBody(request.stream, proxy.max_body, None if chunked else length)


def _send(proxy: DashboardProxy, url: str, headers: dict, body: RequestBody | None):
    chunked = body is not None and body.length is None
    if body is None:
        data = None
    elif chunked:
        data = body.chunks()
    else:
        headers["Content-Length"] = str(body.length)
        data = body
    try:
        return proxy.pool.urlopen(request.method, url, body=data, headers=headers, redirect=False,
                                  retries=False, chunked=chunked, preload_content=False,
                                  decode_content=False, assert_same_host=False)
    except PayloadTooLarge:
        raise
    except NewConnectionError:
        # urllib3 files a refused connection under its timeouts; it is not one.
        raise UpstreamFailure("dashboard unreachable (connection refused)") from None
    except Urllib3Timeout:
        raise UpstreamTimeout("dashboard did not answer in time") from None
    except (Urllib3Error, OSError) as exc:
        if body is not None and body.too_large:
            raise PayloadTooLarge("request body over the limit") from None
        raise UpstreamFailure(f"dashboard unreachable ({type(exc).__name__})") from None


# ----------------------------------------------------------------- responses
def _rewrite_location(value: str, proxy: DashboardProxy) -> str:
    parts = urlsplit(value)
    if parts.netloc and f"{parts.scheme}://{parts.netloc}" != proxy.upstream_origin:
        return value  # somewhere else entirely: not ours to rewrite
    if parts.netloc or value.startswith("/"):
        if not parts.path.startswith(proxy.upstream_base_path):
            return value
        rest = parts.path[len(proxy.upstream_base_path):]
        rewritten = BASE + rest
        if parts.query:
            rewritten += "?" + parts.query
        if parts.fragment:
            rewritten += "#" + parts.fragment
        return rewritten
    return value  # relative: resolves under /dashboard/ in the browser already


def _rewrite_cookie(value: str) -> str | None:
    name = value.split("=", 1)[0].strip()
    if name == current_app.config["SESSION_COOKIE_NAME"]:
        return None  # the dashboard must never overwrite our session
    attrs = [a.strip() for a in value.split(";")]
    kept = [attrs[0]] + [a for a in attrs[1:] if a and a.split("=", 1)[0].strip().lower()
                         not in ("domain", "path")]
    kept.insert(1, "Path=" + BASE)
    return "; ".join(kept)


def _is_text(content_type: str) -> bool:
    content_type = content_type.lower()
    return not content_type or content_type.startswith(TEXT_TYPES)


def _response_headers(upstream, proxy: DashboardProxy, token: str, ph: str,
                      rewrite_body: bool) -> list[tuple[str, str]]:
    raw_headers = upstream.headers  # keeps repeated Set-Cookie lines apart
    connection = raw_headers.get("Connection", "")
    drop = set(HOP_BY_HOP) | DROP_RESPONSE | {h.strip().lower() for h in connection.split(",") if h.strip()}
    if rewrite_body:
        # The body is decoded and may change length: the server frames it anew.
        drop.update(("content-encoding", "content-length"))
    out: list[tuple[str, str]] = []
    for name, value in raw_headers.items():
        lower = name.lower()
        if lower in drop or lower.startswith("proxy-"):
            continue
        if lower == "set-cookie":
            value = _rewrite_cookie(value)
            if value is None:
                continue
        elif lower in ("location", "content-location"):
            value = _rewrite_location(value, proxy)
        elif lower == "cache-control":
            # Per-user content: shared caches may not keep it.
            value = re.sub(r"\bpublic\b", "private", value, flags=re.IGNORECASE)
        out.append((name, value.replace(token, ph) if token in value else value))
    return out


def _body_stream(upstream, token: str, ph: str, rewrite: bool) -> Iterator[bytes]:
    """The upstream body in chunks, token replaced; the connection is reused only if read to the end."""
    complete = False
    try:
        if not rewrite:
            yield from upstream.stream(CHUNK, decode_content=False)
        else:
            scrubber = Scrubber(token.encode(), ph.encode())
            for chunk in upstream.stream(CHUNK, decode_content=True):
                out = scrubber.feed(chunk)
                if out:
                    yield out
            tail = scrubber.finish()
            if tail:
                yield tail
        complete = True
    except (Urllib3Error, OSError) as exc:
        # Headers are already sent: all we can do is end the stream early, and say so.
        logger.warning("dashboard stream broke off (%s)", type(exc).__name__)
    finally:
        if not complete:
            upstream.close()
        upstream.release_conn()


def _small_body(upstream, token: str, ph: str) -> bytes | None:
    """The whole body when it is short and its length known: one write, no chunking."""
    length = upstream.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > SMALL_BODY:
        return None
    try:
        data = upstream.read(decode_content=True)
    except (Urllib3Error, OSError):
        upstream.close()
        raise UpstreamFailure("dashboard answer broke off") from None
    finally:
        upstream.release_conn()
    return data.replace(token.encode(), ph.encode())


# ------------------------------------------------------------------- the view
@bp.route(BASE, defaults={"path": ""}, methods=METHODS)
@bp.route(BASE + "<path:path>", methods=METHODS)
@login_required
def dashboard(path: str):
    proxy: DashboardProxy = current_app.extensions["proxy"]
    try:
        rest = upstream_path(raw_request_uri())
        if request.method not in ("GET", "HEAD", "OPTIONS") and \
                request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
            # Our session cookie must not let another site drive the dashboard.
            raise CsrfRejected("cross-site request to the dashboard")
    except (NotFound, CsrfRejected) as exc:
        audit.event("proxy_refused", email=g.user.email, method=request.method, reason=exc.detail)
        raise
    match = bound_match(user_matches())
    if match is None:
        try:
            match = current_subtenant()
        except NeedsChoice:
            raise ChoiceNeeded("dashboard request before a subtenant was chosen") from None
    sub = match.subtenant
    cache = tokens.cache()
    ph = placeholder_for(match.key)
    body = _request_body(proxy)
    token = cache.get(sub.tenant, sub.id)
    upstream = _forward(proxy, rest, ph, token, body)
    if upstream.status in (401, 403) and _stale_enough(token):
        # The dashboard no longer accepts this token (revoked or rotated early):
        # forget it, and for requests we can safely replay, try once with a fresh one.
        cache.evict(sub.tenant, sub.id, token)
        logger.info("dashboard refused token status=%s tenant=%s subtenant=%s fingerprint=%s",
                    upstream.status, sub.tenant, sub.id, token.fingerprint)
        if request.method in RETRYABLE and body is None:
            upstream.drain_conn()
            upstream.release_conn()
            token = cache.get(sub.tenant, sub.id)
            upstream = _forward(proxy, rest, ph, token, None)
    g.proxied = True
    if request.method == "HEAD":
        # No body will be read: give the connection back now and keep the upstream's length.
        headers = _response_headers(upstream, proxy, token.value, ph, rewrite_body=False)
        upstream.drain_conn()
        upstream.release_conn()
        return Response(status=upstream.status, headers=headers)
    rewrite = _is_text(upstream.headers.get("Content-Type", ""))
    headers = _response_headers(upstream, proxy, token.value, ph, rewrite)
    if rewrite:
        small = _small_body(upstream, token.value, ph)
        if small is not None:
            return Response(small, status=upstream.status, headers=headers)
    return Response(_body_stream(upstream, token.value, ph, rewrite), status=upstream.status,
                    headers=headers, direct_passthrough=True)


def _stale_enough(token: DashboardToken) -> bool:
    """A token we fetched moments ago is not the problem; don't hammer Zipteams over it."""
    now = current_app.config.get("CLOCK", time.time)()
    return now - token.issued_at > _FRAGILE_FRESHNESS


def _forward(proxy: DashboardProxy, rest: str, ph: str, token: DashboardToken, body):
    rest = swap_in(rest, ph, token.value)
    url = proxy.upstream_base_path + rest
    query = _forward_query(ph, token.value, proxy)
    if query:
        url += "?" + query
    return _send(proxy, url, _forward_headers(ph, token.value, proxy), body)
