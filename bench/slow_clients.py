"""Slow clients: a normal user's latency while slow and stalled clients hold on, for several
server models side by side in one run.

Every candidate runs at once (2 workers, GATEWAY_THREADS 8, header sign-in, proxy mode) and gets
the same attack at the same time, all of it at once:

- 40 slowloris connections: half a request head, then a byte every 0.5 s;
- 24 signed-in users who open a 512 MB export and stop reading;
- 24 connections for each body shape below, sending the head of ``POST /logout`` (no sign-in
  needed: the CSRF check reads the form first) and then one body byte every 4 s.

The body shapes are the ones today's worker (gateway/serving/worker.py, now deleted) handed to a
thread at once: a CRLF before the request line, ``Transfer-Encoding: identity, chunked``, a chunk
size of 17+ hex digits, a chunk-size line over 1,024 bytes, a body over 1 MB; and a plain
1,000-byte body. Meanwhile one normal user per candidate, each in its own thread, asks for the
embed page and a proxied JSON call in turn; a request over 3 s counts as 3 s and as failed.

Candidates (--servers, comma-separated): today (the gateway's own gthread worker, from the
commit --today names, run from a copy of it), gevent (this tree's default), gthread (stock
gthread, GATEWAY_WORKER=gthread), nginx+gthread and nginx+gevent (deploy/nginx.conf in front),
uvicorn (gunicorn with uvicorn-worker and a2wsgi, if installed).

Then normal load, without attack: wrk (32 connections, as bench/run.py) on the embed page and on
the proxied JSON call of a user signed in by header, every candidate in turn, in --load-rounds
rounds, rotating the order; the median req/s and p99 of the rounds.

Usage: python bench/slow_clients.py [--servers today,gevent,gthread] [--seconds 40] [--load-rounds 3]
"""
from __future__ import annotations

import argparse
import io
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import LISTENING, start_gunicorn, start_nginx, wait_for  # noqa: E402

KEY, SECRET = "slow-key", "slow-" + secrets.token_urlsafe(24)
SLOWLORIS, STALLED, PER_SHAPE = 40, 24, 24
GIVE_UP = 3.0
TRICKLE_EVERY = 4.0
LOAD = {"embed page": "/", "proxied JSON": "/dashboard/api/summary"}
FORM = b"Host: bench\r\nContent-Type: application/x-www-form-urlencoded\r\n"
CHUNKED = FORM + b"Transfer-Encoding: chunked\r\n\r\n"
# What each connection sends before its body trickles in a byte at a time.
SHAPES = {
    "CRLF before the request line": b"\r\nPOST /logout HTTP/1.1\r\n" + FORM + b"Content-Length: 1000\r\n\r\n",
    "TE identity, chunked": b"POST /logout HTTP/1.1\r\n" + FORM + b"Transfer-Encoding: identity, chunked\r\n\r\n3e8\r\n",
    "17+ hex digit chunk size": b"POST /logout HTTP/1.1\r\n" + CHUNKED + b"00000000000000003e8\r\n",
    "chunk-size line over 1 KB": b"POST /logout HTTP/1.1\r\n" + CHUNKED + b"3e8;x=" + b"a" * 1100 + b"\r\n",
    "body over 1 MB": b"POST /logout HTTP/1.1\r\n" + FORM + b"Content-Length: 2000000\r\n\r\n",
    "plain 1,000-byte body": b"POST /logout HTTP/1.1\r\n" + FORM + b"Content-Length: 1000\r\n\r\n",
}


