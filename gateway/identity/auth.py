"""Who the user is: login modes, the session, ``login_required`` and logout.

- ``header``: behind an authenticating proxy. Identity comes from the proxy on
  every request: a signed assertion JWT when ``GATEWAY_ASSERTION_HEADER`` is
  set (plain identity headers are then ignored), otherwise identity headers,
  believed only from peers in ``GATEWAY_TRUSTED_PROXIES`` (and only with
  ``GATEWAY_PROXY_SECRET`` when one is set). A changed identity drops the old
  session.
- ``oidc``: the gateway logs users in at the partner's IdP (``gateway.identity.oidc``).
- ``jwt``: the partner's app hands a user over with a short-lived signed JWT at
  ``/sso/jwt``; each ``jti`` works once, across all workers.
- ``demo``: a login page listing the tenants file's users, for the demo only.

Sessions are signed cookies renewed at every login (no fixation), ended by an
idle timeout, an absolute lifetime, or logout, which also revokes the session id
server-side so that a copied cookie is refused afterwards.
"""
from __future__ import annotations

import functools
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from flask import (Blueprint, abort, current_app, g, redirect, render_template, request,
                   session, url_for)

from gateway.ops import audit

from gateway import security
from gateway.identity.assertions import AssertionRejected, JwtVerifier
from gateway.errors import GatewayError, Unauthenticated
from gateway.identity.peers import peer_is_trusted
from gateway.tenancy.rules import normalize_email

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

HANDOFF_MAX_LIFETIME = 300
ASSERTION_REMEMBER_SECONDS = 60  # a proxy's assertion, once verified (see gateway.identity.assertions)
SIGNOUT_TICKET_SECONDS = 60  # a sign-out continues to GATEWAY_LOGOUT_URL within this
SEEN_GRANULARITY = 60  # rewrite the cookie's last-seen time at most once a minute
OPEN_ENDPOINTS = frozenset({"static", "ops.healthz", "ops.readyz", "ops.metrics_endpoint", "embed.brand_css",
                            "embed.favicon", "embed.favicon_ico", "sdk.script"})
# Asked without a person asking: an open page's timers, and the dashboard's own traffic
# (its background polling goes through /dashboard/). They must not keep an idle session
# alive; what does is a top-level page, a form, and the embed page's activity signal
# (embed.session_activity: pointer or keyboard use, reported at most once a minute).
PASSIVE_ENDPOINTS = frozenset({"embed.session_status", "embed.renew_frame", "proxy.dashboard"})


class HandoffRejected(GatewayError):
    status_code = 401
    code = "handoff_rejected"
    title = "This sign-in link did not work"
    message = "The link that brought you here is invalid, expired or was already used."
    hint = "Go back to the page you came from and open the dashboard again."
    action = None  # the way back is the partner's app, which we cannot link to


class SessionEnded(Unauthenticated):
    code = "session_ended"
    title = "Your session has ended"
    message = "You were signed out, or were away for a while, so the dashboard is no longer shown."
    hint = "Sign in again to continue."
    action = "signin"
    action_text = "Sign in again"


@dataclass(frozen=True)
class User:
    email: str
    groups: tuple[str, ...] = ()
    subject: str | None = None  # (issuer, sub) for OIDC users; email is for rules, not identity


def _now() -> float:
    return current_app.config.get("CLOCK", time.time)()


def start_session(user: User, **extra) -> None:
    """Begin a fresh session for ``user``: nothing from before login survives (no fixation)."""
    session.clear()
    now = int(_now())
    session.update(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(24), email=user.email,
                   iat=now, seen=now, **extra)
    if current_app.config["GATEWAY_AUTH_MODE"] != "header":
        # Behind a proxy the groups come with every request; otherwise the cookie keeps only
        # the ones the rules name, so it stays small for a user in hundreds of groups (a
        # cookie over 4 KB is dropped by browsers). A group a reloaded rule names later
        # counts from the user's next sign-in.
        session["groups"] = list(current_app.extensions["rules"].current().named_groups(user.groups))
    if user.subject:
        session["subject"] = user.subject
    audit.event("login", email=user.email, mode=current_app.config["GATEWAY_AUTH_MODE"],
                groups=len(user.groups))


