"""The partner's IdP as a registered OIDC client: client authentication, discovery, and the
plain-language errors a sign-in can end in. The flow itself is ``gateway.identity.oidc``."""
from __future__ import annotations

import importlib.metadata
import logging
import threading
from pathlib import Path

import jwt
import requests
from authlib.common.errors import AuthlibBaseError
from flask import Flask, current_app

from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

OVERAGE_HINT = "too many groups for the token; use an app-role or group filter"


def groups_overage(claims: dict, groups_claim: str) -> bool:
    """Entra ID's overage: no groups claim, only a pointer to fetch them (``_claim_names``)."""
    return claims.get(groups_claim) is None and groups_claim in (claims.get("_claim_names") or {})


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


def client_auth(cfg) -> tuple[object, dict, list]:
    """(what Authlib calls the client secret, extra client kwargs, auth methods) for the setting.

    With private_key_jwt the "secret" is the private key and Authlib's own ``PrivateKeyJWT``
    signs the assertion (iss = sub = client_id, aud = the token endpoint, a fresh jti, one hour).
    """
    method = cfg["OIDC_CLIENT_AUTH_METHOD"]
    if method != "private_key_jwt":
        return cfg["OIDC_CLIENT_SECRET"], {"token_endpoint_auth_method": method}, []
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    key, alg = assertion_key(Path(cfg["OIDC_CLIENT_KEY_FILE"]).read_text())
    kid = cfg["OIDC_CLIENT_KEY_ID"]
    return key, {"token_endpoint_auth_method": method}, [PrivateKeyJWT(headers={"kid": kid} if kid else None, alg=alg)]


class PemKey(str):
    """A PEM private key that never shows itself in a repr (a logged config, a traceback's locals)."""

    def __repr__(self) -> str:
        return "PemKey('<private key>')"


def authlib_version() -> tuple[int, int]:
    major, minor = (importlib.metadata.version("authlib").split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def assertion_key(pem: str) -> tuple[object, str]:
    """The private key in the form the installed Authlib's ``PrivateKeyJWT`` signs with, and its alg.

    Authlib 1.6 signs with its own JOSE layer (``authlib.jose``), which reads an RSA or EC key
    from the PEM. From 1.7 Authlib signs with joserfc and reads a bare PEM as RSA only, so it is
    given a joserfc key object (only ``joserfc.jwk``'s import: the signing stays Authlib's).
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ec_key = isinstance(load_pem_private_key(pem.encode(), password=None), ec.EllipticCurvePrivateKey)
    alg = "ES256" if ec_key else "RS256"  # config.py allows RSA and EC P-256 only
    if authlib_version() < (1, 7):
        return PemKey(pem), alg
    from joserfc.jwk import ECKey, RSAKey

    return (ECKey if ec_key else RSAKey).import_key(pem), alg


def register(app: Flask) -> None:
    from authlib.integrations.flask_client import OAuth

    cfg = app.config
    secret, auth_kwargs, auth_methods = client_auth(cfg)
    oauth = OAuth(app)
    oauth.register(
        "idp", client_id=cfg["OIDC_CLIENT_ID"], client_secret=secret,
        server_metadata_url=cfg["OIDC_ISSUER"].rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": cfg["OIDC_SCOPES"], "code_challenge_method": "S256", "timeout": 10,
                       **auth_kwargs},
        client_auth_methods=auth_methods or None)
    app.extensions["oidc_client"] = oauth.idp
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


def client():
    return current_app.extensions["oidc_client"]


def public(path: str) -> str:
    # Never from the Host header: a forged Host must not redirect a login elsewhere.
    return current_app.config["GATEWAY_PUBLIC_URL"] + path


def metadata() -> dict:
    """The IdP's discovery document (fetched once, then cached by Authlib)."""
    try:
        return client().load_server_metadata()
    except (requests.RequestException, AuthlibBaseError, ValueError) as exc:
        raise IdpUnavailable(f"discovery failed ({type(exc).__name__})") from None


def auth_method_problem(meta: dict, method: str) -> str | None:
    """Why the IdP will refuse our client authentication method, if its discovery says so."""
    supported = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if method not in supported:
        return (f"OIDC_CLIENT_AUTH_METHOD={method} is not in the IdP's token_endpoint_auth_methods_supported "
                f"({', '.join(supported)})")
    return None


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


def email_claims(cfg) -> list[str]:
    return [c.strip() for c in cfg["OIDC_EMAIL_CLAIM"].split(",") if c.strip()]
