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


from gateway import bounded
from gateway.admin import sanity
from gateway.admin.findings import Finding
from gateway.admin.services import REACH, SHARED_TIER, idp, jwks, redis_finding
from gateway.config import BY_NAME, redact_url
from gateway.errors import GatewayError
from gateway.tokens import client as zipteams
from gateway.tokens.protection import CONFIG_HINTS

logger = logging.getLogger(__name__)

START_TIMEOUT = 3.0  # seconds per connect and per answer at start-up (ZIPTEAMS_TIMEOUT if shorter)
API_DEFAULT = BY_NAME["ZIPTEAMS_API_URL"].default
DASHBOARD_DEFAULT = BY_NAME["ZIPTEAMS_DASHBOARD_URL"].default


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
    # A Location can echo the token anywhere, in its path as well as its query: only the scheme
    # and host are shown (an allow-list, not a search for the token).
    parts = urlsplit(url)
    shown = redact_url(urlunsplit((parts.scheme, parts.netloc, "", "", "")))
    return shown + ("/…" if (parts.path not in ("", "/") or parts.query) else "/") if shown else ""


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
            discard(upstream, proxy)
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
    """The token, then the dashboard's page with it: each hop within its own deadline in all."""
    cfg, limit = app.config, CHECK_BUDGET * timeout
    try:
        found, got = bounded.call(limit, token, cfg, subtenant, timeout)
    except bounded.TimedOut:
        return [too_slow(f"token request for {subtenant.key}", "ZIPTEAMS_API_URL", cfg["ZIPTEAMS_API_URL"], limit)], None
    if got is None:
        return [found], None
    try:
        return [found, bounded.call(limit, dashboard, app, got, timeout)], got
    except bounded.TimedOut:
        return [found, too_slow("dashboard", "ZIPTEAMS_DASHBOARD_URL", cfg["ZIPTEAMS_DASHBOARD_URL"], limit)], got


def too_slow(what: str, setting: str, url: str, limit: float) -> Finding:
    """A hop that answered, but not completely within ``limit`` seconds in all (gateway.bounded)."""
    return Finding(what, False, f"no complete answer within {limit:g} s in all (a server that answers, but too "
                                "slowly to finish)", setting=setting, url=url,
                   fix=f"check that {setting} points at the right service and that it is healthy")


# ----------------------------------------------------------- IdP, JWKS, Redis: gateway.admin.services
# --------------------------------------------------------------------- all of it
# A check makes at most two requests one after the other (discovery, then the JWKS), each with
# ``timeout`` per read and per connect: in all it gets this many times that.
CHECK_BUDGET = 3


def network(app, subtenant, timeout: float, *, zipteams_too: bool = True
            ) -> tuple[list[Finding], zipteams.DashboardToken | None]:
    """Every network check, side by side; on return each has finished (its connections closed) or
    been given up after CHECK_BUDGET times ``timeout`` in all (gateway.bounded)."""
    cfg = app.config
    limit = CHECK_BUDGET * timeout

    def bounded_check(what: str, setting: str, url: str, fn, *args):
        try:
            return bounded.call(limit, fn, *args)
        except bounded.TimedOut:
            return [too_slow(what, setting, url, limit)]

    def jwks_check(what: str, setting: str):
        # Its own scope per JWKS: the URL is bound here, never read later from a shared variable.
        url = cfg[setting]
        return bounded_check(what, setting, url, lambda: [jwks(what, setting, url, timeout)])

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="preflight") as pool:
        jobs = []
        if cfg["GATEWAY_AUTH_MODE"] == "oidc":
            jobs.append(pool.submit(bounded_check, "IdP", "OIDC_ISSUER", cfg["OIDC_ISSUER"], idp, cfg, timeout))
        if cfg["GATEWAY_ASSERTION_HEADER"]:
            jobs.append(pool.submit(jwks_check, "assertion JWKS", "GATEWAY_ASSERTION_JWKS_URL"))
        if cfg["GATEWAY_AUTH_MODE"] == "jwt" and cfg["GATEWAY_HANDOFF_JWKS_URL"]:
            jobs.append(pool.submit(jwks_check, "hand-off JWKS", "GATEWAY_HANDOFF_JWKS_URL"))
        path = pool.submit(zipteams_path, app, subtenant, timeout) if zipteams_too else None
        found = [f for job in jobs for f in job.result()]
        # The shared tier (None with memory://): making the app probed it moments ago, within its own
        # time limit (gateway.shared.init_app), so it is reported, not asked again.
        probed = app.extensions.get("shared_tier_check")
        if probed is not None:
            found.append(redis_finding(probed))
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
        # The shared tier's finding is the probe making the app made (no second one), counted below.
        found, _ = network(app, rules.subtenants[0], min(cfg["ZIPTEAMS_TIMEOUT"], START_TIMEOUT))
        found = sanity.findings(cfg) + found
    except Exception as exc:  # noqa: BLE001 - a check that breaks must not stop the start
        logger.warning("start-up check could not run (%s): run flask --app wsgi gateway check", type(exc).__name__)
        return
    failed = [f for f in found if not f.ok]
    for finding in failed:
        if finding.what != SHARED_TIER:  # its own ERROR line, with the fix, is in the log already
            logger.warning("start-up check: %s", finding.line())
    logger.info("start-up check: %d of %d passed in %.1f s%s", len(found) - len(failed), len(found),
                time.monotonic() - started, " (details: flask --app wsgi gateway check)" if failed else "")
