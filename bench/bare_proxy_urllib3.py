"""Baseline for the benchmarks: the least a Flask + urllib3 proxy can do, on the gateway's pool settings.

The same HTTP client and connection pool as the gateway's proxy view
(gateway/delivery/proxy/upstream.py, ``DashboardProxy``): one ``urllib3.connection_from_url``
pool for the dashboard's origin, ``maxsize=32, block=False, retries=False``,
connect and read timeouts of ``ZIPTEAMS_TIMEOUT`` (10 s by default), and
``urlopen(..., redirect=False, retries=False, preload_content=False,
decode_content=False, assert_same_host=False)``. No login, no rules, no header
hygiene, no token scrubbing: one token fetched at start-up and attached to every
request, the answer streamed back as it comes. It exists only to be measured
next to the gateway (``gunicorn bench.bare_proxy_urllib3:app``), so that the
comparison is of the gateway's own work, not of HTTP clients. With
``BENCH_OBLIGATIONS=1`` it also writes the gateway's request id, log line, metrics and
security headers (bench/obligations.py: the floor under the targets).
"""
import json
import os
from urllib.parse import urlsplit

import urllib3
from flask import Flask, Response, request

# The floor only: the bare baseline imports nothing of the gateway.
obligations = None
if os.environ.get("BENCH_OBLIGATIONS") == "1":
    from bench import obligations

API = os.environ["ZIPTEAMS_API_URL"].rstrip("/")
DASHBOARD = os.environ["ZIPTEAMS_DASHBOARD_URL"].rstrip("/") + "/"
TIMEOUT = float(os.environ.get("ZIPTEAMS_TIMEOUT", "10"))
BASE_PATH = urlsplit(DASHBOARD).path
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                 "proxy-authenticate", "proxy-authorization"})

pool = urllib3.connection_from_url(DASHBOARD, maxsize=32, block=False, retries=False,
                                   timeout=urllib3.Timeout(connect=TIMEOUT, read=TIMEOUT))
_answer = urllib3.PoolManager().request("GET", API + "/partner/dashboard/auth/token", timeout=TIMEOUT, headers={
    "x-api-key": os.environ["ZIPTEAMS_API_KEY"], "x-api-secret": os.environ["ZIPTEAMS_API_SECRET"],
    "x-tenant-id": "acme", "x-sub-tenant-id": os.environ.get("BENCH_SUBTENANT", "team00")})
_token = json.loads(_answer.data)["data"]["token"]

app = Flask(__name__)
if obligations:
    obligations.add_to(app)


def _stream(upstream):
    try:
        yield from upstream.stream(65536, decode_content=False)
    finally:
        upstream.release_conn()


@app.route("/dashboard/<path:path>")
def proxy(path):
    query = request.query_string.decode()
    url = f"{BASE_PATH}{path}?{query + '&' if query else ''}token={_token}"
    upstream = pool.urlopen(request.method, url, headers={"Accept": request.headers.get("Accept", "*/*")},
                            redirect=False, retries=False, preload_content=False, decode_content=False,
                            assert_same_host=False)
    # Not decoded, so the upstream's Content-Length (and Content-Encoding) still hold.
    headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP]
    response = Response(_stream(upstream), status=upstream.status, headers=headers, direct_passthrough=True)
    return obligations.proxied(app, response) if obligations else response