class Attack:
    """The whole attack on one server, held open (and trickling) until closed."""

    def __init__(self, url: str, *, slowloris: int = SLOWLORIS, stalled: int = STALLED, per_shape: int = PER_SHAPE,
                 reader=lambda n: f"reader{n}@team.example", export_mb: int = 512):
        parts = urlsplit(url)
        self.addr, self.stop = (parts.hostname, parts.port), threading.Event()
        self.slowloris, self.bodies, self.exports = [], [], []
        self.export_heads = {"started": 0, "refused": 0, "other": 0}
        for _ in range(slowloris):
            self.slowloris.append(self._open(b"GET / HTTP/1.1\r\nHost: bench\r\n"))
        for head in SHAPES.values():
            for _ in range(per_shape):
                self.bodies.append(self._open(head))
        for n in range(stalled):
            sock = self._open(f"GET /dashboard/export.csv?mb={export_mb} HTTP/1.1\r\nHost: bench\r\n"
                              f"X-Forwarded-Email: {reader(n)}\r\n\r\n".encode(), rcvbuf=4096)
            self.exports.append(sock)
        self._read_export_heads()
        threading.Thread(target=self._trickle, daemon=True).start()

    def _read_export_heads(self) -> None:
        """The first bytes of each export's answer (all waited for at once, GIVE_UP at most), then
        nothing more is read."""
        import select

        poll, pending = select.poll(), {s.fileno(): s for s in self.exports if s.fileno() >= 0}
        for fd in pending:
            poll.register(fd, select.POLLIN)
        heads, deadline = {}, time.monotonic() + GIVE_UP
        while pending and time.monotonic() < deadline:
            for fd, _ in poll.poll(max(0, deadline - time.monotonic()) * 1000):
                sock = pending.pop(fd)
                poll.unregister(fd)
                try:
                    heads[fd] = sock.recv(64)
                except OSError:
                    heads[fd] = b""
        for head in heads.values():
            key = "started" if head.startswith(b"HTTP/1.1 200") else \
                "refused" if head.startswith(b"HTTP/1.1 503") else "other"
            self.export_heads[key] += 1
        self.export_heads["other"] += len(pending)

    def _open(self, first: bytes, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        try:
            sock.connect(self.addr)
            sock.sendall(first)
        except OSError:
            sock.close()
        return sock

    def _trickle(self) -> None:
        ticks = 0
        while not self.stop.wait(0.5):
            ticks += 1
            every = int(TRICKLE_EVERY / 0.5)
            for sock in self.slowloris + (self.bodies if ticks % every == 0 else []):
                try:
                    sock.send(b"X" if sock in self.slowloris else b"a")
                except OSError:
                    pass

    def held(self) -> int:
        """Attack connections the server still keeps open (readable means closed or answered)."""
        import select

        poll, alive = select.poll(), [s for s in self.slowloris + self.bodies if s.fileno() >= 0]
        for sock in alive:
            poll.register(sock, select.POLLIN)
        return len(alive) - len(poll.poll(0))

    def close(self) -> None:
        self.stop.set()
        for sock in self.slowloris + self.bodies + self.exports:
            sock.close()


def normal_user(url: str, seconds: float, out: dict) -> None:
    timings, failed = [], 0
    headers = {"X-Forwarded-Email": "normal@team.example"}
    deadline = time.monotonic() + seconds
    with requests.Session() as http:
        while time.monotonic() < deadline:
            for path in ("/", "/dashboard/api/summary"):
                started = time.monotonic()
                try:
                    ok = http.get(url + path, headers=headers, timeout=GIVE_UP).status_code == 200
                except requests.RequestException:
                    ok = False
                timings.append(min(GIVE_UP, time.monotonic() - started))
                failed += not ok
            time.sleep(0.02)  # a person's pace, not a load test: leave the cores to the servers
    timings.sort()
    out.update(p50=timings[len(timings) // 2], p99=timings[max(0, int(len(timings) * 0.99) - 1)],
               max=timings[-1], failed=failed, n=len(timings))


def wrk(url: str, seconds: float) -> tuple[float, float]:
    """Requests/s and p99 (ms) of wrk on ``url``, 32 connections, signed in by header."""
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds:g}s", "--latency", "-H",
                          "X-Forwarded-Email: loaded@team.example", url],
                         capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()
    return rps, float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def normal_load(urls: dict, rounds: int, seconds: float) -> dict:
    """Median req/s and p99 per candidate and workload, candidates rotated between rounds."""
    names, runs = list(urls), {}
    for n in range(rounds):
        order = names[n % len(names):] + names[:n % len(names)]
        for name in order:
            for workload, path in LOAD.items():
                runs.setdefault((name, workload), []).append(wrk(urls[name] + path, seconds))
    return {key: (statistics.median(r for r, _ in got), statistics.median(p for _, p in got))
            for key, got in runs.items()}


def today_tree(rev: str, tmp: Path) -> Path:
    """A copy of the gateway at ``rev`` (git archive), to run today's worker beside the candidates."""
    tree = tmp / "today"
    tree.mkdir(mode=0o700)
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def start(name: str, env: dict, tmp: Path, today: Path | None) -> tuple[list[subprocess.Popen], str]:
    log = tmp / f"{name.replace('+', '-')}.log"
    root, extra, app, own = ROOT, (), "wsgi:app", dict(env)
    if name == "today":
        root = today
    elif name in ("gthread", "nginx+gthread"):
        own["GATEWAY_WORKER"] = "gthread"
    elif name == "uvicorn":
        own["GATEWAY_WORKER"] = "gthread"  # no gevent patching under asyncio
        extra, app = ("--worker-class", "uvicorn_worker.UvicornWorker"), "bench.asgi_app:app"
    proc = start_gunicorn(app, own, log, workers=2, threads=8, extra=extra, root=root)
    url = wait_for(LISTENING, log, proc)
    if not name.startswith("nginx+"):
        return [proc], url
    workdir = tmp / f"{name.replace('+', '-')}-nginx"
    workdir.mkdir(mode=0o700)
    front, front_url = start_nginx(url, workdir, keep_identity=True)
    return [front, proc], front_url


