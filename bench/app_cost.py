"""Per-request cost of the gateway's own code next to the bare Flask page, without a server.

Calls each app's WSGI callable directly, in one thread, with a signed-in user's
request for the embed page (warm token cache, JSON logs written to a file), in
interleaved rounds, and prints the medians in microseconds and their ratio.
``--profile`` also writes a cProfile of the gateway's page to
bench/app_cost.pstats and prints where the time went.

This is the tool for finding what to cut: it has none of the noise of
bench/run.py (gunicorn, wrk, the accept race, two busy cores), which measures
the same pages as a user would see them.
Usage: python bench/app_cost.py [--requests 5000] [--rounds 5] [--profile]
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from werkzeug.test import EnvironBuilder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EMAIL = "user@us.acme.example"


def call(app, environ: dict) -> str:
    status = []
    body = app(dict(environ), lambda s, headers, exc_info=None: status.append(s))
    try:
        b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return status[0]


def per_request_us(app, environ: dict, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call(app, environ)
    return (time.perf_counter() - started) / n * 1e6


def environ(headers: dict) -> dict:
    return EnvironBuilder(path="/", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per app per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    from gateway.sim import create_sim_app
    from gateway.sim.server import ServerThread

    key, secret = "bench-key", secrets.token_urlsafe(24)
    sim = ServerThread(create_sim_app({key: secret}), "127.0.0.1", 0).start()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-app-cost-"))
    tenants = tmp / "tenants.toml"
    tenants.write_text('[[subtenant]]\ntenant = "acme"\nid = "sales-us"\nname = "Sales US"\n'
                       'email_domains = ["us.acme.example"]\n')
    secret_key = secrets.token_urlsafe(40)
    os.environ.update({
        "ZIPTEAMS_API_KEY": key, "ZIPTEAMS_API_SECRET": secret, "ZIPTEAMS_API_URL": sim.url + "/api/v1",
        "ZIPTEAMS_DASHBOARD_URL": sim.url + "/dashboard/", "GATEWAY_SECRET_KEY": secret_key,
        "GATEWAY_TENANTS_FILE": str(tenants), "GATEWAY_COOKIE_SECURE": "false",
        "GATEWAY_STATE_DIR": str(tmp / "state"), "GATEWAY_LOG_FORMAT": "json"})
    from gateway import create_app
    from gateway.ops import logwriter

    gateway = create_app()
    log_file = open(tmp / "gateway.log", "w")
    logwriter.configure("INFO", "json", stream=log_file)  # as in production, lines are written; just not here

    first = gateway.test_client().get("/", headers={"X-Forwarded-Email": EMAIL})
    assert first.status_code == 200, first.status_code
    cookie = first.headers["Set-Cookie"].split(";", 1)[0]
    gw_environ = environ({"X-Forwarded-Email": EMAIL, "Cookie": cookie})

    os.environ["BENCH_PAGE_BYTES"] = str(len(first.data))
    from bench import bare_page

    bare_page.app.secret_key = secret_key
    bare_cookie = bare_page.app.test_client().get("/login").headers["Set-Cookie"].split(";", 1)[0]
    bare_environ = environ({"Cookie": bare_cookie})
    for app, env in ((gateway.wsgi_app, gw_environ), (bare_page.app.wsgi_app, bare_environ)):
        assert call(app, env).startswith("200")

    if args.profile:
        import cProfile
        import pstats

        out = ROOT / "bench" / "app_cost.pstats"
        profiler = cProfile.Profile()
        profiler.runcall(per_request_us, gateway.wsgi_app, gw_environ, args.requests)
        profiler.dump_stats(out)
        pstats.Stats(str(out)).sort_stats("cumulative").print_stats(40)
        print(f"profile written to {out} (python -m pstats {out})")

    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(per_request_us(bare_page.app.wsgi_app, bare_environ, args.requests))
        ours.append(per_request_us(gateway.wsgi_app, gw_environ, args.requests))
    b, g = statistics.median(bare), statistics.median(ours)
    print(f"embed page, per request (median of {args.rounds} rounds of {args.requests}):")
    print(f"  bare Flask page  {b:7.1f} us")
    print(f"  gateway          {g:7.1f} us   (+{g - b:.1f} us, {g / b:.2f}x)")
    logwriter.stop_writer()
    log_file.close()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
