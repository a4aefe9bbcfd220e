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
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import jwt
import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from flask import Blueprint, Flask, current_app, redirect, request, session

from gateway.ops import audit
from gateway.identity.auth import User, start_session
from gateway.errors import GatewayError
from gateway.security import safe_next
from gateway.tenancy.rules import normalize_email

logger = logging.getLogger(__name__)
bp = Blueprint("oidc", __name__)

OVERAGE_HINT = "too many groups for the token; use an app-role or group filter"
MAX_KEPT_ID_TOKEN = 1800  # bytes of ID token the session cookie may carry for id_token_hint


class LoginFailed(GatewayError):
    status_code = 401
    code = "login_failed"
    title = "Sign-in did not work"
    message = "Your sign-in could not be completed."
    hint = "Try signing in again. If it keeps happening, contact support and quote the request id."
    action = "signin"
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


class LoginMisconfigured(LoginFailed):
    status_code = 502
    code = "login_misconfigured"
    title = "Sign-in is not set up correctly"
    message = "Your company's sign-in provider refused this service's own credentials."
    hint = "Signing in again will not help. Contact support and quote the request id."


class IdpUnavailable(LoginFailed):
    status_code = 502
    code = "idp_unavailable"
    title = "Your sign-in provider is not answering"
    message = "We could not reach your company's sign-in provider."


def _client_auth(cfg) -> tuple[str, dict, list]:
    """(what Authlib calls the client secret, extra client kwargs, auth methods) for the setting."""
    method = cfg["OIDC_CLIENT_AUTH_METHOD"]
    if method != "private_key_jwt":
        return cfg["OIDC_CLIENT_SECRET"], {"token_endpoint_auth_method": method}, []
    pem = Path(cfg["OIDC_CLIENT_KEY_FILE"]).read_text()
    return "", {"token_endpoint_auth_method": method}, [_PrivateKeyJwt(pem, cfg["OIDC_CLIENT_KEY_ID"])]


class _PrivateKeyJwt:
    """private_key_jwt (RFC 7523) client authentication, signed with PyJWT (the gateway's one JWT library).

    Authlib calls it with the token request; it adds a short-lived assertion naming us
    (iss = sub = client_id) for the token endpoint (aud), signed RS256 or ES256 by key type.
    """

    name = "private_key_jwt"

    def __init__(self, pem: str, kid: str = ""):
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self._key = load_pem_private_key(pem.encode(), password=None)
        self.alg = "ES256" if isinstance(self._key, ec.EllipticCurvePrivateKey) else "RS256"
        self._headers = {"kid": kid} if kid else None

    def __repr__(self) -> str:
        return f"_PrivateKeyJwt(alg={self.alg!r})"

    def __call__(self, auth, method, uri, headers, body):
        from authlib.common.urls import add_params_to_qs

        now = int(time.time())
        assertion = jwt.encode({"iss": auth.client_id, "sub": auth.client_id, "aud": uri, "iat": now,
                                "exp": now + 60, "jti": secrets.token_urlsafe(16)},
                               self._key, algorithm=self.alg, headers=self._headers)
        body = add_params_to_qs(body or "", [
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion)])
        return uri, headers, body


def init_app(app: Flask) -> None:
    from authlib.integrations.flask_client import OAuth

    cfg = app.config
    secret, auth_kwargs, auth_methods = _client_auth(cfg)
    oauth = OAuth(app)
    oauth.register(
        "idp", client_id=cfg["OIDC_CLIENT_ID"], client_secret=secret,
        server_metadata_url=cfg["OIDC_ISSUER"].rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": cfg["OIDC_SCOPES"], "code_challenge_method": "S256", "timeout": 10,
                       **auth_kwargs},
        client_auth_methods=auth_methods or None)
    app.extensions["oidc_client"] = oauth.idp
    app.register_blueprint(bp)
    _check_at_start(app)


def _check_at_start(app: Flask) -> None:
    """Discovery once at start-up, off the start-up path: a client authentication method the IdP
    does not offer is one ERROR line at once, not a first user's failed sign-in."""
    def run():
        with app.app_context():
            try:
                meta = metadata()
            except GatewayError as exc:
                logger.warning("IdP discovery at start-up failed (%s): sign-ins will try again", exc.detail)
                return
            problem = auth_method_problem(meta, app.config["OIDC_CLIENT_AUTH_METHOD"])
            if problem:
                logger.error("%s: sign-ins will fail at the token endpoint", problem)

    threading.Thread(target=run, name="idp-discovery", daemon=True).start()


def _client():
    return current_app.extensions["oidc_client"]


def _public(path: str) -> str:
    # Never from the Host header: a forged Host must not redirect a login elsewhere.
    return current_app.config["GATEWAY_PUBLIC_URL"] + path


def metadata() -> dict:
    """The IdP's discovery document (fetched once, then cached by Authlib)."""
    try:
        return _client().load_server_metadata()
    except (requests.RequestException, AuthlibBaseError, ValueError) as exc:
        raise IdpUnavailable(f"discovery failed ({type(exc).__name__})") from None


def auth_method_problem(meta: dict, method: str) -> str | None:
    """Why the IdP will refuse our client authentication method, if its discovery says so."""
    supported = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if method not in supported:
        return (f"OIDC_CLIENT_AUTH_METHOD={method} is not in the IdP's token_endpoint_auth_methods_supported "
                f"({', '.join(supported)})")
    return None


