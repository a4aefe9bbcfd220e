"""The proxy view: check the request, attach the token server-side, stream the answer back scrubbed.

Which team and token a request is for, the retry with a fresh token when the dashboard
refuses one, and text answers only ever whole; the call itself is ``upstream``'s and
the answer's scrubbing ``relay``'s.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, g, request
from werkzeug.wsgi import ClosingIterator

from gateway import security
from gateway.config import ConfigError
from gateway.errors import ChoiceNeeded, CsrfRejected, NotFound, UpstreamFailure
from gateway.memo import Memo
from gateway.ops import audit
from gateway.tenancy.choice import NeedsChoice, current_subtenant, user_matches
from gateway.tokens import cache as tokens
from gateway.identity.auth import login_required
from gateway.tokens.client import DashboardToken
from gateway.delivery.proxy import pages, policy, relay, scrub, streams
from gateway.delivery.proxy.paths import raw_request_uri, upstream_path
from gateway.delivery.proxy.placeholders import bound_match, placeholder_for
from gateway.delivery.proxy.upstream import DashboardProxy, discard, forward, request_body

logger = logging.getLogger(__name__)
bp = Blueprint("proxy", __name__)

BASE = policy.BASE
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RETRYABLE = SAFE_METHODS  # idempotent and without a body to replay
_FRAGILE_FRESHNESS = 30.0  # a token younger than this is not evicted on a 401/403


def init_app(app) -> None:
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
    # As many as the users remembered elsewhere (gateway.tenancy.rules.MEMO_SIZE); a miss is one HMAC.
    app.extensions["placeholders"] = Memo(4096, admit_on_repeat=True)
    app.register_blueprint(bp)


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
    body = request_body(proxy)
    token = cache.get(sub.tenant, sub.id)
    # Byte ranges only where a slice can be asked for again whole if it is text (below).
    ranges = request.method in RETRYABLE and body is None
    upstream = forward(proxy, rest, token, body, ranges)
    if upstream.status in (401, 403) and _stale_enough(token):
        # The dashboard no longer accepts this token (revoked or rotated early):
        # forget it, and for requests we can safely replay, try once with a fresh one.
        cache.evict(sub.tenant, sub.id, token)
        logger.info("dashboard refused token status=%s tenant=%s subtenant=%s fingerprint=%s",
                    upstream.status, sub.tenant, sub.id, token.fingerprint)
        if request.method in RETRYABLE and body is None:
            discard(upstream, proxy)
            token = cache.get(sub.tenant, sub.id)
            upstream = forward(proxy, rest, token, None, ranges)
    if upstream.status == 206 and not scrub.is_binary(upstream.headers.get("Content-Type", "")):
        # A slice of a text answer could cut a token in two, and two slices would hand over
        # both halves unscrubbed: text is only ever sent whole (a server may ignore Range).
        discard(upstream, proxy)
        if not ranges:
            raise UpstreamFailure("dashboard sent a slice of a text answer that was not asked for")
        upstream = forward(proxy, rest, token, None, ranges=False)
        if upstream.status == 206:
            discard(upstream, proxy)
            raise UpstreamFailure("dashboard sent a slice of a text answer without a Range request")
    if pages.failed_document(upstream.status, request.environ):
        # The frame's own page failed: the user gets the gateway's page, never the raw error.
        # Closed, not drained: a failing server's body is not worth waiting for.
        upstream.close()
        upstream.release_conn()
        raise pages.refusal(upstream.status, proxy.base_url, rest)
    g.proxied = True
    # Every token we hold for this team that is still valid: the dashboard may echo an older one.
    pattern = scrub.pattern_for(cache.valid_values(sub.tenant, sub.id, token), ph)
    raw_headers = upstream.headers
    binary = scrub.is_binary(raw_headers.get("Content-Type", ""))
    content_encoding = raw_headers.get("Content-Encoding", "")
    if request.method == "HEAD":
        # No body will be read: give the connection back now and keep the upstream's length.
        headers = relay.answer_headers(raw_headers, proxy, pattern, decoded=False)
        discard(upstream, proxy)
        return Response(status=upstream.status, headers=headers)
    if not binary and not (scrub.decodable(content_encoding) and
                           scrub.readable_charset(raw_headers.get("Content-Type", ""))):
        upstream.close()
        upstream.release_conn()
        logger.warning("dashboard answer refused: content-encoding %r or type %r cannot be read for scrubbing",
                       content_encoding[:40], raw_headers.get("Content-Type", "")[:80])
        raise UpstreamFailure("dashboard answer in an encoding the gateway cannot read")
    headers = relay.answer_headers(raw_headers, proxy, pattern, decoded=not binary)
    if not binary:
        small = relay.small_body(upstream, pattern, proxy)
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
    body = relay.body_stream(upstream, None if binary else pattern)
    if release is not None:
        # werkzeug hands a direct_passthrough body to the server as it is (call_on_close would
        # never run): the server's close() of this iterator gives the slot back, read or not.
        body = ClosingIterator(body, [release])
    return Response(body, status=upstream.status, headers=headers, direct_passthrough=True)


def _stale_enough(token: DashboardToken) -> bool:
    """A token we fetched moments ago is not the problem; don't hammer Zipteams over it."""
    now = current_app.config.get("CLOCK", time.time)()
    return now - token.issued_at > _FRAGILE_FRESHNESS
