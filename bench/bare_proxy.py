"""Baseline for the benchmarks: the least a Flask + requests proxy can do.

No login, no rules, no header hygiene, no token scrubbing: one token fetched at
start-up and attached to every request. It exists only to be measured next to
the gateway (``gunicorn bench.bare_proxy:app``).
"""
import os

import requests
from flask import Flask, Response, request

API = os.environ["ZIPTEAMS_API_URL"].rstrip("/")
DASHBOARD = os.environ["ZIPTEAMS_DASHBOARD_URL"].rstrip("/") + "/"
session = requests.Session()
_token = session.get(API + "/partner/dashboard/auth/token", timeout=10, headers={
    "x-api-key": os.environ["ZIPTEAMS_API_KEY"], "x-api-secret": os.environ["ZIPTEAMS_API_SECRET"],
    "x-tenant-id": "acme", "x-sub-tenant-id": "sales-emea"}).json()["data"]["token"]

app = Flask(__name__)


@app.route("/dashboard/<path:path>")
def proxy(path):
    query = request.query_string.decode()
    url = f"{DASHBOARD}{path}?{query + '&' if query else ''}token={_token}"
    upstream = session.get(url, stream=True, timeout=10)
    headers = [(k, v) for k, v in upstream.headers.items()
               if k.lower() not in ("connection", "transfer-encoding", "content-encoding", "content-length")]
    return Response(upstream.iter_content(65536), status=upstream.status_code, headers=headers)
