"""Slow clients: a normal user's latency while 40 slowloris connections and 24 stalled export
readers hold on, under the gateway's worker and under stock gthread, side by side.

Both run gunicorn.conf.py with 2 workers x 8 threads, header sign-in, proxy mode, reached
directly (no front). The normal user asks for the embed page and a proxied JSON call in turn;
a request that takes longer than 5 s counts as 5 s (and as timed out).

Usage: python bench/slow_clients.py [--rounds 40]
"""
from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import LISTENING, start_gunicorn, wait_for  # noqa: E402

KEY, SECRET = "slow-key", "slow-" + secrets.token_urlsafe(24)
SLOWLORIS, STALLED = 40, 24
GIVE_UP = 5.0


def identity(email: str) -> str:
    return f"X-Forwarded-Email: {email}\r\n"


class Attack:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.addr, self.stop, self.sockets = (parts.hostname, parts.port), threading.Event(), []
        self.exports = {"started": 0, "refused": 0, "other": 0}
        for _ in range(SLOWLORIS):
            sock = socket.create_connection(self.addr, timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n")
            self.sockets.append(sock)
        for n in range(STALLED):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(self.addr)
            sock.sendall(f"GET /dashboard/export.csv?mb=512 HTTP/1.1\r\nHost: bench\r\n"
                         f"{identity(f'reader{n}@team.example')}\r\n".encode())
            try:
                head = sock.recv(64)
            except OSError:
                head = b""
            key = "started" if head.startswith(b"HTTP/1.1 200") else \
                "refused" if head.startswith(b"HTTP/1.1 503") else "other"
            self.exports[key] += 1
            self.sockets.append(sock)
        threading.Thread(target=self._trickle, daemon=True).start()

    def _trickle(self) -> None:
        while not self.stop.wait(0.5):
            for sock in self.sockets[:SLOWLORIS]:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        for sock in self.sockets:
            sock.close()


def normal_user(url: str, rounds: int) -> dict:
    timings, failed = [], 0
    headers = {"X-Forwarded-Email": "normal@team.example"}
    with requests.Session() as http:
        for _ in range(rounds):
            for path in ("/", "/dashboard/api/summary"):
                started = time.monotonic()
                try:
                    ok = http.get(url + path, headers=headers, timeout=GIVE_UP).status_code == 200
                except requests.RequestException:
                    ok = False
                timings.append(min(GIVE_UP, time.monotonic() - started))
                failed += not ok
    timings.sort()
    return {"p50": statistics.median(timings), "p99": timings[int(len(timings) * 0.99) - 1],
            "max": timings[-1], "failed": failed, "n": len(timings)}


def measure(name: str, extra: tuple[str, ...], env: dict, tmp: Path, rounds: int) -> list[str]:
    log = tmp / f"{name}.log"
    proc = start_gunicorn("wsgi:app", env, log, workers=2, threads=8, extra=extra)
    try:
        url = wait_for(LISTENING, log, proc)
        requests.get(url + "/", headers={"X-Forwarded-Email": "normal@team.example"}, timeout=10)
        calm = normal_user(url, rounds)
        attack = Attack(url)
        time.sleep(1)
        try:
            loaded = normal_user(url, rounds)
        finally:
            attack.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = []
    for label, r in (("no attack", calm), ("under attack", loaded)):
        rows.append(f"| {name} | {label} | {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms | "
                    f"{r['max'] * 1000:.0f} ms | {r['failed']} of {r['n']} |")
    rows.append(f"| {name} | exports: started {attack.exports['started']}, told to retry (503) "
                f"{attack.exports['refused']}, other {attack.exports['other']} | | | | |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-slow-"))
    tenants = tmp / "tenants.toml"
    tenants.write_text('[[subtenant]]\ntenant = "bench"\nid = "team"\nname = "Team"\n'
                       'email_domains = ["team.example"]\n')
    sim_log = tmp / "sim.log"
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "sim", "--port", "0", "--partner", f"{KEY}:{SECRET}"],
                           cwd=ROOT, stdout=open(sim_log, "wb"), stderr=subprocess.STDOUT)
    try:
        sim_url = wait_for(r"listening on (http://\S+) ", sim_log, sim)
        env = {"ZIPTEAMS_API_KEY": KEY, "ZIPTEAMS_API_SECRET": SECRET, "ZIPTEAMS_API_URL": sim_url + "/api/v1",
               "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/", "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
               "GATEWAY_TENANTS_FILE": str(tenants), "GATEWAY_COOKIE_SECURE": "false",
               "WEB_CONCURRENCY": "2", "GATEWAY_THREADS": "8"}
        rows = ["| worker | load | p50 | p99 | max | failed or over 5 s |", "|---|---|---|---|---|---|"]
        rows += measure("gateway worker", (), env, tmp, args.rounds)
        rows += measure("stock gthread", ("--worker-class", "gthread"), env, tmp, args.rounds)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
