"""The preflight of the whole path a user's request takes, run before users arrive.

``flask --app wsgi gateway check`` (``gateway.admin.cli``) runs it; so does gunicorn's
start, once (``check_at_start``). Each hop is checked as the gateway itself would use
it: a real token from the Zipteams token API, the dashboard's entry page fetched with
that token through the gateway's own proxy code (``gateway.delivery.proxy.upstream``),
the IdP's discovery document, JWKS and client authentication method (oidc mode), the
assertion or hand-off JWKS, and a round trip in the gateway's Redis namespace. A
failure is one line naming the setting, the URL tried (user-info removed) and the
likely fix (``Finding``).

Exit codes of ``gateway check``:
  0  every check passed;
  1  a check failed: Zipteams, the dashboard, the IdP, a JWKS or Redis did not answer as
     the gateway needs, or GATEWAY_PUBLIC_URL / GATEWAY_FRAME_ANCESTORS would fail users;
  2  wrong usage (click's own, or an unknown --subtenant);
  3  settings or the tenants file are invalid: every problem is listed in one run, and
     nothing on the network is tried until they are fixed.

At start-up the network checks run in gunicorn's master, after the app is preloaded and
before any worker is forked (``when_ready``), with short time-outs: a failure is a
WARNING line, never a refusal to start. Before the fork, because nothing started then
can be copied into a worker half-done (a thread or greenlet mid-request, a pooled
connection): every check uses connections of its own and closes them, and all of them
have finished when the hook returns.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests

from gateway.admin import sanity
from gateway.admin.findings import Finding
from gateway.config import BY_NAME, redact_url
from gateway.errors import GatewayError
from gateway.tokens import client as zipteams
from gateway.tokens.protection import CONFIG_HINTS

logger = logging.getLogger(__name__)

START_TIMEOUT = 3.0  # seconds per connect and per answer at start-up (ZIPTEAMS_TIMEOUT if shorter)
API_DEFAULT = BY_NAME["ZIPTEAMS_API_URL"].default
DASHBOARD_DEFAULT = BY_NAME["ZIPTEAMS_DASHBOARD_URL"].default
REACH = "and that this host can reach it (DNS, firewall, outbound proxy)"


# ------------------------------------------------------------------ Zipteams
def token(cfg, subtenant, timeout: float) -> tuple[Finding, zipteams.DashboardToken | None]:
    """One real token request, on a client of its own (its connection closed afterwards)."""
    client = zipteams.ZipteamsClient(cfg["ZIPTEAMS_API_URL"], cfg["ZIPTEAMS_API_KEY"], cfg["ZIPTEAMS_API_SECRET"],
                                     timeout=timeout)
    what = f"token request for {subtenant.key}"
    try:
        return Finding(what, True, "ok"), client.fetch_token(subtenant.tenant, subtenant.id)
    except zipteams.ZipteamsError as exc:
        setting, fix = token_fix(exc, cfg["ZIPTEAMS_API_URL"])
        return Finding(what, False, exc.detail, setting=setting, url=client.shown_url, fix=fix,
                       label=f"FAILED ({exc.code})"), None
    finally:
        client.session.close()


def api_base_fix(api_url: str) -> str:
    fix = (f"ZIPTEAMS_API_URL is the API's base URL, ending in /api/v1 (Zipteams' is {API_DEFAULT}); "
           f"the gateway adds {zipteams.TOKEN_PATH} to it")
    if not api_url.rstrip("/").endswith("/api/v1"):
        fix += f"; yours does not end in /api/v1: try {api_url.rstrip('/')}/api/v1"
    return fix


def token_fix(exc: zipteams.ZipteamsError, api_url: str) -> tuple[str, str]:
    """(the setting to change, the likely fix) for a failed token request."""
    if isinstance(exc, (zipteams.ZipteamsUnreachable, zipteams.ZipteamsTimeout)):
        return "ZIPTEAMS_API_URL", f"check the host and port in ZIPTEAMS_API_URL (Zipteams' is {API_DEFAULT}) {REACH}"
    if isinstance(exc, zipteams.ZipteamsForbidden):
        return ("ZIPTEAMS_API_KEY/ZIPTEAMS_API_SECRET", "use the partner key and secret from Zipteams onboarding, "
                "issued for the environment ZIPTEAMS_API_URL points at")
    if isinstance(exc, zipteams.ZipteamsBadRequest):
        return "GATEWAY_TENANTS_FILE", CONFIG_HINTS.get(exc.code, CONFIG_HINTS["zipteams_bad_request"])
    if isinstance(exc, zipteams.ZipteamsRateLimited):
        return "ZIPTEAMS_API_KEY", (f"Zipteams limits this key's token requests: run the check again in "
                                    f"{exc.retry_after} s; if it keeps happening, lower ZIPTEAMS_MAX_RPM")
    if isinstance(exc, zipteams.ZipteamsInvalidToken):
        return "GATEWAY_TENANTS_FILE", CONFIG_HINTS["zipteams_invalid_token"] + ", or check this host's clock"
    if isinstance(exc, zipteams.ZipteamsServerError):
        return "ZIPTEAMS_API_URL", "Zipteams had a server error: run the check again later; tell Zipteams if it lasts"
    return "ZIPTEAMS_API_URL", api_base_fix(api_url)  # a status or answer no Zipteams token API gives


def _without_query(url: str) -> str:
    # A Location can echo the token in its query: only the scheme, host and path are shown.
    parts = urlsplit(url)
    return redact_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def dashboard(app, found_token: zipteams.DashboardToken, timeout: float) -> Finding:
    """The dashboard's entry page with a real token, sent as the proxy sends it; a 2xx HTML page passes."""
    from gateway.delivery.proxy.upstream import DashboardProxy, discard, forward

    cfg = app.config
    base = cfg["ZIPTEAMS_DASHBOARD_URL"]
    # iframe mode: the browser asks for the same page with the token in ?token= (gateway.delivery.embed).
    token_in = cfg["GATEWAY_PROXY_TOKEN_IN"] if cfg["GATEWAY_EMBED_MODE"] == "proxy" else "query:token"
    proxy = DashboardProxy(base, timeout=timeout, max_body=cfg["GATEWAY_PROXY_MAX_BODY"], token_in=token_in,
                           pool_size=1)
    what = "dashboard"
    try:
        # A request of our own making, as a browser's first visit to /dashboard/ would be.
        with app.test_request_context("/dashboard/", base_url=cfg["GATEWAY_PUBLIC_URL"] or "http://localhost",
                                      headers={"Accept": "text/html"}, environ_base={"REMOTE_ADDR": "127.0.0.1"}):
            upstream = forward(proxy, "", found_token, None)
            status = upstream.status
            kind = upstream.headers.get("Content-Type", "").split(";")[0].strip().lower()
            location = upstream.headers.get("Location", "")
            discard(upstream)
    except GatewayError as exc:
        return Finding(what, False, exc.detail, setting="ZIPTEAMS_DASHBOARD_URL", url=base,
                       fix=f"check the host and port in ZIPTEAMS_DASHBOARD_URL {REACH}")
    finally:
        proxy.pool.close()
    if 200 <= status < 300 and kind == "text/html":
        return Finding(what, True, f"ok ({status} {kind} from {redact_url(base)} with a token for {found_token.tenant}/{found_token.subtenant})")
    failed = {"setting": "ZIPTEAMS_DASHBOARD_URL", "url": base}
    if 200 <= status < 300:
        return Finding(what, False, f"answered {status} with {kind or 'no content type'}, not an HTML page", **failed,
                       fix="ZIPTEAMS_DASHBOARD_URL must be the dashboard's entry page (confirm it with Zipteams)")
    if 300 <= status < 400:
        return Finding(what, False, f"answered {status}, a redirect to {_without_query(location) or 'nowhere'}",
                       **failed, fix="the gateway does not follow the dashboard's redirects: if that is the "
                                     "dashboard's entry page, set ZIPTEAMS_DASHBOARD_URL to it")
    if status in (401, 403):
        return Finding(what, False, f"refused the token Zipteams issued ({status})", **failed,
                       fix="ZIPTEAMS_DASHBOARD_URL and ZIPTEAMS_API_URL must be the same Zipteams environment, "
                           "and GATEWAY_PROXY_TOKEN_IN how that dashboard takes the token")
    if status == 404:
        return Finding(what, False, "answered 404 (not found): users would see an error instead of the dashboard",
                       **failed, fix=f"check the path in ZIPTEAMS_DASHBOARD_URL with your Zipteams contact "
                                     f"(Zipteams' is {DASHBOARD_DEFAULT})")
    return Finding(what, False, f"answered {status}", **failed,
                   fix="run the check again later; if it lasts, check ZIPTEAMS_DASHBOARD_URL with Zipteams")


