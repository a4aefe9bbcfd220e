"""Who the user is: login modes, the session, ``login_required`` and logout.

``header`` mode trusts identity headers (``X-Forwarded-Email`` and
``X-Forwarded-Groups`` by default) only from peers in
``GATEWAY_TRUSTED_PROXIES``; they are read on every request, so the proxy stays
the authority and a changed identity drops the old session. ``demo`` mode is a
login page listing the tenants file's users, for ``python -m gateway demo``.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import secrets
from dataclasses import dataclass

from flask import (Blueprint, abort, current_app, g, redirect, render_template, request,
                   session, url_for)

from . import audit, security
from .errors import Unauthenticated
from .tenants import normalize_email

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)


@dataclass(frozen=True)
class User:
    email: str
    groups: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1024)
def peer_is_trusted(addr: str | None, networks) -> bool:
    """True when the connecting peer's address lies in one of ``networks`` (a tuple)."""
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def start_session(user: User) -> None:
    """Begin a fresh session for ``user``: nothing from before login survives (no fixation)."""
    session.clear()
    session["sid"] = secrets.token_urlsafe(16)
    session["csrf"] = secrets.token_urlsafe(24)
    session["email"] = user.email
    session["groups"] = list(user.groups)
    audit.event("login", email=user.email, mode=current_app.config["GATEWAY_AUTH_MODE"],
                groups=len(user.groups))


def _user_from_headers() -> User | None:
    cfg = current_app.config
    raw = request.headers.get(cfg["GATEWAY_USER_HEADER"])
    if raw is None:
        return None
    if not peer_is_trusted(request.remote_addr, cfg["GATEWAY_TRUSTED_PROXIES"]):
        # Anyone can type a header; only the proxy's count.
        logger.warning("identity header ignored: peer %s is not a trusted proxy", request.remote_addr)
        return None
    email = normalize_email(raw)
    if email is None:
        logger.warning("identity header ignored: not one well-formed email address")
        return None
    groups_raw = request.headers.get(cfg["GATEWAY_GROUPS_HEADER"], "")
    groups = tuple(dict.fromkeys(x.strip() for x in groups_raw.split(",") if x.strip()))
    return User(email, groups)


@bp.before_app_request
def load_user() -> None:
    """Set ``g.user`` from the proxy's headers (header mode) or the session (demo)."""
    g.user = None
    if request.endpoint in ("static", "ops.healthz", "ops.readyz", "ops.metrics"):
        return
    if current_app.config["GATEWAY_AUTH_MODE"] == "header":
        user = _user_from_headers()
        if user is None:
            # Without the proxy vouching for this request, a cookie alone is not enough.
            session.clear()
            return
        if session.get("email") != user.email:
            start_session(user)
        elif tuple(session.get("groups", ())) != user.groups:
            session["groups"] = list(user.groups)
        g.user = user
    elif "email" in session and "sid" in session:
        g.user = User(session["email"], tuple(session.get("groups", ())))


def login_required(view):
    """Refuse anonymous requests: 401 page, or the demo login page for a browser."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            if current_app.config["GATEWAY_AUTH_MODE"] == "demo" and request.method == "GET":
                return redirect(url_for("auth.login", next=security.safe_next(request.full_path)))
            raise Unauthenticated("no identity on the request")
        return view(*args, **kwargs)

    return wrapped


@bp.route("/login", methods=("GET", "POST"))
def login():
    """Demo login: pick one of the users named in the tenants file."""
    if current_app.config["GATEWAY_AUTH_MODE"] != "demo":
        abort(404)
    rules = current_app.extensions["rules"].current()
    next_url = security.safe_next(request.values.get("next"))
    if request.method == "POST":
        security.require_csrf()
        email = normalize_email(request.form.get("email", ""))
        if email is None or email not in rules.users():
            raise Unauthenticated("demo login for a user not in the tenants file")
        start_session(User(email))
        return redirect(next_url)
    security.ensure_csrf()
    return render_template("login.html", users=rules.users(), next_url=next_url)


@bp.route("/logout", methods=("POST",))
def logout():
    security.require_csrf()
    if g.user is not None:
        audit.event("logout", email=g.user.email)
    session.clear()
    target = current_app.config["GATEWAY_LOGOUT_URL"]
    if target:
        return redirect(target)
    return render_template("signed_out.html")