def end_session(reason: str) -> None:
    """Forget the session here and revoke its id everywhere."""
    sid = session.get("sid")
    if sid:
        current_app.extensions["state"].revoke_session(sid, current_app.config["GATEWAY_SESSION_MAX"])
    session.clear()
    logger.info("session ended reason=%s", reason)


def _session_problem(sess, endpoint: str | None) -> str | None:
    """Why the current session may not be used any more, if it may not."""
    sid = sess.get("sid")
    if not sid:
        return None
    app = current_app._get_current_object()
    cfg = app.config
    now = _now()
    started, seen = sess.get("iat"), sess.get("seen")
    if not isinstance(started, int) or not isinstance(seen, int):
        return "malformed"
    if now - started > cfg["GATEWAY_SESSION_MAX"]:
        return "max-lifetime"
    if now - seen > cfg["GATEWAY_SESSION_IDLE"]:
        return "idle"
    if app.extensions["state"].session_revoked(sid):
        return "revoked"
    if now - seen >= SEEN_GRANULARITY and endpoint not in PASSIVE_ENDPOINTS:
        g.renew_seen = True  # if the answer shows a person asked for it (renew_idle_timer)
    return None


def _person_asked(req) -> bool:
    """Whether a person, not a script, sent this request (Fetch Metadata, where the browser sends it)."""
    if req.endpoint == "embed.session_activity":
        return True  # the page's own report of pointer or keyboard use (CSRF-checked)
    mode = req.headers.get("Sec-Fetch-Mode")
    if mode is None:
        return True  # no Fetch Metadata (an older browser, a client of the proxy): nothing to tell by
    if req.method == "GET":
        # Typed, clicked or reloaded: not a page's own retry or redirect by script.
        return mode == "navigate" and req.headers.get("Sec-Fetch-User") == "?1"
    return True  # a form that passed its CSRF check (refused ones are 4xx and renew nothing)


@bp.after_app_request
def renew_idle_timer(response):
    """Renew the idle timer only for an answer that served a person's own request.

    After the view, not before: a refused request (a cross-site POST without its CSRF
    token, an unknown path: 4xx) or a script's retry must not keep a session alive.
    """
    if g.get("renew_seen") and response.status_code < 400 and _person_asked(request) and "sid" in session:
        session["seen"] = int(_now())
    return response


# ------------------------------------------------------------------ header mode
def _verifier(name: str, **kwargs) -> JwtVerifier:
    verifier = current_app.extensions.get(name)
    if verifier is None:
        verifier = current_app.extensions[name] = JwtVerifier(**kwargs)
    return verifier


def _user_from_proxy(req, cfg) -> User | None:
    headers = req.headers
    if not peer_is_trusted(req.remote_addr, cfg["GATEWAY_TRUSTED_PROXIES"]):
        if headers.get(cfg["GATEWAY_USER_HEADER"]) is not None or (
                cfg["GATEWAY_ASSERTION_HEADER"] and headers.get(cfg["GATEWAY_ASSERTION_HEADER"])):
            # Anyone can type a header; only the proxy's count.
            logger.warning("identity header ignored: peer %s is not a trusted proxy", req.remote_addr)
        return None
    if cfg["GATEWAY_PROXY_SECRET"]:
        sent = headers.get(cfg["GATEWAY_PROXY_SECRET_HEADER"], "")
        if not hmac.compare_digest(sent.encode(), cfg["GATEWAY_PROXY_SECRET"].encode()):
            logger.warning("identity ignored: the proxy secret header is missing or wrong")
            return None
    if cfg["GATEWAY_ASSERTION_HEADER"]:
        return _user_from_assertion(headers.get(cfg["GATEWAY_ASSERTION_HEADER"], ""))
    # A WSGI server joins repeated headers into one value ("a, b"), which is not
    # one well-formed address and is refused below; get() reads the environ key
    # directly, where getlist() would walk the whole environ on every request.
    value = headers.get(cfg["GATEWAY_USER_HEADER"])
    if value is None:
        return None
    user = _identity(value, headers.get(cfg["GATEWAY_GROUPS_HEADER"], ""))
    if user is None:
        logger.warning("identity header ignored: not one well-formed email address")
    return user


