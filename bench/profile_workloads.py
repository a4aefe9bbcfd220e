"""Where the gateway's time goes on bench/run.py's real-traffic workloads, without a server.

Calls ``wsgi:app`` and the bare baselines directly (WSGI, one thread, a stand-in
dashboard under gunicorn as the upstream), with the patterns of bench/run.py:

  first_visit      a new user (fresh email, no cookie) per request, over 50 subtenants
  returning_users  1,000 signed-in users over 50 subtenants, each with their own cookie
  proxied_json     /dashboard/api/summary for those 1,000 users (vs bench/bare_proxy_urllib3.py)

For each it prints the median microseconds per request of the gateway and of its
baseline over interleaved rounds, then (``--profile``) a cProfile of the gateway's
calls: the functions with the most own time and the most cumulative time, in µs per
request. The gateway's log lines go to a file, as in production they go to a pipe.
Usage: python bench/profile_workloads.py [--requests 3000] [--rounds 3] [--profile] [--only first_visit]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import workloads  # noqa: E402


def environ(path: str, headers: dict) -> dict:
    from werkzeug.test import EnvironBuilder

    base, _, query = path.partition("?")
    return EnvironBuilder(path=base, query_string=query, headers=headers,
                          environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()


def call(app, env: dict) -> tuple[str, list]:
    out: list = []
    body = app(dict(env), lambda s, headers, exc_info=None: out.extend((s, headers)))
    try:
        b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return out[0], out[1]


def cookie_of(headers: list, old: str = "") -> str:
    jar = dict(p.split("=", 1) for p in old.split("; ") if p)
    for name, value in headers:
        if name.lower() == "set-cookie":
            k, _, v = value.split(";", 1)[0].partition("=")
            jar[k] = v
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def signed_in(app, emails: list[str]) -> dict[str, str]:
    """Each user's cookies after one visit of the page, signed in by the identity header (in process)."""
    cookies = {}
    for email in emails:
        status, headers = call(app, environ("/", {"X-Forwarded-Email": email}))
        assert status.startswith("200"), status
        cookies[email] = cookie_of(headers)
    return cookies


def per_request_us(app, envs, n: int, clock=time.perf_counter) -> float:
    """Microseconds per request of the next ``n`` of ``envs``, by ``clock`` (wall time, or CPU time)."""
    batch = list(itertools.islice(envs, n))
    started = clock()
    for env in batch:
        status, _ = call(app, env)
    elapsed = clock() - started
    assert status.startswith("200"), status
    return elapsed / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", action="append")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cold", action="store_true",
                        help="before each measured batch of returning users, 5,000 unmeasured first visits (as in "
                             "bench/run.py's rounds, where (a) runs before (b)); batches of 1,000: each user once")
    args = parser.parse_args()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    secret_key = secrets.token_urlsafe(40)
    sim, settings = workloads.in_process_settings(tmp, "bench-key", secrets.token_urlsafe(24), secret_key)
    try:
        os.environ.update({**settings, "BENCH_PAGE_BYTES": "2600", "BENCH_SUBTENANT": "team00"})
        # The gateway's log lines (and the baselines') go to a file, not this terminal.
        log = os.open(tmp / "gateway.log", os.O_WRONLY | os.O_CREAT)
        os.dup2(log, 1)
        os.dup2(log, 2)
        import wsgi
        from bench import bare_page, bare_proxy_urllib3

        gateway = wsgi.app.wsgi_app
        bare_page.app.secret_key = secret_key
        emails = workloads.user_emails()

        gw_cookies, bare_cookies = signed_in(gateway, emails), signed_in(bare_page.app.wsgi_app, emails)
        counter = itertools.count()

        def first_visits(nonce=secrets.token_hex(4)):
            for n in counter:
                yield environ("/", {"X-Forwarded-Email": f"n{nonce}-{n}@team{n % 50:02d}.acme.example"})

        def returning(cookies: dict, path: str):
            envs = [environ(path, {"X-Forwarded-Email": e, "Cookie": c}) for e, c in cookies.items()]
            return itertools.cycle(envs)

        patterns = {
            "first_visit": ((gateway, first_visits), (bare_page.app.wsgi_app, first_visits)),
            "returning_users": ((gateway, lambda: returning(gw_cookies, "/")),
                                (bare_page.app.wsgi_app, lambda: returning(bare_cookies, "/"))),
            "proxied_json": ((gateway, lambda: returning(gw_cookies, "/dashboard/api/summary")),
                             (bare_proxy_urllib3.app.wsgi_app, lambda: returning(gw_cookies, "/dashboard/api/summary"))),
        }
        for name, ((ours, our_envs), (theirs, their_envs)) in patterns.items():
            if args.only and name not in args.only:
                continue
            mine, base = [], []
            our_iter, their_iter = our_envs(), their_envs()
            cold = args.cold and name != "first_visit"
            n = workloads.USERS if cold else args.requests
            flush = first_visits()

            def measure(app, envs):
                if cold:
                    per_request_us(gateway, flush, 5000)
                return per_request_us(app, envs, n)

            for _ in range(args.rounds):
                base.append(measure(theirs, their_iter))
                mine.append(measure(ours, our_iter))
            g, b = statistics.median(mine), statistics.median(base)
            print(f"\n== {name}: gateway {g:.0f} us/request, baseline {b:.0f} us "
                  f"(+{g - b:.0f} us, {g / b:.2f}x; medians of {args.rounds} rounds of {n}{', cold' if cold else ''})", file=report)
            if args.profile:
                profiler = cProfile.Profile()
                if cold:
                    per_request_us(gateway, flush, 5000)
                profiler.runcall(per_request_us, ours, our_iter, n)
                out = tmp / f"{name}.pstats"
                profiler.dump_stats(out)
                for sort in ("tottime", "cumulative"):
                    text = io.StringIO()
                    stats = pstats.Stats(str(out), stream=text)
                    stats.sort_stats(sort).print_stats(args.top)
                    print(f"-- by {sort} (cProfile totals are for {n} requests; divide for us/req)",
                          file=report)
                    lines = text.getvalue().splitlines()
                    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
                    for line in lines[start:start + args.top + 1]:
                        print(line, file=report)
                print(f"-- profile kept in {out} (python -m pstats {out})", file=report)
    finally:
        workloads.stop(sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
