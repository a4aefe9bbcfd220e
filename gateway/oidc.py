"""OIDC login at the partner's IdP (Okta, Entra ID, Keycloak, Google, ...), with Authlib.

Authorization code flow with PKCE (S256); ``state`` and ``nonce`` are kept in
the pre-login session and both checked; the ID token's signature is verified
against the IdP's JWKS (refetched when a new ``kid`` appears), and its ``iss``,
``aud``, ``exp`` and ``nonce``. Users are keyed by (iss, sub); their email and
groups feed the tenant rules. A refused or broken sign-in ends on a plain page
with a link to try again, never in an automatic redirect (no login loops).
"""
from __future__ import annotations

import logging
import secrets
from urllib.parse import urlencode

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from joserfc.errors import JoseError
from flask import Blueprint, Flask, current_app, redirect, request, session

from . import audit
from .auth import User, start_session
from .errors import GatewayError
from .security import safe_next
from .tenants import normalize_email

logger = logging.getLogger(__name__)
bp = Blueprint("oidc", __name__)


class LoginFailed(GatewayError):
    status_code = 401
    code = "login_failed"
    title = "Sign-in did not work"
    message = "Your sign-in could not be completed."
    hint = "Try signing in again. If it keeps happening, contact support and quote the request id."
    action_url = "/login"
    action_text = "Sign in again"


class LoginDenied(LoginFailed):
    status_code = 403
    code = "login_denied"
    title = "Sign-in was refused"
    message = "Your sign-in provider refused or cancelled the sign-in."


class LoginExpired(LoginFailed):
    status_code = 400
    code = "login_expired"
    title = "This sign-in attempt has expired"
    message = "The sign-in took too long, was already used, or was started in another tab."


class IdpUnavailable(LoginFailed):
    status_code = 502
    code = "idp_unavailable"
    title = "Your sign-in provider is not answering"
    message = "We could not reach your company's sign-in provider."


def init_app(app: Flask) -> None:
    from authlib.integrations.flask_client import OAuth

    cfg = app.config
    oauth = OAuth(app)
    oauth.register(
        "idp", client_id=cfg["OIDC_CLIENT_ID"], client_secret=cfg["OIDC_CLIENT_SECRET"],
        server_metadata_url=cfg["OIDC_ISSUER"].rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": cfg["OIDC_SCOPES"], "code_challenge_method": "S256", "timeout": 10})
    app.extensions["oidc_client"] = oauth.idp
    app.register_blueprint(bp)


def _client():
    return current_app.extensions["oidc_client"]


def _public(path: str) -> str:
    # Never from the Host header: a forged Host must not redirect a login elsewhere.
    return current_app.config["GATEWAY_PUBLIC_URL"] + path


def begin_login(next_url: str):
    # What survives the trip to the IdP is only what Authlib keeps (state, nonce,
    # PKCE verifier) and where to go back to; the session itself is renewed at the end.
    session["oidc_next"] = next_url
    try:
        return _client().authorize_redirect(_public("/auth/callback"), nonce=secrets.token_urlsafe(24))
    except (requests.RequestException, AuthlibBaseError, ValueError) as exc:
        raise IdpUnavailable(f"discovery failed ({type(exc).__name__})") from None


@bp.route("/auth/callback")
def callback():
    error = request.args.get("error")
    if error:
        audit.event("login_refused", mode="oidc", reason=f"idp said {error[:40]}")
        raise LoginDenied(f"IdP answered error={error[:40]}")
    try:
        token = _client().authorize_access_token()
    except MismatchingStateError:
        audit.event("login_refused", mode="oidc", reason="state mismatch")
        raise LoginExpired("state missing or mismatched") from None
    except OAuthError as exc:
        audit.event("login_refused", mode="oidc", reason=f"token endpoint: {exc.error}")
        raise LoginExpired(f"code exchange refused ({exc.error})") from None
    except requests.RequestException as exc:
        raise IdpUnavailable(f"token endpoint unreachable ({type(exc).__name__})") from None
    except (AuthlibBaseError, JoseError) as exc:  # a bad ID token: signature, iss, aud, exp, nonce
        reason = getattr(exc, "error", type(exc).__name__)
        audit.event("login_refused", mode="oidc", reason=f"id token: {reason}")
        raise LoginFailed(f"ID token refused ({reason})") from None
    claims = token.get("userinfo")
    if not claims:
        raise LoginFailed("no ID token in the answer")
    cfg = current_app.config
    email = claims.get(cfg["OIDC_EMAIL_CLAIM"])
    email = normalize_email(email) if isinstance(email, str) else None
    if email is None:
        audit.event("login_refused", mode="oidc", reason="no well-formed email claim")
        raise LoginFailed("no usable email claim")
    if cfg["OIDC_REQUIRE_VERIFIED_EMAIL"] and claims.get("email_verified") is not True:
        audit.event("login_refused", mode="oidc", reason="email not verified", email=email)
        raise LoginDenied("email_verified is not true")
    groups = claims.get(cfg["OIDC_GROUPS_CLAIM"]) or []
    groups = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
    next_url = safe_next(session.get("oidc_next"))
    start_session(User(email, tuple(dict.fromkeys(str(x) for x in groups)), f"{claims['iss']}|{claims['sub']}"))
    return redirect(next_url)


def idp_logout_url() -> str | None:
    """Where to sign out at the IdP too, when it offers an end_session_endpoint.

    Identified by client_id rather than id_token_hint: no token travels in a URL
    we hand to the browser, and none has to be kept in the session cookie.
    """
    try:
        endpoint = _client().load_server_metadata().get("end_session_endpoint")
    except (requests.RequestException, AuthlibBaseError, ValueError):
        logger.warning("IdP metadata unavailable: signed out here only")
        return None
    if not endpoint:
        return None
    params = {"post_logout_redirect_uri": _public("/signed-out"), "client_id": current_app.config["OIDC_CLIENT_ID"]}
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
