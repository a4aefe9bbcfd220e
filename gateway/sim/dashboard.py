"""The stand-in's dashboard: a page that bootstraps its script with the token, as
real embedded dashboards do, plus the JSON API, CSV export and echo endpoints
the proxy tests use. Every route here runs after the token check in
``create_sim_app``.
"""
from __future__ import annotations

import hashlib
import time
from html import escape

from flask import Flask, Response, jsonify, redirect, request, stream_with_context

from . import STATIC, dumps, fingerprint_numbers

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Zipteams Insights</title>
<link rel="stylesheet" href="app.css?token={token}">
<script id="zt-bootstrap" type="application/json">{bootstrap}</script>
</head><body>
<main id="app" data-state="loading">
<h1>Insights for <span id="subtenant-name">{subtenant}</span></h1>
<p class="tenant">Tenant <span id="tenant">{tenant}</span></p>
<dl><dt>Meetings</dt><dd id="meetings">…</dd><dt>Deals</dt><dd id="deals">…</dd>
<dt>Win rate</dt><dd id="win-rate">…</dd></dl>
<p id="status">Loading…</p>
</main>
<script src="app.js?token={token}"></script>
</body></html>
"""


def register(app: Flask, state, poll_ms: int = 15000) -> None:
    def claims() -> dict:
        return request.environ["sim.claims"]

    def token() -> str:
        return request.environ["sim.token"]

    @app.get("/dashboard/")
    def page():
        c = claims()
        boot = dumps({"token": token(), "tenant": c["tenantId"], "subtenant": c["subTenantId"],
                      "api": "api/summary", "poll": poll_ms})
        # "</" inside a script block would end it early.
        boot = boot.replace("</", "<\\/")
        html = PAGE.format(token=escape(token()), bootstrap=boot, tenant=escape(c["tenantId"]),
                           subtenant=escape(c["subTenantId"]))
        return Response(html, mimetype="text/html")

    @app.get("/dashboard/app.js")
    def app_js():
        return Response((STATIC / "app.js").read_bytes(), mimetype="text/javascript")

    @app.get("/dashboard/app.css")
    def app_css():
        return Response((STATIC / "app.css").read_bytes(), mimetype="text/css")

    @app.get("/dashboard/api/summary")
    def summary():
        c = claims()
        return jsonify(tenant=c["tenantId"], subtenant=c["subTenantId"], expires_at=c["exp"],
                       served_at=time.time(), **fingerprint_numbers(c["tenantId"], c["subTenantId"]))

    @app.route("/dashboard/api/echo", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def echo():
        body = request.get_data()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        return jsonify(method=request.method, path=request.path,
                       query=request.environ.get("QUERY_STRING", ""),
                       headers=headers, cookies_seen="Cookie" in request.headers,
                       authorization_seen="Authorization" in request.headers,
                       body_bytes=len(body), body_sha256=hashlib.sha256(body).hexdigest())

    @app.get("/dashboard/api/echo-token")
    def echo_token():
        # Some dashboards hand their token back in headers and bodies.
        response = jsonify(token=token(), note=f"token={token()}")
        response.headers["X-Dashboard-Token"] = token()
        return response

    @app.get("/dashboard/api/redirect")
    def go_elsewhere():
        target = request.args.get("to", "api/summary")
        absolute = request.host_url.rstrip("/") + "/dashboard/" + target + "?token=" + token()
        return redirect(absolute, code=302)

    @app.get("/dashboard/api/cookie")
    def cookie():
        response = jsonify(ok=True)
        response.headers.add("Set-Cookie", f"zt_pref=compact; Domain={request.host.split(':')[0]}; "
                                           "Path=/; HttpOnly; SameSite=Lax")
        response.headers.add("Set-Cookie", "zt_view=week; Path=/dashboard/reports")
        return response

    @app.get("/dashboard/api/slow")
    def slow():
        time.sleep(min(float(request.args.get("s", "1")), 30))
        return jsonify(ok=True)

    @app.post("/dashboard/api/upload")
    def upload():
        digest, size = hashlib.sha256(), 0
        stream = request.stream
        while chunk := stream.read(65536):
            digest.update(chunk)
            size += len(chunk)
        return jsonify(body_bytes=size, body_sha256=digest.hexdigest())

    @app.get("/dashboard/export.csv")
    def export():
        try:
            megabytes = max(0.0, min(float(request.args.get("mb", "1")), 1024))
        except ValueError:
            return jsonify(error="mb must be a number"), 400
        total = int(megabytes * 1024 * 1024)
        c = claims()
        row = f"{c['tenantId']},{c['subTenantId']},meeting,42,0.35\n".encode()
        block = row * (65536 // len(row) + 1)

        def generate():
            sent = 0
            yield b"tenant,subtenant,kind,count,rate\n"
            while sent < total:
                piece = block[: total - sent]
                sent += len(piece)
                yield piece

        return Response(stream_with_context(generate()), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=export.csv"})

    @app.route("/dashboard/<path:anything>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def other(anything):
        return jsonify(error="no such dashboard resource", path=request.path), 404
