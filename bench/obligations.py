"""The floor under bench/run.py's targets: a bare baseline plus what any production Flask app carries.

With ``BENCH_OBLIGATIONS=1``, bench/bare_page.py and bench/bare_proxy_urllib3.py add
the gateway's own code for the outputs a partner reads on every answer, with the
gateway's settings (its environment):

- a request id (``gateway.ops.logs``' hooks; a trusted proxy's, or a new one,
  echoed in ``X-Request-Id``);
- one JSON access line per request (the same hooks; ``GATEWAY_LOG_FORMAT`` as the gateway's);
- the request's count and latency in Prometheus (the same hooks);
- the gateway's security headers (``gateway.security``: its CSP on a page; on a
  proxied answer ``nosniff``, ``no-referrer``, ``no-store`` and the framing policy of
  ``gateway.delivery.proxy.upstream.frame_headers``).

No audit events: the gateway writes a page's (``login``, ``embed_viewed``) on the request's
one access line (``gateway.ops.audit``), so they are part of its own work, as are its
identity checks, rules, token, revocation check, team choice, header policy and scrubbing.
This floor's requests per second over its bare baseline's, in the same run, is what any
production Flask app would measure; the targets are stated against it, the bare ratios
reported beside them. bench/run.py checks that a floor writes the same lines, of the same
shape, and sets the same headers as the gateway for the same request (``check_floor``).

With ``BENCH_ADMISSION=1`` as well, the floor also runs behind the gateway's own server-side
middleware (``gateway.serving.admission.install``: the turn each request gives the worker's other
connections, places, the body read ahead). It is no target: it shows what of the gap to the
floor is the server model's fairness, which any app on gunicorn's gevent worker would need for the
gateway's tail latency, and what is the gateway's own work.
"""
from __future__ import annotations

import os

from flask import Flask, Response, g

from gateway import config as settings, security
from gateway.delivery.proxy.upstream import frame_headers
from gateway.ops import logs
from gateway.serving import admission


def add_to(app: Flask) -> None:
    """The gateway's request id, log line, metrics and security headers on ``app``'s answers."""
    app.config.update(settings.load(os.environ))
    logs.init_app(app)
    security.init_app(app)
    app.extensions["frame_headers"] = frame_headers(app.config["GATEWAY_FRAME_ANCESTORS"])
    if os.environ.get("BENCH_ADMISSION") == "1":
        admission.install(app)


def proxied(app: Flask, response: Response) -> Response:
    """A proxied answer as the gateway sends it: the dashboard's, with our framing policy."""
    g.proxied = True
    response.headers.extend(app.extensions["frame_headers"])
    return response
