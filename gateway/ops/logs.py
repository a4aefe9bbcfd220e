"""Logging: one line per event to stdout, a request id on every line and response.

``GATEWAY_LOG_FORMAT=text`` for people, ``json`` for log pipelines (shapes in ``gateway.ops.logformat``);
in both, one event is exactly one line, so no request can forge a line. The request id comes from
``X-Request-Id`` when a trusted proxy sent a sane one, otherwise it is generated; it is echoed in the
response and on every error page. Access lines name the path, never the query string, and carry
the audit events raised while serving the request (``gateway.ops.audit``): one line per request.
Every line goes out through the process's one log path (``gateway.ops.logwriter``).
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, current_app, g, request

from gateway.peers import peer_is_trusted
from gateway.ops import audit, logwriter, metrics
from gateway.ops.logformat import path_for_line
from gateway.ops.requestid import SANE_REQUEST_ID, new_request_id

logger = logging.getLogger(__name__)
bp = Blueprint("logs", __name__)

REQUEST_LINE = "request method=%s path=%s endpoint=%s status=%s ms=%.1f"


def init_app(app: Flask) -> None:
    if not app.config.get("TESTING"):
        logwriter.configure(app.config["GATEWAY_LOG_LEVEL"], app.config["GATEWAY_LOG_FORMAT"])
    app.register_blueprint(bp)
    app.teardown_request(audit.flush)


@bp.before_app_request
def assign_request_id() -> None:
    g.started = time.perf_counter()
    audit.collect()
    incoming = request.headers.get("X-Request-Id")
    if incoming and SANE_REQUEST_ID.fullmatch(incoming) and peer_is_trusted(
            request.remote_addr, current_app.config["GATEWAY_TRUSTED_PROXIES"]):
        g.request_id = incoming
    else:
        g.request_id = new_request_id()


@bp.after_app_request
def log_request(response):
    response.headers["X-Request-Id"] = g.get("request_id", "-")  # replaces any upstream one
    route = request.endpoint
    if route != "static":
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = route or "unmatched"
        status = response.status_code
        metrics.count_request(route, status, elapsed)
        audit.request_line(logger, REQUEST_LINE, (request.method, path_for_line(request.path), route, status,
                                                  elapsed * 1000))  # with the request's audit events
    return response
