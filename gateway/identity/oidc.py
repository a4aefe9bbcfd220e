"""OIDC login at the partner's IdP (Okta, Entra ID, Keycloak, Google, Auth0, ...), with Authlib.

Authorization code flow with PKCE (S256); ``state`` and ``nonce`` are kept in
the pre-login session and both checked; when the IdP advertises RFC 9207, the
callback's ``iss`` must name it. The ID token's signature is verified against
the IdP's JWKS (refetched when a new ``kid`` appears), and its ``iss``, ``aud``,
``exp``, ``iat`` and ``nonce``, with ``OIDC_LEEWAY`` for clocks. Claims the ID
token lacks (providers that follow OIDC Core 5.4 put scope claims in userinfo)
are read from the userinfo endpoint; the ID token wins where both speak and
``sub`` must match. Users are keyed by (iss, sub); their email and groups feed
the tenant rules. A refused or broken sign-in ends on a plain page with a link
to try again, never in an automatic redirect (no login loops), and the log says
which check failed in words an operator can act on.
"""
from __future__ import annotations

import logging
import secrets
import time
from urllib.parse import urlencode

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from flask import Blueprint, Flask, current_app, redirect, request, session

from gateway.identity import idp
from gateway.identity.idp import (OVERAGE_HINT, IdpUnavailable, LoginDenied, LoginExpired, LoginFailed,
                                  LoginMisconfigured, auth_method_problem, client, email_claims,
                                  explain_id_token_failure, groups_overage, metadata, public)
from gateway.identity.session import start_session
from gateway.identity.users import ClaimsRejected, EmailNotVerified, User
from gateway.identity.users import user_from_claims as parse_claims
from gateway.ops import audit
from gateway.redirects import safe_next
from gateway.tenancy.rules import normalize_email

logger = logging.getLogger(__name__)
bp = Blueprint("oidc", __name__)

MAX_KEPT_ID_TOKEN = 1800  # bytes of ID token the session cookie may carry for id_token_hint


def init_app(app: Flask) -> None:
    idp.register(app)
    app.register_blueprint(bp)


def begin_login(next_url: str):
    # What survives the trip to the IdP is only what Authlib keeps (state, nonce,
    # PKCE verifier) and where to go back to; the session itself is renewed at the end.
    session["oidc_next"] = next_url
    meta = metadata()
    problem = auth_method_problem(meta, current_app.config["OIDC_CLIENT_AUTH_METHOD"])
    if problem:
        logger.warning("%s: sign-ins will fail at the token endpoint", problem)
    idp_client, back = client(), public("/auth/callback")
    try:  # authorize_redirect's two steps, so that we learn the attempt's state
        attempt = idp_client.create_authorization_url(back, nonce=secrets.token_urlsafe(24))
    except (requests.RequestException, AuthlibBaseError, ValueError) as exc:
        raise IdpUnavailable(f"discovery failed ({type(exc).__name__})") from None
    idp_client.save_authorize_data(redirect_uri=back, **attempt)
    _forget_old_attempts(idp_client, attempt["state"])
    return redirect(attempt["url"])


KEEP_ATTEMPTS = 2  # sign-ins started and not finished that may still come back (other tabs)


def _forget_old_attempts(idp_client, state: str) -> None:
    """Authlib keeps each attempt's state, nonce and PKCE verifier in the session for an hour;
    twenty unfinished ones (tabs opened while signed out, back and forth at the IdP) made the
    cookie too large for browsers, and every later sign-in failed as "expired". We note the
    states we started and have Authlib clear all but the last few (its session layout is its own)."""
    states = [s for s in session.get("oidc_states", ()) if s != state] + [state]
    for old in states[:-KEEP_ATTEMPTS]:
        idp_client.framework.clear_state_data(session, old)
    session["oidc_states"] = states[-KEEP_ATTEMPTS:]


def _refuse(error: type[LoginFailed], reason: str, **fields):
    """Log the refusal in an operator's words and raise the user's page."""
    logger.warning("sign-in refused: %s", reason)
    audit.event("login_refused", mode="oidc", reason=reason[:200], **fields)
    raise error(reason)


def _check_iss() -> None:
    """RFC 9207: an IdP that says it sends ``iss`` must send its own, or the answer is someone else's."""
    for name in ("iss", "code", "state", "error"):
        if len(request.args.getlist(name)) > 1:
            _refuse(LoginFailed, f"the authorization response repeats {name} (OAuth 2.0 forbids it)")
    meta = metadata()
    if not meta.get("authorization_response_iss_parameter_supported"):
        return
    sent = request.args.get("iss")
    if sent is None:
        _refuse(LoginFailed, "the authorization response has no iss parameter, although the IdP "
                             "advertises RFC 9207 (a mix-up attempt, or a proxy dropped it)")
    if sent != meta.get("issuer"):
        _refuse(LoginFailed, f"the authorization response names issuer {sent[:100]!r}, not "
                             f"{str(meta.get('issuer'))[:100]!r} (RFC 9207 mix-up check)")


