"""The proxy view: check the request, attach the token server-side, stream the answer back scrubbed."""
from __future__ import annotations

import logging
import time
from typing import Iterator
from urllib.parse import unquote_plus, urlsplit

import urllib3
from flask import Blueprint, Response, current_app, g, request
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from werkzeug.wsgi import ClosingIterator

from gateway.ops import audit

from gateway import security

from gateway.tokens import cache as tokens
from gateway.identity.auth import login_required
from gateway.config import ConfigError
from gateway.delivery.embed import NeedsChoice, current_subtenant, user_matches
from gateway.errors import (BadRequestBody, ChoiceNeeded, CsrfRejected, GatewayError, NotFound,
                      PayloadTooLarge, UpstreamFailure, UpstreamTimeout)
from gateway.identity.peers import peer_is_trusted
from gateway.tokens.client import DashboardToken
from gateway.delivery.proxy import policy, scrub, streams
from gateway.delivery.proxy.paths import raw_request_uri, upstream_path
from gateway.delivery.proxy.placeholders import bound_match, placeholder_for

logger = logging.getLogger(__name__)
bp = Blueprint("proxy", __name__)

BASE = policy.BASE
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RETRYABLE = SAFE_METHODS  # idempotent and without a body to replay
CHUNK = 64 * 1024
SMALL_BODY = 256 * 1024  # answers up to this size are sent whole, with a Content-Length
RANGES = frozenset({"range", "if-range"})
_FRAGILE_FRESHNESS = 30.0  # a token younger than this is not evicted on a 401/403


class DashboardProxy:
    """Forwards requests to the dashboard over one connection pool per process.

    urllib3 directly rather than a requests.Session: a Session keeps one cookie
    jar, which would carry one user's dashboard cookies into another user's
    requests, and its per-request merging costs more than the proxying itself.
    """

    def __init__(self, base_url: str, *, timeout: float, max_body: int, token_in: str,
                 forward: frozenset = policy.FORWARD_REQUEST, frame_ancestors: str = "'self'",
                 pool_size: int = 32, slots: streams.Slots | None = None):
        self.base_url = base_url  # ends with "/"
        parts = urlsplit(base_url)
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.upstream_base_path = parts.path
        self.max_body = max_body
        self.token_in = token_in
        self.forward = forward
        self.frame_headers = frame_headers(frame_ancestors)
        self.slots = slots or streams.Slots(4, 2)
        # One pool for the one upstream origin: no per-request URL parsing or pool look-up.
        self.pool = urllib3.connection_from_url(base_url, maxsize=pool_size, block=False, retries=False,
                                                timeout=urllib3.Timeout(connect=timeout, read=timeout))

    def __repr__(self) -> str:
        return f"DashboardProxy(base_url={self.base_url!r})"


def frame_headers(frame_ancestors: str) -> list[tuple[str, str]]:
    """Our framing policy for proxied answers, sent beside any CSP of the dashboard's own.

    Browsers enforce every CSP header they get, so the dashboard's policy cannot
    widen ours. The configured sources and 'self' (our embed page frames the
    dashboard, and frame-ancestors is checked against every ancestor, so the
    partner's page must be listed too); X-Frame-Options only where it can say the same.
    """
    sources = [s for s in frame_ancestors.split() if s.lower() != "'none'"]
    if "'self'" not in sources:
        sources.insert(0, "'self'")
    headers = [("Content-Security-Policy", "frame-ancestors " + " ".join(sources))]
    if sources == ["'self'"]:
        headers.append(("X-Frame-Options", "SAMEORIGIN"))
    return headers


