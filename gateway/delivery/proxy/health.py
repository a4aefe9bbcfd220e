"""The dashboard's failures through the proxy, for the embed page to see (static/embed.js).

A dashboard polls. When its calls through ``/dashboard/`` fail because of the gateway or the
token (a gateway error: 429, 502, 503 or 504, marked ``X-Gateway-Error``; or the dashboard
refusing the token after the proxy's retry: 401, 403), the dashboard shows its own raw error,
and the embed page cannot see it: browsers do not report another document's fetch answers
until that document reads them. So the proxy notes the failure here, per user and team, and
the next answer the dashboard accepts clears it. The embed page's session check
(``GET /session/status?team=…``, every 15 s) reads it; the page then asks the gateway itself
(a probe of the dashboard's first page) and, if that fails too, shows the gateway's
reconnecting panel with the request id until a probe succeeds.

Per process, bounded, kept ``KEEP`` seconds: with several workers a check may reach one that
has not seen the failure; the dashboard's polling reaches every worker, so a later check does.
It is a prompt for the probe, never a verdict.
"""
from __future__ import annotations

from flask import current_app, g

from gateway.delivery.proxy.placeholders import bound_match
from gateway.delivery.proxy.view import bp
from gateway.memo import Memo
from gateway.tenancy.choice import current_subtenant, user_matches

KEEP = 120.0
FAILING = frozenset({401, 403, 429, 502, 503, 504})


def _failures() -> Memo:
    memo = current_app.extensions.get("dashboard_failures")
    if memo is None:
        memo = current_app.extensions.setdefault("dashboard_failures", Memo(16384, KEEP))
    return memo


def _who() -> str | None:
    user = g.get("user")
    return None if user is None else (user.subject or user.email)


def _team() -> str | None:
    try:
        match = bound_match(user_matches()) or current_subtenant()
    except Exception:  # noqa: BLE001 - no team to note it for (choice needed, no link, a forged placeholder)
        return None
    return match.key


@bp.after_request
def note(response):
    """Note a failing dashboard answer for its user and team; an accepted one clears it."""
    who = _who()
    if who is None:
        return response
    memo = _failures()
    status = response.status_code
    # Only then: a missing header costs werkzeug an exception object, on every proxied answer.
    code = response.headers.get("X-Gateway-Error") if status in FAILING else None
    if status in FAILING and (code or status in (401, 403)):
        team = _team()
        if team is not None:
            failures = dict(memo.get(who) or {})
            failures[team] = {"status": status, "code": code or "dashboard_rejected",
                              "requestId": g.get("request_id"),
                              "retryAfter": int(response.headers["Retry-After"]) if
                              response.headers.get("Retry-After", "").isdigit() else None}
            memo.put(who, failures)
    elif status < 400:
        failures = memo.get(who)  # one look-up on the usual path: nothing noted for this user
        if failures:
            team = _team()
            if team in failures:
                rest = {k: v for k, v in failures.items() if k != team}
                memo.put(who, rest or None)
    return response


def failure_for(team: str) -> dict | None:
    """The last failure the dashboard met for the signed-in user and ``team``, if not cleared since."""
    who = _who()
    failures = _failures().get(who) if who else None
    return (failures or {}).get(team)
