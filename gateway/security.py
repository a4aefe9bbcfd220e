"""Browser-facing protections: response headers, CSP, CSRF and safe redirect targets."""
from __future__ import annotations

import hmac
import re
import logging
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, g, request, session

from gateway.errors import CsrfRejected

logger = logging.getLogger(__name__)
bp = Blueprint("security", __name__)


def build_csp(frame_src: str, frame_ancestors: str, img_src: str = "'self' data:") -> str:
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src {img_src}",
        "connect-src 'self'",
        f"frame-src {frame_src}",
        "form-action 'self'",
        "base-uri 'none'",
        f"frame-ancestors {frame_ancestors}",
    ))


def init_app(app: Flask) -> None:
    cfg = app.config
    if cfg["GATEWAY_EMBED_MODE"] == "iframe":
        parts = urlsplit(cfg["ZIPTEAMS_DASHBOARD_URL"])
        frame_src = f"{parts.scheme}://{parts.netloc}"
    else:
        frame_src = "'self'"
    img_src = "'self' data:"
    logo = cfg["GATEWAY_BRAND_LOGO_URL"]
    if logo.startswith("https://"):
        parts = urlsplit(logo)
        img_src += f" https://{parts.netloc}"
    # Computed once: the same for every page the gateway renders.
    app.extensions["csp"] = build_csp(frame_src, cfg["GATEWAY_FRAME_ANCESTORS"], img_src)
    # Origins a framed page may report its status to and take commands from (postMessage):
    # the explicit ones in frame-ancestors (a *. host wildcard included), and ours for 'self'.
    app.jinja_env.globals["parent_origins"] = " ".join(
        "self" if source == "'self'" else source for source in cfg["GATEWAY_FRAME_ANCESTORS"].split()
        if source == "'self'" or re.fullmatch(r"https?://(\*\.)?[A-Za-z0-9.-]+(:\d+)?", source))
    app.jinja_env.globals["brand"] = {"name": cfg["GATEWAY_BRAND_NAME"], "logo": logo}
    app.jinja_env.globals["help_url"] = cfg["GATEWAY_HELP_URL"]
    # Where "sign in again" leads: our login page where we have one, else the start page
    # (behind an SSO proxy or a partner app, that is where a new sign-in begins).
    app.jinja_env.globals["signin_url"] = "/login" if cfg["GATEWAY_AUTH_MODE"] in ("demo", "oidc") else "/"
    app.extensions["page_headers"] = _STATIC + _with_lower((("Content-Security-Policy", app.extensions["csp"]),
                                                            ("Cache-Control", "no-store")))
    app.jinja_env.globals["csrf_token"] = ensure_csrf
    app.register_blueprint(bp)


@bp.after_app_request
def set_security_headers(response):
    endpoint = request.endpoint
    static = endpoint in ("static", "embed.brand_css", "embed.favicon", "embed.favicon_ico", "sdk.script")
    if static:
        defaults = _STATIC
    elif g.get("proxied"):
        # The dashboard's own page: keep its CSP and caching rules (the proxy adds
        # our framing policy beside them); no shared cache may keep one user's data.
        defaults = _PROXIED
    else:
        # Every page depends on who is signed in: never cache it, never share it.
        defaults = current_app.extensions["page_headers"]
    headers = response.headers
    # One pass over the headers already set, then one extend: werkzeug's Headers
    # scans its whole list on every lookup and set, and this runs on every response.
    present = {name.lower() for name, _ in headers}
    headers.extend([(name, value) for lower, name, value in defaults if lower not in present])
    if not static:
        if "vary" not in present:
            headers.add("Vary", "Cookie")
        else:
            vary = headers.get("Vary", "")
            if "cookie" not in vary.lower():
                headers["Vary"] = f"{vary}, Cookie" if vary else "Cookie"
    return response


def _with_lower(pairs: tuple) -> tuple:
    return tuple((name.lower(), name, value) for name, value in pairs)


_STATIC = _with_lower((("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")))
# Proxied answers carry our framing policy beside the dashboard's own CSP (gateway.delivery.proxy).
_PROXIED = _STATIC + _with_lower((("Cache-Control", "no-store"),))


def ensure_csrf() -> str:
    """The session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def _same_host(url: str) -> bool:
    # Hosts only: behind a TLS-terminating proxy our own scheme may read http.
    return urlsplit(url).netloc.lower() == request.host.lower()


def refuse_cross_site(*, need_origin: bool) -> None:
    """The one cross-site check for state-changing requests (forms and proxied writes).

    Fetch Metadata decides where the browser sends it. ``Origin: null`` counts only
    beside ``Sec-Fetch-Site: same-origin`` (browsers send it for our own pages, whose
    Referrer-Policy is no-referrer). Without Fetch Metadata (older browsers), a
    foreign Origin is refused, and with ``need_origin`` (requests no CSRF token
    protects) a same-origin Origin or Referer is required.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise CsrfRejected(f"cross-site request (Sec-Fetch-Site: {site[:20]})")
    origin = request.headers.get("Origin")
    if origin == "null":
        if site != "same-origin":
            raise CsrfRejected("opaque origin without Sec-Fetch-Site: same-origin")
    elif origin is not None:
        if not _same_host(origin):
            raise CsrfRejected("request from another origin")
    elif need_origin and site is None:
        referer = request.headers.get("Referer")
        if not referer or not _same_host(referer):
            raise CsrfRejected("no Fetch Metadata, Origin or same-origin Referer")


def require_csrf() -> None:
    """Refuse a state-changing request that is cross-site or lacks the session's token."""
    refuse_cross_site(need_origin=False)
    expected = session.get("csrf")
    sent = request.form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise CsrfRejected("missing or wrong CSRF token")
