"""Fault soak: 100 simulated users for 60 s against gunicorn (4 workers, Redis cache) while the
stand-in alternates healthy periods with 500s, 429s, 5 s delays, and Redis is restarted.

Reports answers by status, token requests the stand-in saw, worker restarts, any secret or
token found in responses or logs, and how long after each healed fault errors stopped.
Exit code 0 only if there were no answers outside the documented statuses, no worker
crashes, no leaks, and every fault was recovered from within --recovery seconds.

Usage: python bench/soak.py [--users 100] [--duration 60]   (needs redis-server on PATH)
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import LISTENING, RedisServer, start_gunicorn, wait_for  # noqa: E402
KEY, SECRET = "soak-key", "soak-" + secrets.token_urlsafe(24)
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")
DOCUMENTED = {200, 302, 401, 403, 404, 409, 413, 502, 503, 504}
SUBTENANTS = 30




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--recovery", type=float, default=10.0, help="seconds allowed to recover from a fault")
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (apt-get install redis-server)")

    tmp = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    tenants = tmp / "tenants.toml"
    tenants.write_text("\n".join(f'[[subtenant]]\ntenant = "soak"\nid = "team-{i}"\nname = "Team {i}"\n'
                                 f'email_domains = ["team{i}.example"]\n' for i in range(SUBTENANTS)))
    redis = RedisServer(tmp).start()
    sim_log, gw_log = tmp / "sim.log", tmp / "gateway.log"
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "sim", "--port", "0", "--partner",
                            f"{KEY}:{SECRET}", "--token-ttl", "12"], cwd=ROOT,
                           stdout=open(sim_log, "wb"), stderr=subprocess.STDOUT)
    sim_url = wait_for(r"listening on (http://\S+) ", sim_log, sim)
    env = {**os.environ, "ZIPTEAMS_API_KEY": KEY, "ZIPTEAMS_API_SECRET": SECRET,
           "ZIPTEAMS_API_URL": sim_url + "/api/v1", "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/",
           "ZIPTEAMS_TIMEOUT": "2", "ZIPTEAMS_MAX_RPM": "600", "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
           "GATEWAY_TENANTS_FILE": str(tenants), "GATEWAY_CACHE_URL": redis.url,
           "GATEWAY_BREAKER_COOLDOWN": "3", "GATEWAY_COOKIE_SECURE": "false", "GATEWAY_LOG_FORMAT": "json"}
    gw = start_gunicorn("wsgi:app", env, gw_log, workers=4, threads=16)
    gw_url = wait_for(LISTENING, gw_log, gw)
    time.sleep(1.5)

    control = requests.Session()
    answers: list[tuple[float, int]] = []
    leaks: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    started = time.monotonic()

    def user(n: int) -> None:
        http = requests.Session()
        email = f"user{n}@team{n % SUBTENANTS}.example"
        paths = ["/", "/dashboard/api/summary"]
        i = 0
        while not stop.is_set():
            try:
                r = http.get(gw_url + paths[i % 2], headers={"X-Forwarded-Email": email}, timeout=30)
                status, blob = r.status_code, r.content + str(r.headers).encode()
            except requests.RequestException:
                status, blob = 0, b""
            if SECRET.encode() in blob or JWT.search(blob):
                leaks.append(f"response to {email}")
            with lock:
                answers.append((time.monotonic() - started, status))
            i += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=user, args=(n,), daemon=True) for n in range(args.users)]
    for t in threads:
        t.start()

    # The schedule, as fractions of the duration: (start, end, what).
    d = args.duration
    schedule = [(0.12, 0.22, {"status": 500}), (0.32, 0.42, {"status": 429,
                 "message": "Rate limit exceeded. Try again in 3 seconds."}),
                (0.52, 0.62, {"delay": 5}), (0.72, 0.78, "redis")]
    heals = []
    for begin, end, what in schedule:
        time.sleep(max(0.0, started + begin * d - time.monotonic()))
        if what == "redis":
            redis.stop()
        else:
            control.post(sim_url + "/_sim/faults", json={**what, "count": 100000})
        time.sleep(max(0.0, started + end * d - time.monotonic()))
        if what == "redis":
            redis.start()
        else:
            control.delete(sim_url + "/_sim/faults")
        heals.append((str(what), time.monotonic() - started))
    time.sleep(max(0.0, started + d - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(timeout=35)
    stats = control.get(sim_url + "/_sim/stats").json()
    gw.terminate()
    gw.wait(timeout=30)
    sim.terminate()
    redis.stop()

    by_status = collections.Counter(status for _, status in answers)
    undocumented = {s: c for s, c in by_status.items() if s not in DOCUMENTED}
    log_text = gw_log.read_bytes()
    booted = log_text.count(b"Booting worker")
    restarts = max(0, booted - 4)
    if SECRET.encode() in log_text or JWT.search(log_text):
        leaks.append("gateway log")
    bad_json = sum(1 for line in log_text.splitlines() if line.strip() and not _is_json(line))
    recoveries = []
    next_starts = [begin * d for begin, _, _ in schedule[1:]] + [d]
    for (what, healed_at), next_start in zip(heals, next_starts):
        # Errors after the heal and before the next fault begins: how long they went on.
        window = [t for t, s in answers if healed_at <= t < next_start and s != 200]
        recoveries.append((what, round(max(window) - healed_at, 2) if window else 0.0))
    report = {"answers": sum(by_status.values()), "by_status": dict(sorted(by_status.items())),
              "undocumented": undocumented, "token_requests_seen_by_stand_in": stats["token_requests"],
              "stand_in_statuses": stats.get("statuses"), "worker_restarts": restarts,
              "leaks": leaks, "non_json_log_lines": bad_json,
              "seconds_until_errors_stopped_after_heal": recoveries}
    print(json.dumps(report, indent=2))
    ok = not undocumented and restarts == 0 and not leaks and bad_json == 0 and \
        all(r <= args.recovery for _, r in recoveries)
    print("SOAK", "PASSED" if ok else "FAILED")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