def begin_login(next_url: str):
    # What survives the trip to the IdP is only what Authlib keeps (state, nonce,
    # PKCE verifier) and where to go back to; the session itself is renewed at the end.
    session["oidc_next"] = next_url
    _forget_old_attempts()
    meta = metadata()
    problem = auth_method_problem(meta, current_app.config["OIDC_CLIENT_AUTH_METHOD"])
    if problem:
        logger.warning("%s: sign-ins will fail at the token endpoint", problem)
    try:
        return _client().authorize_redirect(_public("/auth/callback"), nonce=secrets.token_urlsafe(24))
    except (requests.RequestException, AuthlibBaseError, ValueError) as exc:
        raise IdpUnavailable(f"discovery failed ({type(exc).__name__})") from None


KEEP_ATTEMPTS = 2  # sign-ins started and not finished that may still come back (other tabs)


def _forget_old_attempts() -> None:
    """Authlib keeps each attempt's state, nonce and PKCE verifier in the session for an hour;
    twenty unfinished ones (tabs opened while signed out, back and forth at the IdP) made the
    cookie too large for browsers, and every later sign-in failed as "expired"."""
    attempts = sorted((k for k in session if k.startswith("_state_idp_")),
                      key=lambda k: (session[k] or {}).get("exp", 0) if isinstance(session[k], dict) else 0)
    for key in attempts[:-(KEEP_ATTEMPTS - 1) or None]:
        session.pop(key, None)


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


def explain_id_token_failure(id_token: str | None, leeway: float, now: float) -> str | None:
    """Which time check an ID token fails and by how much, in words; None if the times are fine."""
    if not id_token:
        return None
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "the ID token is not a readable JWT"
    iat, exp, nbf = (claims.get(k) for k in ("iat", "exp", "nbf"))
    if isinstance(iat, (int, float)) and iat - now > leeway:
        return (f"ID token issued {iat - now:.0f} s in the future (leeway {leeway:g} s): "
                "check the IdP's clock, or this host's")
    if isinstance(nbf, (int, float)) and nbf - now > leeway:
        return (f"ID token not valid for another {nbf - now:.0f} s (leeway {leeway:g} s): "
                "check the IdP's clock, or this host's")
    if isinstance(exp, (int, float)) and now - exp > leeway:
        return (f"ID token expired {now - exp:.0f} s ago (leeway {leeway:g} s): check this host's clock, "
                "or the IdP's token lifetime")
    return None


@bp.route("/auth/callback")
def callback():
    cfg = current_app.config
    _check_iss()
    error = request.args.get("error")
    if error:
        _refuse(LoginDenied, f"the IdP answered error={error[:40]}")
    leeway = cfg["OIDC_LEEWAY"]
    try:
        token = _client().authorize_access_token(leeway=leeway)
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
        raw = (getattr(_client(), "token", None) or {}).get("id_token")
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
        info = dict(_client().userinfo(token=token))
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


def email_claims(cfg) -> list[str]:
    return [c.strip() for c in cfg["OIDC_EMAIL_CLAIM"].split(",") if c.strip()]


def user_from_claims(claims: dict) -> User:
    """The user the claims name, or a plain refusal saying which claim let us down."""
    cfg = current_app.config
    email, source = None, None
    for name in email_claims(cfg):
        value = claims.get(name)
        if value in (None, ""):
            continue
        email = normalize_email(value) if isinstance(value, str) else None
        if email is None:
            # Present but not an address: refused, never a silent fall back to the next claim.
            _refuse(LoginFailed, f"the {name} claim is not one well-formed email address")
        source = name
        break
    if email is None:
        _refuse(LoginFailed, f"no well-formed email in the claims {', '.join(email_claims(cfg))} "
                             "(see the README's IdP recipes)")
    # email_verified speaks for the email claim only; other claims are the IdP's own login names.
    if source == "email" and cfg["OIDC_REQUIRE_VERIFIED_EMAIL"] and claims.get("email_verified") is not True:
        _refuse(LoginDenied, "email_verified is not true (OIDC_REQUIRE_VERIFIED_EMAIL)", email=email)
    groups_claim = cfg["OIDC_GROUPS_CLAIM"]
    groups = claims.get(groups_claim)
    if groups is None and groups_claim in (claims.get("_claim_names") or {}):
        logger.warning("groups overage for %s: %s", email, OVERAGE_HINT)
        audit.event("groups_overage", email=email, claim=groups_claim)
    groups = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
    groups = tuple(dict.fromkeys(str(x) for x in groups if isinstance(x, (str, int))))
    return User(email, groups, f"{claims['iss']}|{claims['sub']}")


def idp_logout_url(id_token: str | None = None) -> str | None:
    """The IdP's end-session URL for this client, when the IdP offers one.

    It names us by client_id, or with OIDC_LOGOUT_HINT=id_token_hint by the ID token
    (some IdPs, Okta among them, require it), and asks to come back to /signed-out.
    """
    try:
        endpoint = _client().load_server_metadata().get("end_session_endpoint")
    except (requests.RequestException, AuthlibBaseError, ValueError):
        logger.warning("IdP metadata unavailable: signed out here only")
        return None
    if not endpoint:
        return None
    params = {"post_logout_redirect_uri": _public("/signed-out"), "client_id": current_app.config["OIDC_CLIENT_ID"]}
    if id_token and current_app.config["OIDC_LOGOUT_HINT"] == "id_token_hint":
        params["id_token_hint"] = id_token
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
