"""The call to the dashboard: one urllib3 pool per process, and what each request sends it.

The browser's request goes on reduced to what the dashboard may see (the headers
``policy`` allows, the dashboard's own cookies, our ``X-Forwarded-*``), its query with
any token parameter of the browser's removed and ours put in its designated place, and
its body streamed within ``GATEWAY_PROXY_MAX_BODY``. urllib3's failures become the
gateway's errors (502, 504, 413, 400). Reading the answer is ``relay``'s.

Under gevent a request without a body gets its answer's head within twice ``ZIPTEAMS_TIMEOUT``
in all (connect, then answer; ``bounded.limit``), however a server trickles it: urllib3's
time-outs are per read and restart with each byte.
"""
from __future__ import annotations

from typing import Iterator
from urllib.parse import unquote_plus, urlsplit

import urllib3
from flask import current_app, g, request
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from gateway import bounded
from gateway.errors import BadRequestBody, GatewayError, PayloadTooLarge, UpstreamFailure, UpstreamTimeout
from gateway.peers import peer_is_trusted
from gateway.tokens.client import DashboardToken
from gateway.delivery.proxy import policy, streams

CHUNK = 64 * 1024
RANGES = frozenset({"range", "if-range"})


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
        self.timeout = timeout
        self.gevent_server = bounded.under_gevent()  # decided once: gunicorn.conf.py patches first
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


def request_body(proxy: DashboardProxy) -> RequestBody | None:
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
        # A body's upload takes as long as its size and the link need: per-read time-outs only.
        with bounded.limit(2 * proxy.timeout, proxy.gevent_server and body is None):
            return proxy.pool.urlopen(request.method, url, body=data, headers=headers, redirect=False,
                                      retries=False, chunked=chunked, preload_content=False,
                                      decode_content=False, assert_same_host=False)
    except GatewayError:
        raise
    except bounded.TimedOut:
        raise UpstreamTimeout(f"dashboard's answer head not complete within {2 * proxy.timeout:g} s in all") from None
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


def forward(proxy: DashboardProxy, rest: str, token: DashboardToken, body, ranges: bool = True):
    """The current request, sent on to ``rest`` under the dashboard's base path with ``token``; its answer unread."""
    url = proxy.upstream_base_path + rest
    query = _forward_query(token.value, proxy)
    if query:
        url += "?" + query
    return _send(proxy, url, _forward_headers(token.value, proxy, ranges), body)


def discard(upstream, proxy: DashboardProxy) -> None:
    """An answer we will not pass on: read it off so the connection can go back to the pool, within
    ``ZIPTEAMS_TIMEOUT`` in all under gevent (a trickled body is not worth waiting for: closed)."""
    try:
        with bounded.limit(proxy.timeout, proxy.gevent_server):
            upstream.drain_conn()
    except bounded.TimedOut:
        upstream.close()  # half read: never back to the pool
    upstream.release_conn()