@functools.lru_cache(maxsize=4096)
def _identity(email_header: str, groups_header: str) -> User | None:
    """The user the proxy's headers name; the same headers arrive with every request of a user."""
    email = normalize_email(email_header)
    if email is None:
        return None
    return User(email, tuple(dict.fromkeys(x.strip() for x in groups_header.split(",") if x.strip())))


def _claims_user(claims: dict, email_claim: str, groups_claim: str) -> User | None:
    email = claims.get(email_claim)
    email = normalize_email(email) if isinstance(email, str) else None
    if email is None:
        return None
    groups = claims.get(groups_claim) or []
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        groups = []
    return User(email, tuple(dict.fromkeys(str(x) for x in groups if isinstance(x, (str, int)))))


def _user_from_assertion(token: str) -> User | None:
    if not token:
        return None
    cfg = current_app.config
    verifier = _verifier("assertion_verifier", audience=cfg["GATEWAY_ASSERTION_AUDIENCE"],
                         issuer=cfg["GATEWAY_ASSERTION_ISSUER"], jwks_url=cfg["GATEWAY_ASSERTION_JWKS_URL"],
                         remember=ASSERTION_REMEMBER_SECONDS)
    try:
        claims = verifier.verify(token)
    except AssertionRejected as exc:
        logger.warning("identity assertion refused: %s", exc.reason)
        return None
    return _claims_user(claims, "email", "groups")


@bp.before_app_request
def load_user() -> None:
    """Set ``g.user`` for this request, ending a session that may not be used any more."""
    # The request-local objects are bound once: each proxy lookup costs, and this runs on every request.
    ctx, req = g._get_current_object(), request._get_current_object()
    ctx.user = None
    endpoint = req.endpoint
    if endpoint in OPEN_ENDPOINTS:
        return
    sess = session._get_current_object()
    problem = _session_problem(sess, endpoint)
    if problem:
        # "Sign in again" comes back to the team this session showed (errors.render_error).
        ctx.ended_team = sess.get("subtenant")
    if problem == "revoked":
        sess.clear()
        ctx.session_ended = problem
    elif problem:
        end_session(problem)
        ctx.session_ended = problem
    cfg = current_app.config
    if cfg["GATEWAY_AUTH_MODE"] == "header":
        user = _user_from_proxy(req, cfg)
        if user is None:
            # Without the proxy vouching for this request, a cookie alone is not enough.
            sess.clear()
            return
        if sess.get("email") != user.email or "sid" not in sess:
            start_session(user)
        ctx.user = user  # groups as the proxy sent them with this request
    elif "email" in sess and "sid" in sess:
        ctx.user = User(sess["email"], tuple(sess.get("groups", ())), sess.get("subject"))