def last_commit_with_todays_worker() -> str:
    deleted = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--diff-filter=D", "--",
                              "gateway/serving/incoming.py"], capture_output=True, text=True, check=False).stdout.strip()
    return f"{deleted}^" if deleted else "HEAD"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="today,gevent,gthread,nginx+gthread,nginx+gevent")
    parser.add_argument("--seconds", type=float, default=40, help="seconds of each phase (calm, attack)")
    parser.add_argument("--load-rounds", type=int, default=3, help="rounds of wrk under normal load (0: none)")
    parser.add_argument("--load-seconds", type=float, default=5)
    parser.add_argument("--today", default=None, help="commit with today's worker (default: before its deletion)")
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="gateway-slow-"))
    tenants = tmp / "tenants.toml"
    tenants.write_text('[[subtenant]]\ntenant = "bench"\nid = "team"\nname = "Team"\n'
                       'email_domains = ["team.example"]\n')
    today = today_tree(args.today or last_commit_with_todays_worker(), tmp) if "today" in names else None
    sim_log = tmp / "sim.log"
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "sim", "--port", "0", "--partner", f"{KEY}:{SECRET}"],
                           cwd=ROOT, stdout=open(sim_log, "wb"), stderr=subprocess.STDOUT)
    procs: list[subprocess.Popen] = []
    try:
        sim_url = wait_for(r"listening on (http://\S+) ", sim_log, sim)
        env = {"ZIPTEAMS_API_KEY": KEY, "ZIPTEAMS_API_SECRET": SECRET, "ZIPTEAMS_API_URL": sim_url + "/api/v1",
               "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/", "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
               "GATEWAY_TENANTS_FILE": str(tenants), "GATEWAY_COOKIE_SECURE": "false",
               "WEB_CONCURRENCY": "2", "GATEWAY_THREADS": "8", "GATEWAY_LOG_LEVEL": "WARNING"}
        urls = {}
        for name in names:
            started, urls[name] = start(name, env, tmp, today)
            procs += started
            requests.get(urls[name] + "/", headers={"X-Forwarded-Email": "normal@team.example"}, timeout=10)
        results = {name: {} for name in names}
        for phase in ("no attack", "under attack"):
            attacks = {}
            if phase == "under attack":  # every candidate's at once, so each is measured under its whole attack
                setups = [threading.Thread(target=lambda n=n: attacks.__setitem__(n, Attack(urls[n]))) for n in names]
                for setup in setups:
                    setup.start()
                for setup in setups:
                    setup.join()
                time.sleep(TRICKLE_EVERY + 1)  # the exports fill their buffers; every trickle has begun
            users = [threading.Thread(target=normal_user, args=(urls[n], args.seconds, out))
                     for n, out in ((n, results[n].setdefault(phase, {})) for n in names)]
            for user in users:
                user.start()
            for user in users:
                user.join()
            for name, attack in attacks.items():
                results[name]["held"] = attack.held()
                results[name]["exports"] = attack.export_heads
                attack.close()
        load = normal_load(urls, args.load_rounds, args.load_seconds) if args.load_rounds else {}
    finally:
        for proc in procs + [sim]:
            proc.terminate()
        for proc in procs + [sim]:
            proc.wait(timeout=30)
    rows = [f"{args.seconds:g} s per phase; attack: {SLOWLORIS} slowloris, {STALLED} stalled exports, "
            f"{PER_SHAPE} x {len(SHAPES)} trickled bodies (one byte every {TRICKLE_EVERY:g} s)", "",
            "| server | load | p50 | p99 | max | failed or over 3 s | attack connections still held at the end |",
            "|---|---|---|---|---|---|---|"]
    for name in names:
        for phase in ("no attack", "under attack"):
            r = results[name][phase]
            held = "" if phase == "no attack" else f"{results[name]['held']} of {SLOWLORIS + PER_SHAPE * len(SHAPES)}"
            rows.append(f"| {name} | {phase} | {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms | "
                        f"{r['max'] * 1000:.0f} ms | {r['failed']} of {r['n']} | {held} |")
        e = results[name]["exports"]
        rows.append(f"| {name} | exports: started {e['started']}, told to retry (503) {e['refused']}, "
                    f"other {e['other']} | | | | | |")
    if load:
        rows += ["", f"normal load: wrk, 32 connections, median of {args.load_rounds} rounds of "
                     f"{args.load_seconds:g} s", "", "| server | embed page req/s | p99 | proxied JSON req/s | p99 |",
                 "|---|---|---|---|---|"]
        for name in names:
            (page, page99), (json_, json99) = load[(name, "embed page")], load[(name, "proxied JSON")]
            rows.append(f"| {name} | {page:.0f} | {page99:.0f} ms | {json_:.0f} | {json99:.0f} ms |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
