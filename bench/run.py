"""The gateway's own cost, measured against bare baselines in one run.

Starts the stand-in, the gateway under gunicorn as in production, and two
baselines written for comparison (bench/bare_page.py: a bare Flask app that
renders a page of the same size from a session; bench/bare_proxy.py: a bare
Flask + requests streaming proxy), each under gunicorn with the same worker
settings. Then, with wrk at a fixed concurrency on loopback:

- embed page requests/s and p50/p99 (warm token cache, signed-in users) vs the bare page
- a proxied small JSON call: p50/p99 and requests/s, vs the bare proxy and the direct call
- a cold herd: N concurrent first requests for one subtenant, and the token requests the
  stand-in saw (memory cache: one per process; Redis: one in total, when redis-server exists)
- resident memory per gateway worker after the run
- time from ``import wsgi`` to the first answered request

Every wrk figure is the median of several interleaved rounds (see main()).
Prints one table and writes bench/results.json. Needs Debian's wrk.
Usage: python bench/run.py [--quick] [--connections 32] [--duration 10] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import LISTENING, RedisServer, free_port, start_gunicorn, wait_for  # noqa: E402

KEY, SECRET = "bench-key", secrets.token_urlsafe(24)
SECRET_KEY = secrets.token_urlsafe(40)
EMAIL = "user@us.acme.example"


class Servers:
    def __init__(self, tmp: Path, workers: int, threads: int):
        self.tmp, self.workers, self.threads = tmp, workers, threads
        self.procs: list[subprocess.Popen] = []

    def gunicorn(self, name: str, app: str, env: dict, workers: int | None = None) -> tuple[subprocess.Popen, str]:
        """gunicorn with the production configuration (gunicorn.conf.py) on a free port."""
        log = self.tmp / f"{name}.log"
        proc = self._start(app, env, log, workers or self.workers)
        return proc, wait_for(LISTENING, log, proc)

    def reuse_port(self, name: str, app: str, env: dict) -> tuple[subprocess.Popen, str]:
        """The same, plus ``--reuse-port``: each worker then listens on its own socket.

        For the wrk runs. Without it the workers race to accept from one shared
        socket, and on two busy cores the worker already serving usually wins:
        wrk's 32 keep-alive connections then mostly land on one worker (32/0 and
        31/1 splits were common) and the run measures that race, not the app.
        With a socket per worker (SO_REUSEPORT) the kernel spreads the
        connections by address hash. Not the production default: a worker that
        exits drops the connections still queued on its socket, and port 0
        cannot be shared.
        """
        port = free_port()
        proc = self._start(app, env, self.tmp / f"{name}.log", self.workers, f"127.0.0.1:{port}", ("--reuse-port",))
        deadline = time.monotonic() + 20
        while listening_sockets(port) < self.workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{name}: workers did not start listening")
            time.sleep(0.1)
        return proc, f"http://127.0.0.1:{port}"

    def _start(self, app: str, env: dict, log: Path, workers: int, bind: str = "127.0.0.1:0",
               extra: tuple[str, ...] = ()) -> subprocess.Popen:
        proc = start_gunicorn(app, {"GATEWAY_LOG_FORMAT": "json", **env}, log, workers=workers,
                              threads=self.threads, bind=bind, extra=extra)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


ATTEMPTS = 4


def _sockets_on(port: int, state: str) -> set[str]:
    """Inodes of the local sockets on ``port`` in a /proc/net/tcp state (01 established, 0A listen)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def listening_sockets(port: int) -> int:
    return len(_sockets_on(port, "0A"))


def connections_per_worker(workers: list[int], port: int) -> list[int]:
    """How many established client connections each worker holds on ``port`` (from /proc)."""
    inodes = _sockets_on(port, "01")
    counts = []
    for pid in workers:
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        counts.append(held)
    return counts