def login_required(view):
    """Refuse anonymous requests: 401 page, or the login page for a browser in demo/OIDC mode."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            mode = current_app.config["GATEWAY_AUTH_MODE"]
            if g.get("session_ended"):
                # Said plainly, not a silent bounce to a login page (and never inside the frame).
                raise SessionEnded(f"session ended: {g.session_ended}")
            if mode in ("demo", "oidc") and request.method == "GET" and request.endpoint != "proxy.dashboard":
                return redirect(url_for("auth.login", next=security.safe_next(request.full_path)))
            raise Unauthenticated("no identity on the request")
        return view(*args, **kwargs)

    return wrapped


# ------------------------------------------------------------------ login pages
@bp.route("/login", methods=("GET", "POST"))
def login():
    """Demo: pick a user from the tenants file. OIDC: off to the IdP."""
    mode = current_app.config["GATEWAY_AUTH_MODE"]
    next_url = security.safe_next(request.values.get("next"))
    if mode == "oidc":
        from gateway.identity.oidc import begin_login

        return begin_login(next_url)
    if mode != "demo":
        abort(404)
    rules = current_app.extensions["rules"].current()
    # The demo command adds users no rule names, so the "not linked to a team" page can be seen.
    users = rules.users() + [u for u in current_app.config.get("DEMO_EXTRA_USERS", ()) if u not in rules.users()]
    if request.method == "POST":
        security.require_csrf()
        email = normalize_email(request.form.get("email", ""))
        if email is None or email not in users:
            raise Unauthenticated("demo login for a user not in the tenants file")
        start_session(User(email))
        return redirect(next_url)
    security.ensure_csrf()
    return render_template("login.html", users=[(email, len(rules.match(email))) for email in users],
                           next_url=next_url)


@bp.route("/sso/jwt", methods=("GET", "POST"))
def handoff():
    """JWT hand-off from the partner's app: verify, use the jti once, start a session.

    GET ``?jwt=`` or, for tokens too large for a URL (many groups), a form POST with the
    same field; ``return_to`` likewise.
    """
    cfg = current_app.config
    if cfg["GATEWAY_AUTH_MODE"] != "jwt":
        abort(404)
    verifier = _verifier("handoff_verifier", audience=cfg["GATEWAY_HANDOFF_AUDIENCE"],
                         issuer=cfg["GATEWAY_HANDOFF_ISSUER"], secret=cfg["GATEWAY_HANDOFF_SECRET"],
                         jwks_url=cfg["GATEWAY_HANDOFF_JWKS_URL"], max_lifetime=HANDOFF_MAX_LIFETIME,
                         clock=current_app.config.get("CLOCK", time.time))
    try:
        claims = verifier.verify(request.values.get("jwt", ""))
    except AssertionRejected as exc:
        audit.event("login_refused", mode="jwt", reason=exc.reason)
        raise HandoffRejected(exc.reason) from None
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        audit.event("login_refused", mode="jwt", reason="missing jti")
        raise HandoffRejected("missing jti")
    ttl = max(1.0, claims["exp"] - _now()) + 60
    if not current_app.extensions["state"].use_once(f"{cfg['GATEWAY_HANDOFF_ISSUER']}|{jti}", ttl):
        audit.event("login_refused", mode="jwt", reason="jti replayed")
        raise HandoffRejected("jti already used")
    user = _claims_user(claims, "email", "groups")
    if user is None:
        audit.event("login_refused", mode="jwt", reason="no well-formed email claim")
        raise HandoffRejected("no well-formed email claim")
    start_session(user)
    return redirect(security.safe_next(request.values.get("return_to")), code=303 if request.method == "POST" else 302)


@bp.route("/logout", methods=("POST",))
def logout():
    """End the session here, then (Post/Redirect/Get) continue at /signed-out.

    The sign-out at the IdP or at GATEWAY_LOGOUT_URL is a plain navigation from that
    same-origin page, never a redirect of this form post: CSP form-action covers every
    redirect of a form submission, and ours allows only 'self'.
    """
    security.require_csrf()
    if g.user is not None:
        audit.event("logout", email=g.user.email)
    onward = _onward_signout()
    end_session("logout")
    if onward is not None and current_app.config["GATEWAY_AUTH_MODE"] != "oidc":
        # Behind an identity proxy the next request starts a fresh session from its headers,
        # so a signed, short-lived ticket says "continue to GATEWAY_LOGOUT_URL" instead.
        return redirect(url_for("auth.signed_out", bye=_tickets().dumps("bye")), code=303)
    if onward is not None:
        session["signout_next"] = onward  # kept in the now anonymous session for one page
    return redirect(url_for("auth.signed_out"), code=303)


def _tickets():
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(current_app.secret_key, salt="gateway-signed-out")


def _onward_signout() -> str | None:
    """Where the browser should go next to end the session at the IdP or the partner's proxy."""
    if current_app.config["GATEWAY_AUTH_MODE"] == "oidc":
        from gateway.identity.oidc import idp_logout_url

        target = idp_logout_url(session.get("idt"))
        if target:
            return target
    return current_app.config["GATEWAY_LOGOUT_URL"] or None


@bp.route("/signed-out")
def signed_out():
    from itsdangerous import BadData

    onward = session.pop("signout_next", None)
    ticket = request.args.get("bye")
    if onward is None and ticket:
        try:
            _tickets().loads(ticket, max_age=SIGNOUT_TICKET_SECONDS)
            onward = current_app.config["GATEWAY_LOGOUT_URL"] or None
        except BadData:
            onward = None
    return render_template("signed_out.html", onward=onward if isinstance(onward, str) else None)
