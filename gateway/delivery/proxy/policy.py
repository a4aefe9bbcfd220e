"""What crosses between the browser and the dashboard: headers and cookies, both ways.

Requests: an explicit allow-list of what a browser legitimately sends to a web
app, plus names the partner adds (``GATEWAY_PROXY_FORWARD_HEADERS``; identity,
assertion and secret headers are refused at start-up). Everything else stays
here, whatever its name: the SSO proxy's access tokens and assertions, its
shared secret, tenant headers, our session cookie. ``Origin`` and ``Referer``
are rewritten to the dashboard's own origin and path, never passed as sent.

Cookies: the dashboard's cookies are namespaced on the way out
(``zd_<name>``, ``Path=/dashboard/``, no ``Domain``) and only those go back,
un-prefixed; no other cookie of our origin ever reaches the dashboard.

Responses: every header is scrubbed of tokens; headers that would act on our
whole origin (CORS grants, ``Clear-Site-Data``, HSTS, reporting endpoints) or
that we set ourselves (framing) are dropped.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

BASE = "/dashboard/"
COOKIE_PREFIX = "zd_"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "proxy-connection", "proxy-authenticate", "proxy-authorization"})
# What a browser sends a web app that the app may need: content negotiation, caching and
# ranges, the body's description, who is asking, and Fetch Metadata (seen from the
# dashboard's point of view, the request is same-origin, as we rewrite Origin to match).
FORWARD_REQUEST = frozenset({
    "accept", "accept-language", "cache-control", "pragma", "if-match", "if-none-match",
    "if-modified-since", "if-unmodified-since", "if-range", "range", "content-type",
    "content-language", "content-encoding", "user-agent", "x-requested-with",
    "sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "sec-fetch-user",
})
# Never forwardable, even when a partner lists them: credentials and identity, what we set
# ourselves, and the vendor API's own headers.
NEVER_FORWARD = frozenset({
    "cookie", "authorization", "host", "origin", "referer", "content-length", "accept-encoding",
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip",
    "x-forwarded-access-token", "x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
    "x-forwarded-preferred-username", "x-auth-request-access-token", "x-auth-request-user",
    "x-auth-request-email", "x-auth-request-groups", "x-pomerium-jwt-assertion",
    "cf-access-jwt-assertion", "cf-access-client-secret", "x-amzn-oidc-data", "x-amzn-oidc-accesstoken",
    "x-goog-iap-jwt-assertion", "x-ms-token-aad-access-token", "x-ms-token-aad-id-token",
    "x-gateway-proxy-secret", "x-api-key", "x-api-secret", "x-tenant-id", "x-sub-tenant-id",
    "x-request-id",
}) | HOP_BY_HOP
# Response headers that would act on our whole origin or that the gateway sets itself.
DROP_RESPONSE = frozenset({
    "server", "date", "x-frame-options", "clear-site-data", "strict-transport-security", "alt-svc",
    "public-key-pins", "public-key-pins-report-only", "nel", "report-to", "reporting-endpoints",
    "service-worker-allowed", "access-control-allow-origin", "access-control-allow-credentials",
    "access-control-allow-headers", "access-control-allow-methods", "access-control-expose-headers",
    "access-control-max-age", "access-control-allow-private-network",
    # The gateway's own error signal to its page: the dashboard must not be able to forge it.
    "x-gateway-error",
}) | HOP_BY_HOP


def forbidden_names(cfg) -> frozenset:
    """Header names no partner setting may forward: the fixed list plus the configured identity ones."""
    own = {cfg["GATEWAY_USER_HEADER"], cfg["GATEWAY_GROUPS_HEADER"], cfg["GATEWAY_PROXY_SECRET_HEADER"],
           cfg["GATEWAY_ASSERTION_HEADER"]}
    return NEVER_FORWARD | {name.lower() for name in own if name}


def request_headers(headers, *, allowed: frozenset, host: str, upstream_origin: str,
                    upstream_base_path: str) -> dict[str, str]:
    """The browser's headers that may reach the dashboard, Origin and Referer rewritten."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in allowed:
            out[name] = value
    origin = headers.get("Origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() == host.lower():
        out["Origin"] = upstream_origin  # same-origin for the dashboard, as if framed directly
    referer = headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        if parts.netloc.lower() == host.lower():
            # The dashboard's own page that asked, without its query (which may hold a placeholder).
            path = parts.path[len(BASE):] if parts.path.startswith(BASE) else ""
            out["Referer"] = upstream_origin + upstream_base_path + path
    return out


def dashboard_cookies(cookie_header: str) -> str:
    """Only the dashboard's own (namespaced) cookies go back to it, under their own names.

    Taken from the raw header pair by pair, never unquoted and re-joined: a quoted
    value holding "; name=value" must not turn into a second cookie upstream.
    """
    kept = []
    for pair in cookie_header.split(";"):
        name, eq, value = pair.strip().partition("=")
        own = name[len(COOKIE_PREFIX):] if name.startswith(COOKIE_PREFIX) else ""
        if eq and _COOKIE_NAME.match(own) and _COOKIE_VALUE.match(value):
            kept.append(f"{own}={value}")
    return "; ".join(kept)


_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 6265 cookie-value: cookie-octets, or the same inside one pair of double quotes.
_COOKIE_VALUE = re.compile(r'^(?:"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"|[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)$')


def rewrite_set_cookie(value: str) -> str | None:
    """The dashboard's cookie, namespaced and scoped to the dashboard path; None to drop it."""
    first, _, rest = value.partition(";")
    name, eq, cookie_value = first.partition("=")
    name = name.strip()
    if not eq or not _COOKIE_NAME.match(name):
        return None
    attrs = [a.strip() for a in rest.split(";") if a.strip()]
    kept = [a for a in attrs if a.split("=", 1)[0].strip().lower() not in ("domain", "path", "partitioned")]
    return "; ".join([f"{COOKIE_PREFIX}{name}={cookie_value.strip()}", "Path=" + BASE] + kept)


def rewrite_location(value: str, upstream_origin: str, upstream_base_path: str) -> str:
    parts = urlsplit(value)
    if parts.netloc and f"{parts.scheme}://{parts.netloc}" != upstream_origin:
        return value  # somewhere else entirely: not ours to rewrite
    if parts.netloc or value.startswith("/"):
        if not parts.path.startswith(upstream_base_path):
            return value
        rewritten = BASE + parts.path[len(upstream_base_path):]
        if parts.query:
            rewritten += "?" + parts.query
        if parts.fragment:
            rewritten += "#" + parts.fragment
        return rewritten
    return value  # relative: resolves under /dashboard/ in the browser already


def response_headers(raw_headers, *, pattern, upstream_origin: str, upstream_base_path: str,
                     decoded: bool) -> list[tuple[str, str]]:
    """The dashboard's response headers as the browser may see them, every value scrubbed."""
    connection = raw_headers.get("Connection", "")
    drop = set(DROP_RESPONSE) | {h.strip().lower() for h in connection.split(",") if h.strip()}
    if decoded:
        # The body is decoded and may change length: the server frames it anew.
        drop.update(("content-encoding", "content-length"))
    out: list[tuple[str, str]] = []
    for name, value in raw_headers.items():  # items() keeps repeated Set-Cookie lines apart
        lower = name.lower()
        if lower in drop or lower.startswith("proxy-"):
            continue
        value = pattern.sub_text(value)
        if lower == "set-cookie":
            value = rewrite_set_cookie(value)
            if value is None:
                continue
        elif lower in ("location", "content-location"):
            value = rewrite_location(value, upstream_origin, upstream_base_path)
        elif lower == "cache-control":
            # Per-user content: shared caches may not keep it.
            value = re.sub(r"\bpublic\b", "private", value, flags=re.IGNORECASE)
        out.append((name, value))
    return out