def wrk_on(master: subprocess.Popen, url: str, connections: int, duration: int, threads: int, **env) -> dict:
    """wrk against one server, repeated if a worker got too few connections to keep busy.

    The split of wrk's keep-alive connections between workers holds for the
    whole run (see Servers.reuse_port). A run in which a worker holds fewer
    connections than it has threads (while there are enough to go round) is
    repeated, up to ATTEMPTS times, by the same rule for every target; the split
    and the attempts are recorded in the results.
    """
    workers = workers_of(master)
    port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    enough = min(threads, connections // max(1, len(workers)))
    for attempt in range(1, ATTEMPTS + 1):
        split: list[int] = []
        before = sum(cpu_ticks(pid) for pid in [master.pid, *workers])
        result = wrk(url, connections, duration,
                     during=lambda: split.extend(connections_per_worker(workers, port)), **env)
        ticks = sum(cpu_ticks(pid) for pid in [master.pid, *workers]) - before
        # The server's own CPU time per answer: steadier than req/s on a shared machine.
        result["cpu_ms_per_request"] = round(ticks * 1000 / os.sysconf("SC_CLK_TCK") / max(1, result["requests"]), 4)
        result["connections_per_worker"], result["attempts"] = split, attempt
        if len(workers) < 2 or not split or min(split) >= enough:
            break
    return result


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over the rounds, and the rounds themselves."""
    out = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")}
    out["errors"] = sum(run["errors"] for run in runs)
    out["rounds"] = runs
    return out


def wrk(url: str, connections: int, duration: int, threads: int = 2, during=None, **env) -> dict:
    """One wrk run; ``during`` is called once the connections are up (a second in)."""
    proc = subprocess.Popen(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
                             "-s", str(ROOT / "bench" / "report.lua"), url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    if during:
        time.sleep(min(1.0, duration / 3))
        during()
    stdout, stderr = proc.communicate(timeout=duration + 60)
    match = re.search(r"WRK_JSON (\{.*\})", stdout)
    if not match:
        sys.exit(f"wrk failed on {url}:\n{stdout}\n{stderr}")
    return json.loads(match.group(1))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def workers_of(master: subprocess.Popen) -> list[int]:
    with open(f"/proc/{master.pid}/task/{master.pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def herd(url: str, n: int, email: str) -> list[int]:
    barrier = threading.Barrier(n)

    def first(_):
        with requests.Session() as http:
            barrier.wait()
            return http.get(url + "/", headers={"X-Forwarded-Email": email}, timeout=60).status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(first, range(n)))


def startup_seconds(env: dict) -> float:
    code = ("import time; t = time.perf_counter(); import wsgi; "
            "r = wsgi.app.test_client().get('/', headers={'X-Forwarded-Email': '%s'}); "
            "assert r.status_code == 200, r.status_code; print('STARTUP', time.perf_counter() - t)" % EMAIL)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_LOG_LEVEL": "WARNING", **env})
    match = re.search(r"STARTUP ([\d.]+)", out.stdout)
    if not match:
        sys.exit("start-up measurement failed:\n" + out.stdout + out.stderr)
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs; finishes in under 2 minutes")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=0,
                        help="wrk runs per target, interleaved; medians are reported (default 3 quick, 5 full)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--herd", type=int, default=200)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    duration = 3 if args.quick else args.duration
    rounds = args.rounds or (3 if args.quick else 5)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    tenants = tmp / "tenants.toml"
    tenants.write_text('[[subtenant]]\ntenant = "acme"\nid = "sales-us"\nname = "Sales US"\n'
                       'email_domains = ["us.acme.example"]\n')
    servers = Servers(tmp, args.workers, args.threads)
    results: dict = {"machine": {"cpus": os.cpu_count(), "arch": platform.machine(),
                                 "python": platform.python_version()},
                     "settings": {"connections": args.connections, "seconds_per_run": duration, "rounds": rounds,
                                  "workers": args.workers, "threads": args.threads}}
    try:
        # One worker: the stand-in keeps its counters and faults in memory.
        sim_master, sim_url = servers.gunicorn("sim", f"gateway.sim:create_sim_app({{{KEY!r}: {SECRET!r}}})", {}, workers=1)
        env = {"ZIPTEAMS_API_KEY": KEY, "ZIPTEAMS_API_SECRET": SECRET, "ZIPTEAMS_API_URL": sim_url + "/api/v1",
               "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/", "GATEWAY_SECRET_KEY": SECRET_KEY,
               "GATEWAY_TENANTS_FILE": str(tenants), "GATEWAY_COOKIE_SECURE": "false",
               "GATEWAY_STATE_DB": str(tmp / "state.db"), "WEB_CONCURRENCY": str(args.workers)}
        gateway, gw_url = servers.reuse_port("gateway", "wsgi:app", env)
        page_bytes = len(requests.get(gw_url + "/", headers={"X-Forwarded-Email": EMAIL}).content)
        page_master, page_url = servers.reuse_port("bare_page", "bench.bare_page:app",
                                                   {"GATEWAY_SECRET_KEY": SECRET_KEY, "BENCH_PAGE_BYTES": str(page_bytes)})
        proxy_master, proxy_url = servers.reuse_port("bare_proxy", "bench.bare_proxy:app", env)

        # Signed-in users: one session cookie each for the gateway and the bare page.
        gw_http = requests.Session()
        bare_http = requests.Session()
        bare_http.get(page_url + "/login")

        def gw_user() -> dict:
            # As a browser would: the gateway renews the cookie's last-seen time once a minute,
            # and a client that kept sending the old cookie would be given a new one every time.
            gw_http.get(gw_url + "/", headers={"X-Forwarded-Email": EMAIL})
            return {"BENCH_EMAIL": EMAIL, "BENCH_COOKIE": "; ".join(f"{k}={v}" for k, v in gw_http.cookies.items())}

        def bare_user() -> dict:
            return {"BENCH_COOKIE": "; ".join(f"{k}={v}" for k, v in bare_http.cookies.items())}

        token = requests.get(sim_url + "/api/v1/partner/dashboard/auth/token", headers={
            "x-api-key": KEY, "x-api-secret": SECRET, "x-tenant-id": "acme", "x-sub-tenant-id": "sales-us"}).json()["data"]["token"]

        c = args.connections
        page_targets = {
            "bare_flask": (page_master, page_url + "/", bare_user),
            "gateway": (gateway, gw_url + "/", gw_user)}
        json_targets = {
            "direct": (sim_master, f"{sim_url}/dashboard/api/summary?token={token}", dict),
            "bare_proxy": (proxy_master, proxy_url + "/dashboard/api/summary", dict),
            "gateway": (gateway, gw_url + "/dashboard/api/summary", gw_user)}
        # Rounds, each running every target back to back and in turn first, so drift on a
        # shared machine and an unlucky share of connections between workers hit all alike;
        # each figure is the median over the rounds.
        for section, targets in (("embed_page", page_targets), ("proxied_json", json_targets)):
            runs: dict[str, list] = {name: [] for name in targets}
            names = list(targets)
            for round_no in range(rounds):
                shift = round_no % len(names)
                for name in names[shift:] + names[:shift]:
                    master, url, user = targets[name]
                    runs[name].append(wrk_on(master, url, c, duration, args.threads, **user()))
            results[section] = {name: median_of(runs[name]) for name in names}
        results["rss_mb_per_worker"] = [round(rss_mb(pid), 1) for pid in workers_of(gateway)]
        servers.stop(gateway)

        # Cold herds: fresh gateways, empty caches.
        requests.post(sim_url + "/_sim/reset")
        herd_gw, herd_url = servers.gunicorn("herd_memory", "wsgi:app", {**env, "ZIPTEAMS_MAX_RPM": "1000"})
        requests.post(sim_url + "/_sim/faults", json={"delay": 0.5, "count": args.workers})
        statuses = herd(herd_url, args.herd, EMAIL)
        results["cold_herd_memory"] = {"requests": args.herd, "ok": statuses.count(200), "processes": args.workers,
                                       "token_requests": requests.get(sim_url + "/_sim/stats").json()["token_requests"]}
        servers.stop(herd_gw)
        if shutil.which("redis-server"):
            redis = RedisServer(tmp).start()
            servers.procs.append(redis.proc)
            requests.post(sim_url + "/_sim/reset")
            herd_gw, herd_url = servers.gunicorn("herd_redis", "wsgi:app", {
                **env, "GATEWAY_CACHE_URL": redis.url, "ZIPTEAMS_MAX_RPM": "1000"})
            requests.post(sim_url + "/_sim/faults", json={"delay": 0.5, "count": 1})
            statuses = herd(herd_url, args.herd, EMAIL)
            results["cold_herd_redis"] = {"requests": args.herd, "ok": statuses.count(200), "processes": args.workers,
                                          "token_requests": requests.get(sim_url + "/_sim/stats").json()["token_requests"]}
            servers.stop(herd_gw)
        results["startup_seconds"] = round(min(startup_seconds(env) for _ in range(3)), 3)
    finally:
        servers.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict) -> None:
    page, proxied = r["embed_page"], r["proxied_json"]
    rows = [
        ("embed page, bare Flask", page["bare_flask"]), ("embed page, gateway", page["gateway"]),
        ("JSON call, direct", proxied["direct"]), ("JSON call, bare proxy", proxied["bare_proxy"]),
        ("JSON call, gateway", proxied["gateway"]),
    ]
    rounds = r["settings"]["rounds"]
    print(f"medians of {rounds} interleaved rounds of {r['settings']['seconds_per_run']} s, "
          f"{r['settings']['connections']} connections")
    print(f"{'':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU ms/req':>12}")
    for name, x in rows:
        print(f"{name:<24}{x['rps']:>10.0f}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}{x['errors']:>8}"
              f"{x['cpu_ms_per_request']:>12.3f}")
    ratio_rps = page["gateway"]["rps"] / page["bare_flask"]["rps"]
    ratio_p99 = page["gateway"]["p99_ms"] / page["bare_flask"]["p99_ms"]
    per_round = [g["rps"] / b["rps"] for g, b in zip(page["gateway"]["rounds"], page["bare_flask"]["rounds"])]
    repeated = sum(run["attempts"] - 1 for x in (page, proxied) for target in x.values() for run in target["rounds"])
    added_gw = proxied["gateway"]["p50_ms"] - proxied["direct"]["p50_ms"]
    added_bare = proxied["bare_proxy"]["p50_ms"] - proxied["direct"]["p50_ms"]
    r["verdicts"] = {
        "embed_rps_ratio": round(ratio_rps, 3), "embed_p99_ratio": round(ratio_p99, 3),
        "embed_rps_ratio_per_round": [round(x, 3) for x in per_round], "repeated_runs": repeated,
        "proxy_added_p50_ms": {"gateway": round(added_gw, 3), "bare_proxy": round(added_bare, 3)},
        "proxy_rps_ratio": round(proxied["gateway"]["rps"] / proxied["bare_proxy"]["rps"], 3),
    }
    print(f"\nembed page: gateway/bare req/s {ratio_rps:.2f} (target >= 0.8; rounds {min(per_round):.2f}-"
          f"{max(per_round):.2f}), p99 ratio {ratio_p99:.2f} (target <= 1.5)")
    print(f"proxied JSON: added p50 gateway {added_gw:.2f} ms vs bare proxy {added_bare:.2f} ms; "
          f"req/s ratio {r['verdicts']['proxy_rps_ratio']:.2f} (target >= 1)")
    for name in ("cold_herd_memory", "cold_herd_redis"):
        if name in r:
            h = r[name]
            print(f"{name.replace('_', ' ')}: {h['ok']}/{h['requests']} answered 200, "
                  f"{h['token_requests']} token request(s) for {h['processes']} processes")
    if repeated:
        print(f"{repeated} run(s) repeated: a worker had got fewer of wrk's connections than it has threads "
              "(gunicorn's accept race; see wrk_on)")
    print(f"resident memory per worker after the run: {r['rss_mb_per_worker']} MB (target < 60)")
    print(f"import wsgi to first answered request: {r['startup_seconds']:.3f} s (target < 1)")


if __name__ == "__main__":
    sys.exit(main())
