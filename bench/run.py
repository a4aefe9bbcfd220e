"""The gateway's own cost on real traffic, measured against bare baselines in one run.

Starts the stand-in, the gateway under gunicorn as in production, and baselines
written for comparison, each under gunicorn with the same worker settings:
bench/bare_page.py (a bare Flask app that starts a session from the identity
header on a first visit and renders a page of the same size), bench/bare_proxy.py
(Flask + requests) and bench/bare_proxy_urllib3.py (Flask + urllib3 on the
gateway's own pool settings), and nginx proxying the same dashboard with the
token in its config (bench/workloads.py; skipped, and said so, without nginx).
Beside the bare page and the urllib3 proxy runs their "floor": the same app plus
only what every gateway answer carries, written by the gateway's own code
(bench/obligations.py: request id, one JSON access line, Prometheus count and latency,
security headers; the gateway's audit events ride on its access line), checked before the
rounds to set the same security headers and write the same lines as the gateway (check_floor).
The rules have 50 subtenants (team00..team49.acme.example). Then, with wrk at a
fixed concurrency on loopback, interleaved in rounds:

(a) first_visit: the embed page, a new user (fresh email, no cookie) in every request
(b) returning_users: the embed page, 1,000 signed-in users over 50 subtenants, each with
    their own cookie, requests spread across them (bench/users.lua)
(c)-(e) proxied_json: /dashboard/api/summary for those 1,000 users through the gateway,
    vs the two bare proxies, nginx, and the stand-in called directly
    one_user_page: the old single-user page (every memo hits), for contrast
- resident memory per gateway worker after the rounds
- cold herds: N concurrent first requests for one subtenant, and the token requests the
  stand-in saw (memory cache: one per process; Redis: one in total, when redis-server exists)
- time from ``import wsgi`` to the first answered request, median of --startups runs

Every wrk figure is the median of the rounds; targets and verdicts: bench/verdicts.py.
Sections run in the order above in every round (targets rotate within each): so (b)
always follows (a), whose thousands of new users have filled (and, where a memo forgets
everything when full, emptied) the gateway's per-user memos, and in a --quick run of
3 s each returning user is asked for about once per run: (b) and (c) measure returning
users whose entries are mostly not cached, as on a server that also sees new users.
Longer runs (--duration) ask each user more often and so hit the memos more.
Prints the tables and writes bench/results.json. Needs Debian's wrk.
Usage: python bench/run.py [--quick] [--connections 32] [--duration 10] [--rounds 5] [--floor-check]
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
from bench import verdicts, workloads  # noqa: E402
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


def wrk_on(master: subprocess.Popen, url: str, connections: int, duration: int, threads: int,
           script: str = "report.lua", **env) -> dict:
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
        result = wrk(url, connections, duration, script=script,
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
    out = {key: statistics.median(run[key] for run in runs)
           for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")}
    out["errors"] = sum(run["errors"] for run in runs)
    out["rounds"] = runs
    return out


def wrk(url: str, connections: int, duration: int, threads: int = 2, during=None, script: str = "report.lua",
        **env) -> dict:
    """One wrk run with a script of bench/; ``during`` is called once the connections are up (a second in)."""
    proc = subprocess.Popen(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
                             "-s", str(ROOT / "bench" / script), url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BENCH_DIR": str(ROOT / "bench"), **env})
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


# What the gateway itself puts on every answer; a floor must put the same (bench/obligations.py).
OWN_HEADERS = ("X-Content-Type-Options", "Referrer-Policy", "Cache-Control", "Content-Security-Policy",
               "X-Frame-Options", "Vary")
# Lines of the gateway's own work, not written per answer (a team's first token).
OWN_WORK_LINES = {"zipteams", "token_fetched", "token_refreshed"}
MESSAGE_KEY = re.compile(r"(\w+)=")  # a line message's key=value names


def lines_of(log: Path, request_id: str) -> list[str]:
    """The lines written for one request, each as its kind (an audit event on a line of its own,
    or the message's first word), logger, keys and the message's ``key=`` names; a request
    line's ``events`` aside (the gateway's own work, which the floor does not do)."""
    kinds = []
    for line in log.read_text(errors="replace").splitlines():
        if request_id in line and line.endswith("}"):  # whole lines only: the writer batches
            record = json.loads(line)
            kind = record.get("event") or record["message"].split(" ", 1)[0]
            if kind not in OWN_WORK_LINES:
                keys = ",".join(sorted(set(record) - {"events"}))
                names = " ".join(MESSAGE_KEY.findall(record["message"]))
                kinds.append(f"{kind} {record['logger']} {keys} {names}")
    return sorted(kinds)


def check_floor(pairs: list[tuple[str, Path, str, Path, str]]) -> None:
    """A floor must write what the gateway writes on the same answers, no less and no more.

    ``pairs``: (floor url, its log, gateway url, its log, what the answers are) per request kind:
    a first visit, the same user returning, a proxied call. Compares the headers the gateway
    sets itself and the lines written for each answer (by its request id).
    """
    email = f"floor-check@{workloads.DOMAIN.format(7)}"
    floor_http, gateway_http = requests.Session(), requests.Session()
    answers = []
    for floor_url, floor_log, gateway_url, gateway_log, kind in pairs:
        both = []
        for http, url, log in ((floor_http, floor_url, floor_log), (gateway_http, gateway_url, gateway_log)):
            answer = http.get(url, headers={"X-Forwarded-Email": email}, timeout=30)
            both.append((answer, log))
        answers.append((kind, both))
    deadline = time.monotonic() + 5
    while True:
        problems = []
        for kind, ((floor, floor_log), (gateway, gateway_log)) in answers:
            if floor.status_code != 200 or gateway.status_code != 200:
                problems.append(f"{kind}: status {floor.status_code} (gateway {gateway.status_code})")
                continue
            for name in OWN_HEADERS:
                if floor.headers.get(name) != gateway.headers.get(name):
                    problems.append(f"{kind}: {name} {floor.headers.get(name)!r} (gateway {gateway.headers.get(name)!r})")
            ids = [answer.headers.get("X-Request-Id", "") for answer in (floor, gateway)]
            if not all(ids):
                problems.append(f"{kind}: no X-Request-Id")
                continue
            written = lines_of(floor_log, ids[0]), lines_of(gateway_log, ids[1])
            if written[0] != written[1] or not written[0]:
                problems.append(f"{kind}: lines {written[0]} (gateway {written[1]})")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the log writers batch their lines
    if problems:
        sys.exit("a floor does not write what the gateway writes:\n  " + "\n  ".join(problems))


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
    parser.add_argument("--quick", action="store_true", help="short runs; finishes in about three minutes")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=0,
                        help="wrk runs per target, interleaved; medians are reported (default 3 quick, 5 full)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--herd", type=int, default=200)
    parser.add_argument("--startups", type=int, default=5, help="start-up runs; the median is reported")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--floor-check", action="store_true",
                        help="only start the servers and check that the floors write what the gateway writes")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    duration = 3 if args.quick else args.duration
    rounds = args.rounds or (3 if args.quick else 5)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    servers = Servers(tmp, args.workers, args.threads)
    results: dict = {"machine": {"cpus": os.cpu_count(), "arch": platform.machine(),
                                 "python": platform.python_version(), "load_before": os.getloadavg()},
                     "settings": {"connections": args.connections, "seconds_per_run": duration, "rounds": rounds,
                                  "workers": args.workers, "threads": args.threads, "users": workloads.USERS,
                                  "subtenants": workloads.TEAMS}}
    try:
        # One worker: the stand-in keeps its counters and faults in memory. Threads, not gevent: the
        # upstream must be the same whatever server model the gateway runs, and gunicorn's gevent
        # worker without the gateway's turn (gateway/serving/admission.py) gives the bare stand-in a
        # tail of its own (p99 0.8 s for direct calls) that every proxied call would inherit.
        sim_master, sim_url = servers.gunicorn("sim", f"gateway.sim:create_sim_app({{{KEY!r}: {SECRET!r}}})",
                                               {"GATEWAY_WORKER": "gthread"}, workers=1)
        env = {**workloads.gateway_settings(tmp, sim_url, KEY, SECRET, SECRET_KEY),
               "WEB_CONCURRENCY": str(args.workers)}
        gateway, gw_url = servers.reuse_port("gateway", "wsgi:app", env)
        page_bytes = len(requests.get(gw_url + "/", headers={"X-Forwarded-Email": EMAIL}).content)
        results["rss_mb_per_worker_at_start"] = [round(rss_mb(pid), 1) for pid in workers_of(gateway)]
        page_master, page_url = servers.reuse_port("bare_page", "bench.bare_page:app",
                                                   {"GATEWAY_SECRET_KEY": SECRET_KEY, "BENCH_PAGE_BYTES": str(page_bytes)})
        proxy_master, proxy_url = servers.reuse_port("bare_proxy", "bench.bare_proxy:app", env)
        proxy3_master, proxy3_url = servers.reuse_port("bare_proxy_urllib3", "bench.bare_proxy_urllib3:app", env)
        # The floors: each bare baseline plus only the gateway's request id, access line, metrics
        # and security headers (bench/obligations.py), with the gateway's settings.
        floor = {**env, "BENCH_OBLIGATIONS": "1"}
        page_floor_master, page_floor_url = servers.reuse_port("bare_page_floor", "bench.bare_page:app",
                                                               {**floor, "BENCH_PAGE_BYTES": str(page_bytes)})
        proxy_floor_master, proxy_floor_url = servers.reuse_port("bare_proxy_floor", "bench.bare_proxy_urllib3:app",
                                                                 floor)
        # The same floors behind the gateway's Admission (its per-request turn): no target, a guide to
        # what of the gap is the server model's fairness (bench/obligations.py).
        admitted = {**floor, "BENCH_ADMISSION": "1"}
        page_adm_master, page_adm_url = servers.reuse_port("bare_page_floor_admission", "bench.bare_page:app",
                                                           {**admitted, "BENCH_PAGE_BYTES": str(page_bytes)})
        proxy_adm_master, proxy_adm_url = servers.reuse_port("bare_proxy_floor_admission",
                                                             "bench.bare_proxy_urllib3:app", admitted)
        gw_log = tmp / "gateway.log"
        check_floor([
            (page_floor_url + "/", tmp / "bare_page_floor.log", gw_url + "/", gw_log, "first visit"),
            (page_floor_url + "/", tmp / "bare_page_floor.log", gw_url + "/", gw_log, "returning user"),
            (proxy_floor_url + "/dashboard/api/summary", tmp / "bare_proxy_floor.log",
             gw_url + "/dashboard/api/summary", gw_log, "proxied call"),
            (page_adm_url + "/", tmp / "bare_page_floor_admission.log", gw_url + "/", gw_log, "first visit"),
            (proxy_adm_url + "/dashboard/api/summary", tmp / "bare_proxy_floor_admission.log",
             gw_url + "/dashboard/api/summary", gw_log, "proxied call")])
        if args.floor_check:
            print("floor check: the floors write the same lines and headers as the gateway")
            return 0

        # Signed-in single user: one session cookie each for the gateway and the bare page.
        gw_http = requests.Session()
        bare_http = requests.Session()
        bare_http.get(page_url + "/", headers={"X-Forwarded-Email": EMAIL})

        def gw_user() -> dict:
            # As a browser would: the gateway renews the cookie's last-seen time once a minute,
            # and a client that kept sending the old cookie would be given a new one every time.
            gw_http.get(gw_url + "/", headers={"X-Forwarded-Email": EMAIL})
            return {"BENCH_EMAIL": EMAIL, "BENCH_COOKIE": "; ".join(f"{k}={v}" for k, v in gw_http.cookies.items())}

        def bare_user() -> dict:
            return {"BENCH_EMAIL": EMAIL,
                    "BENCH_COOKIE": "; ".join(f"{k}={v}" for k, v in bare_http.cookies.items())}

        token = requests.get(sim_url + "/api/v1/partner/dashboard/auth/token", headers={
            "x-api-key": KEY, "x-api-secret": SECRET, "x-tenant-id": "acme", "x-sub-tenant-id": "team00"}).json()["data"]["token"]

        # Returning users: each signed in once at the gateway and once at the bare page, cookies kept.
        emails = workloads.user_emails()
        started = time.monotonic()
        gw_cookies = workloads.sign_in(gw_url, emails)
        bare_cookies = workloads.sign_in(page_url, emails)
        results["settings"]["sign_in_seconds"] = round(time.monotonic() - started, 1)
        gw_users = workloads.users_file(tmp / "gateway-users.tsv", gw_cookies)
        bare_users = workloads.users_file(tmp / "bare-users.tsv", bare_cookies)
        refreshed = [time.monotonic()]

        def gw_many(path: str):
            def env_for() -> dict:
                # A browser keeps the renewed cookie: sign the users in again with theirs before the
                # gateway's last-seen time (renewed once a minute) would make it re-sign every cookie.
                if time.monotonic() - refreshed[0] > 30:
                    gw_cookies.update(workloads.sign_in(gw_url, emails, gw_cookies))
                    workloads.users_file(gw_users, gw_cookies)
                    refreshed[0] = time.monotonic()
                return {"BENCH_USERS": str(gw_users), "BENCH_PATH": path}
            return env_for

        def first_visits(path: str = "/"):
            def env_for() -> dict:
                return {"BENCH_NONCE": secrets.token_hex(4), "BENCH_PATH": path, "BENCH_DOMAINS": str(workloads.TEAMS)}
            return env_for

        def same(**fixed):
            return lambda: dict(fixed)

        # The same requests (each of the 1000 users' email and gateway cookie) go to every proxy,
        # so the bytes parsed per request are alike; only the gateway reads them.
        many_json = same(BENCH_USERS=str(gw_users), BENCH_PATH="/dashboard/api/summary")
        c = args.connections
        sections: dict[str, dict] = {
            "first_visit": {
                "bare_flask": (page_master, page_url + "/", "first_visit.lua", first_visits()),
                "floor": (page_floor_master, page_floor_url + "/", "first_visit.lua", first_visits()),
                "floor_admission": (page_adm_master, page_adm_url + "/", "first_visit.lua", first_visits()),
                "gateway": (gateway, gw_url + "/", "first_visit.lua", first_visits())},
            "returning_users": {
                "bare_flask": (page_master, page_url + "/", "users.lua",
                               same(BENCH_USERS=str(bare_users), BENCH_PATH="/")),
                # The same secret key: the bare page's cookies are the floor's.
                "floor": (page_floor_master, page_floor_url + "/", "users.lua",
                          same(BENCH_USERS=str(bare_users), BENCH_PATH="/")),
                "floor_admission": (page_adm_master, page_adm_url + "/", "users.lua",
                                    same(BENCH_USERS=str(bare_users), BENCH_PATH="/")),
                "gateway": (gateway, gw_url + "/", "users.lua", gw_many("/"))},
            "proxied_json": {
                "direct": (sim_master, f"{sim_url}/dashboard/api/summary?token={token}", "report.lua", dict),
                "bare_proxy_requests": (proxy_master, proxy_url + "/dashboard/api/summary", "users.lua", many_json),
                "bare_proxy_urllib3": (proxy3_master, proxy3_url + "/dashboard/api/summary", "users.lua", many_json),
                "floor": (proxy_floor_master, proxy_floor_url + "/dashboard/api/summary", "users.lua", many_json),
                "floor_admission": (proxy_adm_master, proxy_adm_url + "/dashboard/api/summary", "users.lua",
                                    many_json),
                "gateway": (gateway, gw_url + "/dashboard/api/summary", "users.lua", gw_many("/dashboard/api/summary"))},
            "one_user_page": {
                "bare_flask": (page_master, page_url + "/", "report.lua", bare_user),
                "gateway": (gateway, gw_url + "/", "report.lua", gw_user)},
        }
        started_nginx = workloads.start_nginx(tmp, sim_url.split("://", 1)[1], token, args.workers)
        if started_nginx:
            servers.procs.append(started_nginx[0])
            sections["proxied_json"]["nginx"] = (started_nginx[0], started_nginx[1] + "/dashboard/api/summary",
                                                 "users.lua", many_json)
        else:
            results["nginx_skipped"] = "nginx is not installed (apt-get install nginx-light): workload (e) skipped"
            print(results["nginx_skipped"], flush=True)

        # Rounds: each runs every section, and in each section every target back to back and
        # in turn first, so drift on a shared machine and an unlucky share of connections
        # between workers hit all alike; each figure is the median over the rounds.
        runs = {section: {name: [] for name in targets} for section, targets in sections.items()}
        for round_no in range(rounds):
            print(f"round {round_no + 1}/{rounds}", flush=True)
            for section, targets in sections.items():
                names = list(targets)
                shift = round_no % len(names)
                for name in names[shift:] + names[:shift]:
                    master, url, script, env_for = targets[name]
                    runs[section][name].append(wrk_on(master, url, c, duration, args.threads, script, **env_for()))
        for section, targets in sections.items():
            results[section] = {name: median_of(runs[section][name]) for name in targets}
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
        startups = [round(startup_seconds(env), 3) for _ in range(args.startups)]
        results["startup_seconds"] = statistics.median(startups)
        results["startup_runs"] = startups
    finally:
        servers.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    verdicts.report(results)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
