"""The floor under bench/run.py's targets: a bare baseline plus only what every gateway answer carries.

With ``BENCH_OBLIGATIONS=1``, bench/bare_page.py and bench/bare_proxy_urllib3.py add
the gateway's own code for the outputs a partner reads on every answer, with the
gateway's settings (its environment):

- the request id (``gateway.ops.logs``' hooks; a trusted proxy's, or a new one,
  echoed in ``X-Request-Id``);
- the request's log line, and its count and duration in Prometheus (the same hooks);
- the gateway's security headers (``gateway.security``: its CSP on a page; on a
  proxied answer ``nosniff``, ``no-referrer``, ``no-store`` and the framing policy of
  ``gateway.delivery.proxy.upstream.frame_headers``);
- on a page, the audit events the gateway writes for it: ``login`` on a first visit,
  ``embed_viewed`` on every page (``gateway.ops.audit``).

Nothing else of the gateway: no identity checks, rules, token, revocation check,
team choice, header policy or scrubbing. This floor's requests per second over its
bare baseline's, in the same run, is what the gateway would measure if these outputs
were all it added: a guide to how much of a target they use up, not a bound (the
gateway does some of the baseline's work more cheaply: a cached page, remembered
cookie checks). bench/run.py checks that a floor writes what the gateway writes.
"""
from __future__ import annotations

import os

from flask import Flask, Response, g

from gateway import config as settings, security
from gateway.delivery.proxy.upstream import frame_headers
from gateway.ops import audit, logs


def add_to(app: Flask) -> None:
    """The gateway's request id, log line, metrics and security headers on ``app``'s answers."""
    app.config.update(settings.load(os.environ))
    logs.init_app(app)
    security.init_app(app)
    app.extensions["frame_headers"] = frame_headers(app.config["GATEWAY_FRAME_ANCESTORS"])


def page_viewed(email: str, team: str, first_visit: bool) -> None:
    """The audit events the gateway writes for an embed page (gateway.identity.session, gateway.delivery.embed)."""
    if first_visit:
        audit.event("login", email=email, mode="header", groups=0)
    domain = email.rpartition("@")[2]
    audit.event("embed_viewed", email=email, tenant="acme", subtenant=team, rule=f"email_domain {domain}",
                mode="proxy")


def proxied(app: Flask, response: Response) -> Response:
    """A proxied answer as the gateway sends it: the dashboard's, with our framing policy."""
    g.proxied = True
    response.headers.extend(app.extensions["frame_headers"])
    return response
