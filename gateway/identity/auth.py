"""Login modes, ``login_required`` and logout: the routes and hooks of ``auth``.

- ``header``: behind an authenticating proxy (``gateway.identity.proxied``). A changed
  identity drops the old session.
- ``oidc``: the gateway logs users in at the partner's IdP (``gateway.identity.oidc``).
- ``jwt``: the partner's app hands a user over with a short-lived signed JWT at
  ``/sso/jwt``; each ``jti`` works once, across all workers.
- ``demo``: a login page listing the tenants file's users, for the demo only.

Sessions (``gateway.identity.session``) are renewed at every login (no fixation), and
logout also revokes the session id server-side, so a copied cookie is refused afterwards.
"""
from __future__ import annotations

import functools
import logging
import time

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, session, url_for

from gateway import security
from gateway.errors import GatewayError, Unauthenticated
from gateway.identity.assertions import AssertionRejected
from gateway.identity.proxied import user_from_proxy, verifier
from gateway.identity.session import (SessionEnded, current_time, end_session, renew_idle_timer, session_problem,
                                      start_session)
from gateway.identity.users import ClaimsRejected, User, user_from_claims
from gateway.ops import audit
from gateway.redirects import safe_next
from gateway.tenancy.rules import normalize_email

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
bp.after_app_request(renew_idle_timer)

HANDOFF_MAX_LIFETIME = 300
SIGNOUT_TICKET_SECONDS = 60  # a sign-out continues to GATEWAY_LOGOUT_URL within this
OPEN_ENDPOINTS = frozenset({"static", "ops.healthz", "ops.readyz", "ops.metrics_endpoint", "embed.brand_css",
                            "embed.favicon", "embed.favicon_ico", "sdk.script"})


class HandoffRejected(GatewayError):
    status_code = 401
    code = "handoff_rejected"
    title = "This sign-in link did not work"
    message = "The link that brought you here is invalid, expired or was already used."
    hint = "Go back to the page you came from and open the dashboard again."
    action = None  # the way back is the partner's app, which we cannot link to


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
    problem = session_problem(sess, endpoint)
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
        user = user_from_proxy(req, cfg)
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
                return redirect(url_for("auth.login", next=safe_next(request.full_path)))
            raise Unauthenticated("no identity on the request")
        return view(*args, **kwargs)

    return wrapped


# ------------------------------------------------------------------ login pages
@bp.route("/login", methods=("GET", "POST"))
def login():
    """Demo: pick a user from the tenants file. OIDC: off to the IdP."""
    mode = current_app.config["GATEWAY_AUTH_MODE"]
    next_url = safe_next(request.values.get("next"))
    if mode == "oidc":
        from gateway.identity import oidc  # only in OIDC mode: Authlib is not loaded otherwise

        return oidc.begin_login(next_url)
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
    jwt_verifier = verifier("handoff_verifier", audience=cfg["GATEWAY_HANDOFF_AUDIENCE"],
                            issuer=cfg["GATEWAY_HANDOFF_ISSUER"], secret=cfg["GATEWAY_HANDOFF_SECRET"],
                            jwks_url=cfg["GATEWAY_HANDOFF_JWKS_URL"], max_lifetime=HANDOFF_MAX_LIFETIME,
                            clock=current_app.config.get("CLOCK", time.time))
    try:
        claims = jwt_verifier.verify(request.values.get("jwt", ""))
    except AssertionRejected as exc:
        audit.event("login_refused", mode="jwt", reason=exc.reason)
        raise HandoffRejected(exc.reason) from None
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        audit.event("login_refused", mode="jwt", reason="missing jti")
        raise HandoffRejected("missing jti")
    ttl = max(1.0, claims["exp"] - current_time()) + 60
    if not current_app.extensions["state"].use_once(f"{cfg['GATEWAY_HANDOFF_ISSUER']}|{jti}", ttl):
        audit.event("login_refused", mode="jwt", reason="jti replayed")
        raise HandoffRejected("jti already used")
    try:
        user = user_from_claims(claims, ("email",), "groups")
    except ClaimsRejected as exc:
        audit.event("login_refused", mode="jwt", reason=str(exc))
        raise HandoffRejected(str(exc)) from None
    start_session(user)
    return redirect(safe_next(request.values.get("return_to")), code=303 if request.method == "POST" else 302)


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
        from gateway.identity import oidc

        target = oidc.idp_logout_url(session.get("idt"))
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
