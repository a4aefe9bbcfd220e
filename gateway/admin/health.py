"""Operations endpoints: liveness, readiness and Prometheus metrics. None calls Zipteams."""
from __future__ import annotations

import threading

from flask import Blueprint, Response, abort, current_app, jsonify, request

from gateway.ops import metrics
from gateway.peers import peer_is_trusted
from gateway.tokens.breaker import CircuitBreaker

bp = Blueprint("ops", __name__)
# Set in a worker that is stopping (gateway.serving.stopping): not ready from that moment on.
DRAINING = threading.Event()


@bp.route("/healthz")
def healthz():
    """Liveness: the process answers."""
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """Readiness: can this instance serve users? Settings and tenant rules loaded, not stopping.

    Not Zipteams' health, and not Redis': the gateway serves cached users through a
    vendor outage and runs without Redis, and an orchestrator that pulled every
    instance when the vendor stumbled would make things worse. Both are reported
    here (and in /metrics) for dashboards and alerts.
    """
    rules = current_app.extensions["rules"].current()
    breaker = current_app.extensions["breaker"]
    reasons = []
    if not len(rules):
        reasons.append("no tenant rules loaded")
    if DRAINING.is_set():
        reasons.append("stopping: finishing the requests in flight")
    body = {"status": "ready" if not reasons else "not ready", "rules": len(rules),
            "zipteams": {"breaker": CircuitBreaker.NAMES[breaker.state]}}
    shared = current_app.extensions["shared"]
    if shared is not None:
        body["shared_cache"] = "available" if shared.available else "unavailable"
    if reasons:
        body["reasons"] = reasons
    return jsonify(body), 200 if not reasons else 503


@bp.route("/metrics")
def metrics_endpoint():
    """Prometheus text, for the addresses in GATEWAY_METRICS_ALLOW only."""
    if not peer_is_trusted(request.remote_addr, current_app.config["GATEWAY_METRICS_ALLOW"]):
        abort(404)  # not even its existence is shown to others
    body, content_type = metrics.render()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