@bp.route("/auth/callback")
def callback():
    cfg = current_app.config
    _check_iss()
    error = request.args.get("error")
    if error:
        _refuse(LoginDenied, f"the IdP answered error={error[:40]}")
    leeway = cfg["OIDC_LEEWAY"]
    try:
        token = client().authorize_access_token(leeway=leeway)
    except MismatchingStateError:
        _refuse(LoginExpired, "state missing or mismatched (an old, replayed or other tab's callback)")
    except OAuthError as exc:
        if exc.error in ("invalid_client", "unauthorized_client"):
            _refuse(LoginMisconfigured, f"the token endpoint refused our client ({exc.error}): check "
                                        "OIDC_CLIENT_ID, the secret or key, and OIDC_CLIENT_AUTH_METHOD")
        _refuse(LoginExpired, f"the token endpoint refused the code ({exc.error}): a replayed or stale callback")
    except requests.RequestException as exc:
        raise IdpUnavailable(f"token endpoint unreachable ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - Authlib and its JOSE layer raise many types for a bad ID token
        raw = (getattr(client(), "token", None) or {}).get("id_token")
        reason = explain_id_token_failure(raw, leeway, cfg.get("CLOCK", time.time)()) or \
            f"ID token refused ({getattr(exc, 'error', None) or type(exc).__name__}: {str(exc)[:120]})"
        _refuse(LoginFailed, reason)
    claims = token.get("userinfo")
    if not claims:
        _refuse(LoginFailed, "the token endpoint sent no ID token (is the openid scope granted?)")
    claims = _with_userinfo(dict(claims), token)
    user = user_from_claims(claims)
    next_url = safe_next(session.get("oidc_next"))
    extra = {}
    if cfg["OIDC_LOGOUT_HINT"] == "id_token_hint":
        if len(token["id_token"]) <= MAX_KEPT_ID_TOKEN:
            extra["idt"] = token["id_token"]
        else:  # a cookie over 4 KB is dropped by browsers: that would be a sign-in loop
            logger.warning("ID token of %d bytes is too large to keep in the session cookie for "
                           "id_token_hint: this user's sign-out names us by client_id", len(token["id_token"]))
    start_session(user, **extra)
    return redirect(next_url)


def _with_userinfo(claims: dict, token: dict) -> dict:
    """The ID token's claims, completed from the userinfo endpoint when the setting asks for it."""
    cfg = current_app.config
    mode = cfg["OIDC_USERINFO"]
    missing = cfg["OIDC_GROUPS_CLAIM"] not in claims or not any(c in claims for c in email_claims(cfg))
    if mode == "never" or (mode == "auto" and not missing):
        return claims
    if not metadata().get("userinfo_endpoint"):
        logger.info("the ID token lacks email or groups and the IdP has no userinfo endpoint")
        return claims
    try:
        info = dict(client().userinfo(token=token))
    except (requests.RequestException, AuthlibBaseError, ValueError) as exc:
        logger.warning("userinfo endpoint failed (%s): using the ID token's claims only", type(exc).__name__)
        return claims
    if info.get("sub") != claims.get("sub"):
        _refuse(LoginFailed, "the userinfo endpoint answered for another sub than the ID token's")
    merged = {**info, **claims}  # the signed ID token wins where both speak
    if "email" in claims and "email_verified" not in claims:
        # email_verified speaks for the address next to it, never for the other source's.
        merged.pop("email_verified", None)
    return merged


def user_from_claims(claims: dict) -> User:
    """The user the claims name, or a plain refusal saying which claim let us down."""
    cfg = current_app.config
    try:
        user = parse_claims(claims, email_claims(cfg), cfg["OIDC_GROUPS_CLAIM"], f"{claims['iss']}|{claims['sub']}",
                            require_verified_email=cfg["OIDC_REQUIRE_VERIFIED_EMAIL"])
    except EmailNotVerified as exc:
        _refuse(LoginDenied, str(exc), email=normalize_email(claims.get("email") or "") or "-")
    except ClaimsRejected as exc:
        _refuse(LoginFailed, f"{exc} (see the IdP recipes in docs/sign-in.md)" if exc.args[0].startswith("no ") else str(exc))
    email = user.email
    groups_claim = cfg["OIDC_GROUPS_CLAIM"]
    if groups_overage(claims, groups_claim):
        logger.warning("groups overage for %s: %s", email, OVERAGE_HINT)
        audit.event("groups_overage", email=email, claim=groups_claim)
    return user


def idp_logout_url(id_token: str | None = None) -> str | None:
    """The IdP's end-session URL for this client, when the IdP offers one.

    It names us by client_id, or with OIDC_LOGOUT_HINT=id_token_hint by the ID token
    (some IdPs, Okta among them, require it), and asks to come back to /signed-out.
    """
    try:
        endpoint = client().load_server_metadata().get("end_session_endpoint")
    except (requests.RequestException, AuthlibBaseError, ValueError):
        logger.warning("IdP metadata unavailable: signed out here only")
        return None
    if not endpoint:
        return None
    params = {"post_logout_redirect_uri": public("/signed-out"), "client_id": current_app.config["OIDC_CLIENT_ID"]}
    if id_token and current_app.config["OIDC_LOGOUT_HINT"] == "id_token_hint":
        params["id_token_hint"] = id_token
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
