"""The preflight's checks of the services around the gateway: the IdP's discovery document and
JWKS, a JWKS of its own (assertions, hand-offs), and the shared tier (gateway.admin.preflight
runs them, each within its deadline in all)."""
from __future__ import annotations

import requests

from gateway.admin.findings import Finding
from gateway.config import redact_url

REACH = "and that this host can reach it (DNS, firewall, outbound proxy)"


class _Unusable(Exception):
    """A URL did not give the JSON document expected; the message says how."""


def _json(url: str, timeout: float) -> dict:
    try:
        response = requests.get(url, timeout=(timeout, timeout), headers={"Accept": "application/json"})
    except requests.Timeout:
        raise _Unusable(f"no answer within {timeout:g} s") from None
    except requests.RequestException as exc:
        raise _Unusable(f"connection failed ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise _Unusable(f"answered {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise _Unusable("answered something that is not JSON") from None
    if not isinstance(document, dict):
        raise _Unusable("answered JSON that is not an object")
    return document


def jwks(what: str, setting: str, url: str, timeout: float) -> Finding:
    import jwt  # only where a JWKS is configured: PyJWT loads cryptography (docs/performance.md, "Memory")

    try:
        keys = jwt.PyJWKSet.from_dict(_json(url, timeout)).keys
    except _Unusable as exc:
        return Finding(what, False, str(exc), setting=setting, url=url,
                       fix=f"check {setting} {REACH}; it must serve the signing keys as a JWKS")
    except jwt.PyJWKSetError as exc:
        return Finding(what, False, f"no usable signing key ({exc})", setting=setting, url=url,
                       fix=f"{setting} must serve a JWKS ({{\"keys\": [...]}}) with the public signing keys")
    return Finding(what, True, f"ok ({len(keys)} key{'s' if len(keys) != 1 else ''} at {redact_url(url)})")


def idp(cfg, timeout: float) -> list[Finding]:
    from gateway.identity.idp import auth_method_problem

    issuer = cfg["OIDC_ISSUER"]
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        meta = _json(url, timeout)
    except _Unusable as exc:
        return [Finding("IdP discovery", False, str(exc), setting="OIDC_ISSUER", url=url,
                        fix=f"OIDC_ISSUER is the IdP's issuer URL, under which {url[len(issuer.rstrip('/')):]} "
                            f"is served; check it {REACH}")]
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not meta.get(k)]
    if str(meta.get("issuer", "")).rstrip("/") != issuer.rstrip("/") or missing:
        why = f"it lacks {', '.join(missing)}" if missing else f"it names the issuer {meta.get('issuer')!r}"
        return [Finding("IdP discovery", False, f"not this IdP's discovery document: {why}", setting="OIDC_ISSUER",
                        url=url, fix="set OIDC_ISSUER to exactly the issuer your IdP's discovery document names")]
    found = []
    problem = auth_method_problem(meta, cfg["OIDC_CLIENT_AUTH_METHOD"])
    if problem:
        found.append(Finding("IdP client authentication", False, problem, label="MISMATCH", url=url,
                             fix="set OIDC_CLIENT_AUTH_METHOD to a method the IdP offers and register the client "
                                 "with it"))
    else:
        iss = "checked" if meta.get("authorization_response_iss_parameter_supported") else "not offered"
        found.append(Finding("IdP", True, f"ok ({meta.get('issuer')}, client authentication "
                                          f"{cfg['OIDC_CLIENT_AUTH_METHOD']}, RFC 9207 iss {iss})"))
    return found + [jwks("IdP JWKS", "OIDC_ISSUER", meta["jwks_uri"], timeout)]


SHARED_TIER = "shared cache (Redis)"  # the finding's name


def redis_finding(check) -> Finding:
    """The shared tier as the gateway connects to it, as a finding: ``check`` is
    ``gateway.sharedtier.check_shared_tier``'s (its mode, a round trip, a probe key written, read
    back and deleted in the gateway's key space), made when the app was (gateway.shared.init_app)."""
    if check.ok:
        return Finding(SHARED_TIER, True, f"ok ({check.line.removeprefix('shared tier: ')}; a probe "
                                                     "key written, read back and deleted)")
    # Each problem names GATEWAY_CACHE_URL (redacted), the mode and its fix already.
    return Finding(SHARED_TIER, False, "; ".join(check.problems) + " (meanwhile every process fetches "
                   "tokens for itself and sign-outs are not shared)")
