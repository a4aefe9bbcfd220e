"""The session: a signed cookie that starts at login, ends idle, at its absolute limit or at
logout, and is revoked server-side when it ends.

Flask's signed cookie, with recently verified cookies remembered: every request through
the proxy carries it, and checking its signature, inflating and parsing it is a
noticeable share of the gateway's own cost. A cookie string that verified moments ago
verifies the same way now, so its decoded contents are kept for a short while, keyed by
the exact string; changing anything in the cookie changes the key, so nothing here can
accept a cookie that would not verify.
"""
from __future__ import annotations

import json
import logging
import secrets
import time

from flask import Flask, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface, session_json_serializer
from itsdangerous import BadSignature, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from gateway.errors import Unauthenticated
from gateway.identity.users import User
from gateway.memo import Memo
from gateway.ops import audit

logger = logging.getLogger(__name__)

SEEN_GRANULARITY = 60  # rewrite the cookie's last-seen time at most once a minute
# Asked without a person asking: an open page's timers, and the dashboard's own traffic
# (its background polling goes through /dashboard/). They must not keep an idle session
# alive; what does is a top-level page, a form, and the embed page's activity signal
# (embed.session_activity: pointer or keyboard use, reported at most once a minute).
PASSIVE_ENDPOINTS = frozenset({"embed.session_status", "embed.renew_frame", "proxy.dashboard"})
REMEMBER_SECONDS = 300
REMEMBER_COOKIES = 4096
COMPRESS_FROM = 400  # bytes of session JSON from which zlib is worth trying


def _copy(data: dict) -> dict:
    # Session values are strings, numbers and lists of strings: a shallow list copy is a deep copy.
    return {k: (list(v) if isinstance(v, list) else v) for k, v in data.items()}


class _PlainJson:
    """Session values are strings, numbers and lists (of strings): plain JSON writes them the
    same as Flask's tagged JSON, at a fraction of the cost. Anything else falls back to the
    tagged form, and reading is Flask's, so older cookies still load."""

    @staticmethod
    def dumps(value: dict) -> str:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return session_json_serializer.dumps(value)

    loads = staticmethod(session_json_serializer.loads)


class _Serializer(URLSafeTimedSerializer):
    def dump_payload(self, obj) -> bytes:
        # itsdangerous tries zlib on every payload; a session of random ids and a few names
        # does not shrink, so only a large one (OIDC's kept ID token, many groups) is tried.
        json_bytes = _PlainJson.dumps(obj).encode()
        if len(json_bytes) < COMPRESS_FROM:
            return base64_encode(json_bytes)
        return super().dump_payload(obj)


class RememberingSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, written and read through the documented ``open_session`` and
    ``save_session`` (Flask's own versions build a new serializer for each call through a hook
    its API reference does not list), with the cookie's salt, key derivation, digest and
    cookie attributes all Flask's."""

    serializer = _PlainJson

    def __init__(self, maxsize: int = REMEMBER_COOKIES, ttl: float = REMEMBER_SECONDS):
        self._verified = Memo(maxsize, ttl)
        self._signer: tuple | None = None  # (keys, serializer): the keys do not change while running

    def signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        """One serializer for as long as the keys stay the same; None without a secret key."""
        if not app.secret_key:
            return None
        keys = (*app.config["SECRET_KEY_FALLBACKS"], app.secret_key)  # current key last
        signer = self._signer
        if signer is None or signer[0] != keys:
            signer = self._signer = (keys, _Serializer(
                list(keys), salt=self.salt, serializer=self.serializer,
                signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method}))
        return signer[1]

    def open_session(self, app: Flask, request):
        signer = self.signing_serializer(app)
        if signer is None:
            return None  # Flask then serves a null session that refuses writes
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        data = self._verified.get(value)
        if data is not None:
            return self.session_class(_copy(data))
        try:
            data = signer.loads(value, max_age=int(app.permanent_session_lifetime.total_seconds()))
        except BadSignature:
            return self.session_class()
        if data:
            self._verified.put(value, _copy(data))
        return self.session_class(data)

    def save_session(self, app: Flask, session, response) -> None:
        name, domain, path = self.get_cookie_name(app), self.get_cookie_domain(app), self.get_cookie_path(app)
        attributes = {"domain": domain, "path": path, "secure": self.get_cookie_secure(app),
                      "partitioned": self.get_cookie_partitioned(app), "samesite": self.get_cookie_samesite(app),
                      "httponly": self.get_cookie_httponly(app)}
        if session.accessed:
            response.vary.add("Cookie")
        if not session:
            if session.modified:  # emptied (logout): the cookie goes
                response.delete_cookie(name, **attributes)
                response.vary.add("Cookie")
            return
        if not self.should_set_cookie(app, session):
            return
        value = self.signing_serializer(app).dumps(dict(session))
        response.set_cookie(name, value, expires=self.get_expiration_time(app, session), **attributes)
        response.vary.add("Cookie")


def init_app(app: Flask) -> None:
    app.session_interface = RememberingSessionInterface()


class SessionEnded(Unauthenticated):
    code = "session_ended"
    title = "Your session has ended"
    message = "You were signed out, or were away for a while, so the dashboard is no longer shown."
    hint = "Sign in again to continue."
    action = "signin"
    action_text = "Sign in again"


def current_time() -> float:
    return current_app.config.get("CLOCK", time.time)()


def start_session(user: User, **extra) -> None:
    """Begin a fresh session for ``user``: nothing from before login survives (no fixation)."""
    session.clear()
    now = int(current_time())
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


def session_problem(sess, endpoint: str | None) -> str | None:
    """Why the current session may not be used any more, if it may not."""
    sid = sess.get("sid")
    if not sid:
        return None
    app = current_app._get_current_object()
    cfg = app.config
    now = current_time()
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


def person_asked(req) -> bool:
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


def renew_idle_timer(response):
    """Renew the idle timer only for an answer that served a person's own request.

    After the view, not before: a refused request (a cross-site POST without its CSRF
    token, an unknown path: 4xx) or a script's retry must not keep a session alive.
    """
    if g.get("renew_seen") and response.status_code < 400 and person_asked(request) and "sid" in session:
        session["seen"] = int(current_time())
    return response
