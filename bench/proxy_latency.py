"""Benchmark: what does the gateway add to a small JSON call to the dashboard?

Starts the stand-in, a bare Flask + requests proxy (bench/bare_proxy.py) and the
gateway, each proxy under gunicorn with the same worker settings, then times the
same small JSON call three ways, interleaved round by round so that machine noise
hits all three alike:

  direct   client -> stand-in
  bare     client -> bare proxy -> stand-in
  gateway  client -> gateway (header login, rules, token cache, scrubbing) -> stand-in

Prints medians and p90s, and each proxy's added latency over the direct call.
Usage: python bench/proxy_latency.py [--requests 400] [--rounds 8]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import LISTENING, start_gunicorn, wait_for  # noqa: E402
KEY, SECRET = "bench-key", secrets.token_urlsafe(24)
PATH = "/dashboard/api/summary"



def gunicorn(app: str, env: dict, log: Path, threads: int) -> tuple[subprocess.Popen, str]:
    proc = start_gunicorn(app, env, log, workers=1, threads=threads)
    return proc, wait_for(LISTENING, log, proc)


def timed(session: requests.Session, url: str, headers: dict, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = session.get(url, headers=headers)
        response.content
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            sys.exit(f"{url} answered {response.status_code}")
    return samples


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="calls per target per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results-proxy-latency.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = []
    try:
        # The stand-in under gunicorn too: a production dashboard keeps connections alive.
        sim, sim_url = gunicorn(f"gateway.sim:create_sim_app({{{KEY!r}: {SECRET!r}}})", {},
                                tmp / "sim.log", args.threads)
        procs.append(sim)
        env = {"ZIPTEAMS_API_KEY": KEY, "ZIPTEAMS_API_SECRET": SECRET,
               "ZIPTEAMS_API_URL": sim_url + "/api/v1", "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/",
               "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
               "GATEWAY_TENANTS_FILE": str(ROOT / "tenants.example.toml"),
               "GATEWAY_EMBED_MODE": "proxy", "GATEWAY_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),  # as deployed
               "GATEWAY_COOKIE_SECURE": "false"}  # plain HTTP on loopback: the client must keep the cookie
        bare, bare_url = gunicorn("bench.bare_proxy:app", env, tmp / "bare.log", args.threads)
        procs.append(bare)
        gate, gate_url = gunicorn("wsgi:app", env, tmp / "gateway.log", args.threads)
        procs.append(gate)

        token = requests.get(sim_url + "/api/v1/partner/dashboard/auth/token", headers={
            "x-api-key": KEY, "x-api-secret": SECRET, "x-tenant-id": "acme",
            "x-sub-tenant-id": "sales-emea"}).json()["data"]["token"]
        targets = {
            "direct": (sim_url + PATH + "?token=" + token, {}),
            "bare": (bare_url + PATH, {}),
            "gateway": (gate_url + PATH, {"X-Forwarded-Email": "alice@acme.example"}),
        }
        sessions = {name: requests.Session() for name in targets}
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for name, (url, headers) in targets.items():
            timed(sessions[name], url, headers, 50)  # warm connections and caches
        for _ in range(args.rounds):
            for name, (url, headers) in targets.items():
                samples[name] += timed(sessions[name], url, headers, args.requests)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)

    direct = statistics.median(samples["direct"])
    results = {name: {"median_ms": round(statistics.median(s), 3), "p90_ms": round(pct(s, 0.9), 3),
                      "added_ms": round(statistics.median(s) - direct, 3), "n": len(s)}
               for name, s in samples.items()}
    print(f"{'path':<10}{'median ms':>11}{'p90 ms':>9}{'added ms':>10}{'calls':>8}")
    for name, r in results.items():
        print(f"{name:<10}{r['median_ms']:>11.3f}{r['p90_ms']:>9.3f}{r['added_ms']:>10.3f}{r['n']:>8}")
    verdict = results["gateway"]["added_ms"] <= results["bare"]["added_ms"]
    print(f"gateway added latency {'<=' if verdict else '>'} bare proxy's: "
          f"{results['gateway']['added_ms']:.3f} ms vs {results['bare']['added_ms']:.3f} ms")
    args.json.write_text(json.dumps({"machine": os.uname().machine, "cpus": os.cpu_count(),
                                     "results": results, "gateway_within_bare": verdict}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
