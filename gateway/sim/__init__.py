"""A spec-faithful stand-in for Zipteams: the Auth Token API and a small dashboard.

For development and tests only; the production app never mounts it. Token
endpoint checks run in the spec's order: key/secret (403), tenant (400),
subtenant (400), rate limit (429). Tokens are HS256 JWTs with ``tenantId``,
``subTenantId``, ``iat`` and ``exp``. Test control lives under ``/_sim/``.
"""
from __future__ import annotations

import hmac
import secrets
import time
from typing import Callable

import jwt
from flask import Flask, Response, jsonify, request

from gateway.sim.dashboard import register as register_dashboard
from gateway.sim.state import SimState

TOKEN_PATH = "/api/v1/partner/dashboard/auth/token"
SPEC_MESSAGES = {
    400: "Tenant ID is required",
    403: "Forbidden",
    429: "Rate limit exceeded. Try again in 60 seconds.",
    500: "Internal server error",
}


def create_sim_app(partners: dict[str, str], *, rate_limit: int | None = None,
                   token_ttl: int = 86400, clock: Callable[[], float] = time.time,
                   signing_key: bytes | None = None, poll_ms: int = 15000) -> Flask:
    """The stand-in as a WSGI app. ``partners`` maps API key to API secret."""
    app = Flask(__name__, static_folder=None)
    state = SimState(clock)
    key = signing_key or secrets.token_bytes(32)
    app.extensions["sim"] = state

    def spec_error(status: int, message: str | None = None):
        return jsonify(success=False, message=message or SPEC_MESSAGES[status]), status

    def mint(tenant: str, subtenant: str) -> str:
        now = int(clock())
        claims = {"tenantId": tenant, "subTenantId": subtenant, "iat": now, "exp": now + token_ttl,
                  # Unique per mint, so that a revoked token and its successor never coincide.
                  "jti": secrets.token_hex(8)}
        value = jwt.encode(claims, key, algorithm="HS256")
        with state.lock:
            state.minted.add(value)
            state.last_token[(tenant, subtenant)] = value
        return value

    @app.after_request
    def count_status(response):
        if request.path == TOKEN_PATH:
            with state.lock:
                state.statuses[str(response.status_code)] += 1
        return response

    @app.get(TOKEN_PATH)
    def token():
        api_key = request.headers.get("x-api-key", "")
        tenant = request.headers.get("x-tenant-id", "")
        subtenant = request.headers.get("x-sub-tenant-id", "")
        with state.lock:
            state.token_requests += 1
            if tenant and subtenant:
                state.by_subtenant[f"{tenant}/{subtenant}"] += 1
        fault = state.next_fault()
        if fault:
            if fault.get("delay"):
                time.sleep(float(fault["delay"]))
            if fault.get("status"):
                return spec_error(int(fault["status"]), fault.get("message"))
            if fault.get("malformed"):
                return malformed(str(fault["malformed"]), tenant, subtenant)
        expected = partners.get(api_key)
        sent = request.headers.get("x-api-secret", "")
        if expected is None or not hmac.compare_digest(expected.encode(), sent.encode()):
            return spec_error(403)
        if not tenant:
            return spec_error(400, "Tenant ID is required")
        if not subtenant:
            return spec_error(400, "Subtenant ID is required")
        wait = state.rate_limited(api_key, rate_limit)
        if wait:
            return spec_error(429, f"Rate limit exceeded. Try again in {wait} seconds.")
        return jsonify(code="RESPONSE_SUCCESS", message="Request served successfully.", type="object",
                       data={"token": mint(tenant, subtenant)})

    def malformed(kind: str, tenant: str, subtenant: str):
        if kind == "no-token":
            return jsonify(code="RESPONSE_SUCCESS", message="Request served successfully.", data={})
        if kind == "not-jwt":
            return jsonify(code="RESPONSE_SUCCESS", message="Request served successfully.",
                           data={"token": "not-a-jwt"})
        if kind == "same-token":
            # The token this subtenant got last time, again (the spec's tokens carry no jti).
            with state.lock:
                last = state.last_token.get((tenant, subtenant))
            return jsonify(code="RESPONSE_SUCCESS", message="Request served successfully.", type="object",
                           data={"token": last or mint(tenant, subtenant)})
        if kind == "wrong-subtenant":
            return jsonify(code="RESPONSE_SUCCESS", message="Request served successfully.",
                           data={"token": mint(tenant, subtenant + "-other")})
        # Default: what a load balancer in front of an API sends when it is unhappy.
        return Response("<html><body>Bad gateway</body></html>", 200, mimetype="text/html")

    # ------------------------------------------------------------ dashboard
    def verified_claims() -> dict | None:
        raw = request.args.get("token")
        auth = request.headers.get("Authorization", "")
        if raw is None and auth.startswith("Bearer "):
            raw = auth[7:]
        if not raw:
            return None
        with state.lock:
            if raw in state.revoked:
                return None
        try:
            # Time checks against the stand-in's own clock, which tests may move.
            claims = jwt.decode(raw, key, algorithms=["HS256"], options={
                "require": ["exp", "iat"], "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError:
            return None
        return claims if claims["exp"] > clock() else None

    @app.before_request
    def record_and_guard():
        if request.path.startswith("/_sim/") or request.path == TOKEN_PATH:
            return None
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
        raw_path = raw.split("?", 1)[0]
        # Everything the dashboard was sent, for the leak oracle: a token belongs only in
        # ``?token=`` or ``Authorization: Bearer``, and nothing else secret belongs anywhere.
        state.journal_request({
            "method": request.method, "path": raw_path,
            "query": request.environ.get("QUERY_STRING", ""),
            "headers": [[name, value] for name, value in request.headers.items()],
            "cookies": [[name, value] for name, value in request.cookies.items(multi=True)],
            "at": time.time(),
        })
        with state.lock:
            state.dashboard_paths.append(raw_path)
        if not request.path.startswith("/dashboard/"):
            return Response("not found", 404)
        fault = state.next_dashboard_fault(request.path)
        if fault:
            # What a dashboard's server says when it fails, before it looks at the token.
            status = int(fault["dashboard_status"])
            return Response(f"<!doctype html><title>{status}</title><h1>Error {status}</h1>", status,
                            mimetype="text/html")
        claims = verified_claims()
        if claims is None:
            return jsonify(error="invalid or expired token"), 401
        request.environ["sim.claims"] = claims
        request.environ["sim.token"] = request.args.get("token") or \
            request.headers.get("Authorization", "")[7:]
        return None

    register_dashboard(app, state, poll_ms)

    # ------------------------------------------------------------- control
    @app.get("/_sim/stats")
    def stats():
        with state.lock:
            return jsonify(token_requests=state.token_requests, by_subtenant=dict(state.by_subtenant),
                           statuses=dict(state.statuses),
                           dashboard_paths=list(state.dashboard_paths),
                           pending_faults=[dict(f) for f in state.faults],
                           pending_dashboard_faults=[dict(f) for f in state.dashboard_faults])

    @app.get("/_sim/requests")
    def journaled_requests():
        """Every dashboard request still in the journal (black-box use); ``?since=<seq>`` for the newer ones."""
        try:
            since = int(request.args.get("since", "0"))
        except ValueError:
            return jsonify(error="since must be an integer"), 400
        with state.lock:
            entries = [dict(e) for e in state.requests if e["seq"] > since]
            last = state.requests_seen
        return jsonify(requests=entries, last_seq=last)

    @app.delete("/_sim/faults")
    def clear_faults():
        with state.lock:
            state.faults.clear()
            state.dashboard_faults.clear()
        return jsonify(ok=True, pending=0)

    @app.post("/_sim/faults")
    def faults():
        spec = request.get_json(silent=True)
        if not isinstance(spec, dict):
            return jsonify(error="expected a JSON object"), 400
        count = spec.get("count", 1)
        if not isinstance(count, int) or count < 1:
            return jsonify(error="count must be a positive integer"), 400
        if "dashboard_status" in spec:
            # The dashboard (not the token API) answers this status, for ``path`` or any path.
            status, path = spec["dashboard_status"], spec.get("path", "/dashboard/")
            if not isinstance(status, int) or not 400 <= status <= 599:
                return jsonify(error="dashboard_status must be an HTTP error status (400-599)"), 400
            if not isinstance(path, str) or not path.startswith("/dashboard/"):
                return jsonify(error="path must start with /dashboard/"), 400
            with state.lock:
                state.dashboard_faults.append(dict(spec, path=path, count=count))
            return jsonify(ok=True, pending=len(state.dashboard_faults))
        if "status" in spec:
            if spec["status"] not in SPEC_MESSAGES:
                return jsonify(error="status must be one of 400, 403, 429, 500"), 400
        elif "delay" in spec:
            if not isinstance(spec["delay"], (int, float)) or not 0 < spec["delay"] <= 60:
                return jsonify(error="delay must be seconds between 0 and 60"), 400
        elif not spec.get("malformed"):
            return jsonify(error="give status, delay or malformed"), 400
        with state.lock:
            state.faults.append(dict(spec, count=count))
        return jsonify(ok=True, pending=len(state.faults))

    @app.post("/_sim/revoke")
    def revoke():
        """Every token minted so far stops working at the dashboard (early rotation)."""
        with state.lock:
            state.revoked |= state.minted
            count = len(state.minted)
        return jsonify(ok=True, revoked=count)

    @app.post("/_sim/reset")
    def reset():
        state.reset()
        return jsonify(ok=True)

    return app
