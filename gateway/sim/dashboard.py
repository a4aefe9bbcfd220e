"""The stand-in's dashboard: a page that bootstraps its script with the token, as
real embedded dashboards do, plus the JSON API, CSV export and echo endpoints
the proxy tests use. Every route here runs after the token check in
``create_sim_app``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import time
import zlib
from html import escape
from pathlib import Path

from flask import Flask, Response, jsonify, redirect, request, stream_with_context

from gateway.sim.state import SimState

STATIC = Path(__file__).resolve().parent / "static"

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


PAGE_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'"


def fingerprint_numbers(tenant: str, subtenant: str) -> dict[str, int]:
    """Stable, tenant-specific figures for the dashboard to render."""
    digest = hashlib.sha256(f"{tenant}/{subtenant}".encode()).digest()
    return {"meetings": 100 + digest[0], "deals": 10 + digest[1] % 90, "win_rate": 20 + digest[2] % 60}


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        import brotli

        return brotli.compress(data)
    if encoding == "zstd":
        # Whichever zstd urllib3's extra brought: the standard library's (3.14), backports.zstd
        # (urllib3 2.5 and later), or zstandard (earlier urllib3 2.x).
        try:
            from compression import zstd
        except ImportError:
            try:
                from backports import zstd
            except ImportError:
                import zstandard

                return zstandard.ZstdCompressor().compress(data)
        return zstd.compress(data)
    return data


def register(app: Flask, state: SimState, poll_ms: int = 15000) -> None:
    def claims() -> dict:
        return request.environ["sim.claims"]

    def token() -> str:
        value = request.environ["sim.token"]
        c = claims()
        # What a dashboard keeps in its own session state (emptied by /_sim/reset with the rest).
        state.first_seen.setdefault((c["tenantId"], c["subTenantId"]), value)
        return value

    @app.get("/dashboard/")
    def page():
        c = claims()
        boot = dumps({"token": token(), "tenant": c["tenantId"], "subtenant": c["subTenantId"],
                      "api": "api/summary", "poll": poll_ms})
        # "</" inside a script block would end it early.
        boot = boot.replace("</", "<\\/")
        html = PAGE.format(token=escape(token()), bootstrap=boot, tenant=escape(c["tenantId"]),
                           subtenant=escape(c["subTenantId"]))
        response = Response(html, mimetype="text/html")
        # A policy of its own, as most web apps send, with no say on who may frame it.
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

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
                       cookies=dict(request.cookies),
                       authorization_seen="Authorization" in request.headers,
                       body_bytes=len(body), body_sha256=hashlib.sha256(body).hexdigest())

    @app.get("/dashboard/api/echo-token")
    def echo_token():
        # Some dashboards hand their token back in headers and bodies.
        response = jsonify(token=token(), note=f"token={token()}")
        response.headers["X-Dashboard-Token"] = token()
        return response

    @app.get("/dashboard/api/echo-token-as")
    def echo_token_as():
        """The token in a chosen type, charset and content coding, and in Link and custom headers.

        ``which=first`` echoes the first token this dashboard saw for the team, as a
        dashboard that keeps it in its own state would after the gateway renewed it.
        """
        c = claims()
        value = token()
        if request.args.get("which") == "first":
            value = state.first_seen[(c["tenantId"], c["subTenantId"])]
        kind = request.args.get("type", "application/json")
        charset = request.args.get("charset", "utf-8")
        text = f'{{"token":"{value}","data":{{"token":"{value}"}}}}\n'
        if kind == "text/html":
            text = f"<!doctype html><html><body><p id=t>{value}</p></body></html>"
        body = _encode(text.encode(charset), request.args.get("encoding", ""))
        response = Response(body, content_type=f"{kind}; charset={charset}" if "charset" in request.args else kind)
        if request.args.get("encoding"):
            response.headers["Content-Encoding"] = request.args["encoding"]
        response.headers["Link"] = f"</dashboard/api/next?token={value}>; rel=next"
        response.headers["X-Insights-Session"] = f"t={value}"
        # Byte ranges, as static file servers offer them: a slice could cut the token in two.
        return response.make_conditional(request, accept_ranges=True, complete_length=len(body))

    @app.get("/dashboard/api/download")
    def download():
        # Reflects a parameter into a binary download, as exports put a title in the file.
        title = request.args.get("title", "")
        body = b"\x00\x01EXPORT\x00title=" + title.encode() + b"\x00" + bytes(range(256))
        return Response(body, mimetype="application/octet-stream",
                        headers={"Content-Disposition": "attachment; filename=export.bin"})

    @app.get("/dashboard/api/events")
    def events():
        count = min(int(request.args.get("n", "3")), 50)
        gap = min(float(request.args.get("gap", "0.2")), 5)
        value = token()

        def generate():
            for i in range(count):
                yield f"id: {i}\ndata: {{\"n\":{i},\"token\":\"{value}\"}}\n\n".encode()
                time.sleep(gap)

        return Response(stream_with_context(generate()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})

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
