"""What Flask itself costs per request, next to the gateway's and the floor's pages and proxied calls.

In one process, without a server (the stand-in dashboard under gunicorn is the upstream): CPU time
per request of a raw WSGI callable, a bare Flask app with one route, the gateway's ``/healthz``
(Flask plus every hook a request passes: request id, access line, metrics, security headers,
session, identity), the floor's page and proxied call (bench/obligations.py) and the gateway's, for
200 signed-in users whose memos are warm. Interleaved rounds; medians of CPU time (the process's,
so the log writer thread counts too).

What it answers: how much a path that bypassed Flask's request handling could save at most (the
bare Flask row, plus the hooks' dispatch), next to what a proxied call costs in all
(docs/performance.md, "Issue #24").
Usage: python bench/fixed_cost.py [--requests 2000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import itertools
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import workloads  # noqa: E402
from bench.profile_workloads import environ, per_request_us, signed_in  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-fixed-"))
    sim, settings = workloads.in_process_settings(tmp, "bench-key", secrets.token_urlsafe(24), secrets.token_urlsafe(40))
    try:
        os.environ.update({**settings, "BENCH_OBLIGATIONS": "1", "BENCH_PAGE_BYTES": "2600", "BENCH_SUBTENANT": "team00"})
        log = os.open(tmp / "apps.log", os.O_WRONLY | os.O_CREAT, 0o600)  # the apps' lines, not this terminal
        os.dup2(log, 1)
        os.dup2(log, 2)
        import wsgi
        from flask import Flask

        from bench import bare_page, bare_proxy_urllib3

        gateway = wsgi.app.wsgi_app
        bare_page.app.secret_key = settings["GATEWAY_SECRET_KEY"]
        emails = workloads.user_emails()[:200]

        ours, floors = signed_in(gateway, emails), signed_in(bare_page.app.wsgi_app, emails)

        def users(cookies: dict, path: str):
            return itertools.cycle([environ(path, {"X-Forwarded-Email": e, "Cookie": c}) for e, c in cookies.items()])

        def raw(env, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        plain = Flask("plain")
        plain.add_url_rule("/healthz", "healthz", lambda: "ok")
        health = itertools.repeat(environ("/healthz", {}))
        cases = {
            "raw WSGI callable": (raw, health),
            "bare Flask, one route": (plain.wsgi_app, health),
            "gateway /healthz": (gateway, health),
            "floor page": (bare_page.app.wsgi_app, users(floors, "/")),
            "gateway page": (gateway, users(ours, "/")),
            "floor proxied call": (bare_proxy_urllib3.app.wsgi_app, users(ours, "/dashboard/api/summary")),
            "gateway proxied call": (gateway, users(ours, "/dashboard/api/summary")),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for app, envs in cases.values():
            per_request_us(app, envs, 200)  # warm up: tokens, memos, connections
        for _ in range(args.rounds):
            for name, (app, envs) in cases.items():
                results[name].append(per_request_us(app, envs, args.requests, clock=time.process_time))
        report.write("\n".join([f"CPU µs per request, medians of {args.rounds} rounds of {args.requests}:"] + [
            f"  {name:24s} {statistics.median(values):7.1f}" for name, values in results.items()]) + "\n")
    finally:
        workloads.stop(sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