def zipteams_path(app, subtenant, timeout: float) -> tuple[list[Finding], zipteams.DashboardToken | None]:
    found, got = token(app.config, subtenant, timeout)
    if got is None:
        return [found], None
    return [found, dashboard(app, got, timeout)], got


# ----------------------------------------------------------- IdP, JWKS, Redis
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


def redis(cfg) -> Finding:
    """The shared tier as the gateway connects to it (gateway.sharedtier: its mode, a round trip,
    a probe key written, read back and deleted in the gateway's key space)."""
    from gateway.sharedtier import check_shared_tier

    check = check_shared_tier(cfg)
    if check.ok:
        return Finding("shared cache (Redis)", True, f"ok ({check.line.removeprefix('shared tier: ')}; a probe "
                                                     "key written, read back and deleted)")
    # Each problem names GATEWAY_CACHE_URL (redacted), the mode and its fix already.
    return Finding("shared cache (Redis)", False, "; ".join(check.problems) + " (meanwhile every process fetches "
                   "tokens for itself and sign-outs are not shared)")


# --------------------------------------------------------------------- all of it
def network(app, subtenant, timeout: float, *, zipteams_too: bool = True
            ) -> tuple[list[Finding], zipteams.DashboardToken | None]:
    """Every network check, side by side; all have finished (and closed their connections) on return."""
    cfg = app.config
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="preflight") as pool:
        jobs = []
        if cfg["GATEWAY_AUTH_MODE"] == "oidc":
            jobs.append(pool.submit(idp, cfg, timeout))
        if cfg["GATEWAY_ASSERTION_HEADER"]:
            jobs.append(pool.submit(lambda: [jwks("assertion JWKS", "GATEWAY_ASSERTION_JWKS_URL",
                                                  cfg["GATEWAY_ASSERTION_JWKS_URL"], timeout)]))
        if cfg["GATEWAY_AUTH_MODE"] == "jwt" and cfg["GATEWAY_HANDOFF_JWKS_URL"]:
            jobs.append(pool.submit(lambda: [jwks("hand-off JWKS", "GATEWAY_HANDOFF_JWKS_URL",
                                                  cfg["GATEWAY_HANDOFF_JWKS_URL"], timeout)]))
        if cfg["GATEWAY_CACHE_URL"] != "memory://":
            jobs.append(pool.submit(lambda: [redis(cfg)]))
        path = pool.submit(zipteams_path, app, subtenant, timeout) if zipteams_too else None
        found = [f for job in jobs for f in job.result()]
        if path is None:
            return found, None
        path_found, got = path.result()
    return path_found + found, got


def check_at_start(app) -> None:
    """The network and settings checks once, logging a WARNING per failure; never raises."""
    cfg = getattr(app, "config", {})
    if "ZIPTEAMS_API_URL" not in cfg or "rules" not in getattr(app, "extensions", {}):
        return  # not the gateway (a benchmark's bare app)
    if not cfg["GATEWAY_STARTUP_CHECK"]:
        return
    started = time.monotonic()
    try:
        rules = app.extensions["rules"].current()
        if not len(rules):
            return
        found, _ = network(app, rules.subtenants[0], min(cfg["ZIPTEAMS_TIMEOUT"], START_TIMEOUT))
        found = sanity.findings(cfg) + found
    except Exception as exc:  # noqa: BLE001 - a check that breaks must not stop the start
        logger.warning("start-up check could not run (%s): run flask --app wsgi gateway check", type(exc).__name__)
        return
    failed = [f for f in found if not f.ok]
    for finding in failed:
        logger.warning("start-up check: %s", finding.line())
    logger.info("start-up check: %d of %d passed in %.1f s%s", len(found) - len(failed), len(found),
                time.monotonic() - started, " (details: flask --app wsgi gateway check)" if failed else "")