def init_app(app) -> None:
    from gateway.memo import Memo

    cfg = app.config
    extra = frozenset(n.lower() for n in cfg["GATEWAY_PROXY_FORWARD_HEADERS"])
    refused = sorted(n for n in extra if n in policy.forbidden_names(cfg) or n.startswith("proxy-"))
    if refused:
        raise ConfigError(f"GATEWAY_PROXY_FORWARD_HEADERS must not list {', '.join(refused)}: credentials, "
                          "identity and the gateway's own headers never go to the dashboard")
    app.extensions["proxy"] = DashboardProxy(
        cfg["ZIPTEAMS_DASHBOARD_URL"], timeout=cfg["ZIPTEAMS_TIMEOUT"],
        max_body=cfg["GATEWAY_PROXY_MAX_BODY"], token_in=cfg["GATEWAY_PROXY_TOKEN_IN"],
        forward=policy.FORWARD_REQUEST | extra, frame_ancestors=cfg["GATEWAY_FRAME_ANCESTORS"],
        slots=streams.Slots(cfg["GATEWAY_DOWNLOADS_PER_WORKER"] or max(1, cfg["GATEWAY_THREADS"] // 2),
                            cfg["GATEWAY_DOWNLOADS_PER_USER"]))
    # Each (user, subtenant) placeholder, derived once: every page and proxied call asks again.
    app.extensions["placeholders"] = Memo(16384)
    app.register_blueprint(bp)


# ------------------------------------------------------------------ outgoing
def _forward_headers(token: str, proxy: DashboardProxy, ranges: bool = True) -> dict[str, str]:
    headers = policy.request_headers(request.headers, allowed=proxy.forward if ranges else proxy.forward - RANGES,
                                     host=request.host, upstream_origin=proxy.upstream_origin,
                                     upstream_base_path=proxy.upstream_base_path)
    cookies = policy.dashboard_cookies(request.headers.get("Cookie", ""))
    if cookies:
        headers["Cookie"] = cookies
    forwarded_for = request.headers.get("X-Forwarded-For", "")
    if not (forwarded_for and peer_is_trusted(request.remote_addr, current_app.config["GATEWAY_TRUSTED_PROXIES"])):
        forwarded_for = ""
    peer = request.remote_addr or "unknown"
    headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    headers["X-Request-Id"] = g.get("request_id", "-")
    # Plain bodies where the dashboard honours it; anything else is decoded before scrubbing.
    headers["Accept-Encoding"] = "identity"
    if proxy.token_in == "header:Authorization":
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _is_token_param(piece: str) -> bool:
    # However the browser spells it (%74oken, Token, token%00, token[]), a parameter a
    # dashboard might read as "token" is ours alone: one sent by the browser could
    # outrank ours and make a good token look rejected.
    name = unquote_plus(piece.split("=", 1)[0]).casefold()
    return name.strip("\x00 \t") == "token" or name.startswith("token[")


def _forward_query(token: str, proxy: DashboardProxy) -> str:
    query = request.environ.get("QUERY_STRING", "")
    # The token parameter is ours to set, first (or, with header:Authorization, to leave
    # out); everything else goes through as sent. A placeholder in any other parameter
    # stays a placeholder: the dashboard may reflect parameters into what it sends back.
    pieces = [p for p in query.split("&") if not _is_token_param(p)] if query else []
    if proxy.token_in == "query:token":
        pieces.insert(0, "token=" + token)
    return "&".join(pieces)


class RequestBody:
    """The browser's request body, streamed upstream in chunks and cut off at the size limit."""

    def __init__(self, stream, limit: int, length: int | None):
        self.stream, self.limit, self.length = stream, limit, length
        self.seen = 0
        self.too_large = False
        self.malformed = False

    def read(self, size: int = -1) -> bytes:
        try:
            chunk = self.stream.read(CHUNK if size is None or size < 0 else size)
        except Exception as exc:  # noqa: BLE001 - the server's parse errors (bad chunking) have no common base
            self.malformed = True
            raise BadRequestBody(f"request body could not be read ({type(exc).__name__})") from None
        if not chunk and self.length is not None and self.seen < self.length:
            # The client stopped before its Content-Length: forwarding the rest would leave the
            # dashboard waiting for bytes that never come (a 504 for the client's mistake).
            self.malformed = True
            raise BadRequestBody(f"request body ended after {self.seen} of {self.length} bytes")
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
    except GatewayError:
        raise
    except NewConnectionError:
        # urllib3 files a refused connection under its timeouts; it is not one.
        raise UpstreamFailure("dashboard unreachable (connection refused)") from None
    except Urllib3Timeout:
        raise UpstreamTimeout("dashboard did not answer in time") from None
    except (Urllib3Error, OSError) as exc:
        if body is not None and body.too_large:
            raise PayloadTooLarge("request body over the limit") from None
        if body is not None and body.malformed:
            raise BadRequestBody("request body could not be read") from None
        raise UpstreamFailure(f"dashboard unreachable ({type(exc).__name__})") from None


def _forward(proxy: DashboardProxy, rest: str, token: DashboardToken, body, ranges: bool = True):
    url = proxy.upstream_base_path + rest
    query = _forward_query(token.value, proxy)
    if query:
        url += "?" + query
    return _send(proxy, url, _forward_headers(token.value, proxy, ranges), body)


# ----------------------------------------------------------------- responses
def _chunks(upstream, decode: bool) -> Iterator[bytes]:
    # read1: whatever has arrived goes on at once (an event stream is not held for 64 KB).
    while data := upstream.read1(CHUNK, decode_content=decode):
        yield data


def _body_stream(upstream, pattern: scrub.Pattern | None) -> Iterator[bytes]:
    """The upstream body in chunks, tokens replaced; the connection is reused only if read to the end."""
    complete = False
    try:
        if pattern is None:
            yield from _chunks(upstream, False)
        else:
            scrubber = scrub.Scrubber(pattern)
            for chunk in _chunks(upstream, True):
                out = scrubber.feed(chunk)
                if out:
                    yield out
            tail = scrubber.finish()
            if tail:
                yield tail
        complete = True
    except (Urllib3Error, OSError) as exc:
        # Headers are already sent: all we can do is end the stream early (a body we
        # could not decode is never passed on), and say so.
        logger.warning("dashboard stream broke off (%s)", type(exc).__name__)
    finally:
        if not complete:
            upstream.close()
        upstream.release_conn()


def _small_body(upstream, pattern: scrub.Pattern) -> bytes | None:
    """The whole body when it is short and its length known: one write, no chunking."""
    length = upstream.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > SMALL_BODY:
        return None
    try:
        data = upstream.read(decode_content=True)
    except (Urllib3Error, OSError) as exc:
        upstream.close()
        raise UpstreamFailure(f"dashboard answer broke off or could not be decoded ({type(exc).__name__})") from None
    finally:
        upstream.release_conn()
    return pattern.sub(data)


def _discard(upstream) -> None:
    upstream.drain_conn()
    upstream.release_conn()


# ------------------------------------------------------------------- the view
@bp.route(BASE, defaults={"path": ""}, methods=METHODS)
@bp.route(BASE + "<path:path>", methods=METHODS)
@login_required
def dashboard(path: str):
    proxy: DashboardProxy = current_app.extensions["proxy"]
    try:
        rest = upstream_path(raw_request_uri(request))
        if request.method not in SAFE_METHODS:
            # Our session cookie must not let another site drive the dashboard.
            security.refuse_cross_site(need_origin=True)
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
    # Byte ranges only where a slice can be asked for again whole if it is text (below).
    ranges = request.method in RETRYABLE and body is None
    upstream = _forward(proxy, rest, token, body, ranges)
    if upstream.status in (401, 403) and _stale_enough(token):
        # The dashboard no longer accepts this token (revoked or rotated early):
        # forget it, and for requests we can safely replay, try once with a fresh one.
        cache.evict(sub.tenant, sub.id, token)
        logger.info("dashboard refused token status=%s tenant=%s subtenant=%s fingerprint=%s",
                    upstream.status, sub.tenant, sub.id, token.fingerprint)
        if request.method in RETRYABLE and body is None:
            _discard(upstream)
            token = cache.get(sub.tenant, sub.id)
            upstream = _forward(proxy, rest, token, None, ranges)
    if upstream.status == 206 and not scrub.is_binary(upstream.headers.get("Content-Type", "")):
        # A slice of a text answer could cut a token in two, and two slices would hand over
        # both halves unscrubbed: text is only ever sent whole (a server may ignore Range).
        _discard(upstream)
        if not ranges:
            raise UpstreamFailure("dashboard sent a slice of a text answer that was not asked for")
        upstream = _forward(proxy, rest, token, None, ranges=False)
        if upstream.status == 206:
            _discard(upstream)
            raise UpstreamFailure("dashboard sent a slice of a text answer without a Range request")
    g.proxied = True
    # Every token we hold for this team that is still valid: the dashboard may echo an older one.
    pattern = scrub.pattern_for(cache.valid_values(sub.tenant, sub.id, token), ph)
    raw_headers = upstream.headers
    binary = scrub.is_binary(raw_headers.get("Content-Type", ""))
    content_encoding = raw_headers.get("Content-Encoding", "")
    if request.method == "HEAD":
        # No body will be read: give the connection back now and keep the upstream's length.
        headers = _headers(raw_headers, proxy, pattern, decoded=False)
        _discard(upstream)
        return Response(status=upstream.status, headers=headers)
    if not binary and not (scrub.decodable(content_encoding) and
                           scrub.readable_charset(raw_headers.get("Content-Type", ""))):
        upstream.close()
        upstream.release_conn()
        logger.warning("dashboard answer refused: content-encoding %r or type %r cannot be read for scrubbing",
                       content_encoding[:40], raw_headers.get("Content-Type", "")[:80])
        raise UpstreamFailure("dashboard answer in an encoding the gateway cannot read")
    headers = _headers(raw_headers, proxy, pattern, decoded=not binary)
    if not binary:
        small = _small_body(upstream, pattern)
        if small is not None:
            return Response(small, status=upstream.status, headers=headers)
    release = None
    if streams.is_long(raw_headers):
        try:
            release = proxy.slots.take(g.user.subject or g.user.email)
        except streams.TooManyDownloads:
            upstream.close()
            upstream.release_conn()
            raise
    body = _body_stream(upstream, None if binary else pattern)
    if release is not None:
        # werkzeug hands a direct_passthrough body to the server as it is (call_on_close would
        # never run): the server's close() of this iterator gives the slot back, read or not.
        body = ClosingIterator(body, [release])
    return Response(body, status=upstream.status, headers=headers, direct_passthrough=True)


def _headers(raw_headers, proxy: DashboardProxy, pattern: scrub.Pattern, *, decoded: bool):
    return policy.response_headers(raw_headers, pattern=pattern, upstream_origin=proxy.upstream_origin,
                                   upstream_base_path=proxy.upstream_base_path,
                                   decoded=decoded) + proxy.frame_headers


def _stale_enough(token: DashboardToken) -> bool:
    """A token we fetched moments ago is not the problem; don't hammer Zipteams over it."""
    now = current_app.config.get("CLOCK", time.time)()
    return now - token.issued_at > _FRAGILE_FRESHNESS
