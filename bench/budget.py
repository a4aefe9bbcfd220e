"""The token budget at the default settings: warm-up, short-lived tokens, recovery.

Real gunicorn (gunicorn.conf.py, WEB_CONCURRENCY and GATEWAY_THREADS at their defaults,
memory cache, ZIPTEAMS_MAX_RPM=auto, the default breaker), a real stand-in, 30 teams and
300 users (10 per team), each user a keep-alive session that loads the page and a
dashboard call in turn. Three phases, each on a freshly started gateway:

  a. restart: every user's first visit at once; fully warm (every user served) within
     60 s, with no 429 from the stand-in and no 503 to a user;
  b. 60-second tokens (stand-in --token-ttl 60) for 3 minutes with every user active:
     no 503 (no answer but 200 at all);
  c. a 40 s stand-in outage (500s) with half the teams warm: cold teams served within
     5 s of the heal.

Prints a JSON report and one line per target; exits 1 if a target was missed.
Usage: python bench/budget.py [--warm 60] [--ttl-phase 180] [--outage 40]   (about 5 minutes)
"""
from __future__ import annotations

import argparse
import collections
import json
import os
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
from bench.common import LISTENING, start_gunicorn, wait_for  # noqa: E402
from gateway.config import BY_NAME, SETTINGS  # noqa: E402

KEY, SECRET = "budget-key", "budget-" + secrets.token_urlsafe(24)
TEAMS, USERS = 30, 300
PATHS = ("/", "/dashboard/api/summary")


class Stack:
    """A stand-in and a gateway under gunicorn at its defaults, started fresh for a phase."""

    def __init__(self, tmp: Path, name: str, token_ttl: int = 86400):
        self.sim_log, self.gw_log = tmp / f"{name}-sim.log", tmp / f"{name}-gateway.log"
        self.sim = subprocess.Popen([sys.executable, "-m", "gateway", "sim", "--port", "0", "--partner",
                                     f"{KEY}:{SECRET}", "--token-ttl", str(token_ttl)], cwd=ROOT,
                                    stdout=open(self.sim_log, "wb"), stderr=subprocess.STDOUT)
        self.sim_url = wait_for(r"listening on (http://\S+) ", self.sim_log, self.sim)
        env = {"ZIPTEAMS_API_KEY": KEY, "ZIPTEAMS_API_SECRET": SECRET, "ZIPTEAMS_API_URL": self.sim_url + "/api/v1",
               "ZIPTEAMS_DASHBOARD_URL": self.sim_url + "/dashboard/", "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
               "GATEWAY_TENANTS_FILE": str(tmp / "tenants.toml"), "GATEWAY_COOKIE_SECURE": "false",
               "GATEWAY_STATE_DIR": str(tmp / f"{name}-state")}
        # The defaults, exactly: nothing about the budget, the breaker or the cache is set here,
        # and a setting left in this shell's environment is blanked (an empty value is the default).
        env.update({s.name: "" for s in SETTINGS if s.name not in env and s.name in os.environ})
        self.gw = start_gunicorn("wsgi:app", env, self.gw_log, workers=int(BY_NAME["WEB_CONCURRENCY"].default),
                                 threads=int(BY_NAME["GATEWAY_THREADS"].default))
        self.url = wait_for(LISTENING, self.gw_log, self.gw)
        self.control = requests.Session()

    def stats(self) -> dict:
        return self.control.get(self.sim_url + "/_sim/stats", timeout=10).json()

    def fault(self, **spec) -> None:
        self.control.post(self.sim_url + "/_sim/faults", json=spec, timeout=10).raise_for_status()

    def heal(self) -> None:
        self.control.delete(self.sim_url + "/_sim/faults", timeout=10).raise_for_status()

    def stop(self) -> None:
        for proc in (self.gw, self.sim):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Users:
    """USERS simulated users, user n in team n % TEAMS; every answer recorded as (t, team, status)."""

    def __init__(self, url: str, pause, *, only=None):
        self.url, self.pause = url, pause  # pause(team) -> seconds until that user's next request
        self.answers: list[tuple[float, int, int]] = []
        self.first_ok: dict[int, float] = {}  # user -> when their first 200 came
        self.no_answer: collections.Counter = collections.Counter()  # status 0: the client's error, by kind
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._user, args=(n,), daemon=True)
                         for n in range(USERS) if only is None or only(n % TEAMS)]

    def run(self) -> "Users":
        for thread in self._threads:
            thread.start()
        return self

    def _user(self, n: int) -> None:
        team, http, i = n % TEAMS, requests.Session(), 0
        headers = {"X-Forwarded-Email": f"user{n}@team{team}.example"}
        while not self.stop.is_set():
            try:
                status = http.get(self.url + PATHS[i % 2], headers=headers, timeout=30).status_code
            except requests.RequestException as exc:
                status = 0
                cause = exc.__context__ or (exc.args[0] if exc.args else None)
                with self._lock:
                    self.no_answer[f"{type(exc).__name__}: {type(cause).__name__}"] += 1
            now = time.monotonic() - self.started
            with self._lock:
                self.answers.append((now, team, status))
                if status == 200:
                    self.first_ok.setdefault(n, now)
            i += 1
            self.stop.wait(self.pause(team))

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=35)

    def statuses(self, since: float = 0.0, until: float = float("inf"), teams=None) -> dict:
        return dict(sorted(collections.Counter(
            s for t, team, s in self.answers if since <= t < until and (teams is None or team in teams)).items()))


def phase_warm_up(tmp: Path, seconds: float) -> dict:
    stack = Stack(tmp, "warm")
    try:
        users = Users(stack.url, lambda team: 2.0).run()  # every user's first visit at once, then every 2 s
        time.sleep(seconds)
        users.finish()
        stats = stack.stats()
    finally:
        stack.stop()
    served = len(users.first_ok)
    return {"users": USERS, "users_served": served, "no_answer": dict(users.no_answer),
            "every_user_served_after_s": round(max(users.first_ok.values()), 2) if served == USERS else None,
            "answers": users.statuses(), "stand_in_token_requests": stats["token_requests"],
            "stand_in_statuses": stats["statuses"]}


def phase_short_tokens(tmp: Path, seconds: float) -> dict:
    stack = Stack(tmp, "ttl60", token_ttl=60)
    try:
        users = Users(stack.url, lambda team: 2.0).run()
        time.sleep(seconds)
        users.finish()
        stats = stack.stats()
        refresh_lines = stack.gw_log.read_text(errors="replace").count("token refresh failed")
    finally:
        stack.stop()
    return {"seconds": seconds, "token_ttl": 60, "answers": users.statuses(), "no_answer": dict(users.no_answer),
            "stand_in_token_requests": stats["token_requests"], "stand_in_statuses": stats["statuses"],
            "refresh_failures_logged": refresh_lines}


def phase_recovery(tmp: Path, outage: float) -> dict:
    stack = Stack(tmp, "outage")
    warm = set(range(TEAMS // 2))
    cold = set(range(TEAMS // 2, TEAMS))
    try:
        warm_users = Users(stack.url, lambda team: 2.0, only=lambda team: team in warm).run()
        deadline = time.monotonic() + 60
        while len(warm_users.first_ok) < len(warm_users._threads) and time.monotonic() < deadline:
            time.sleep(0.2)
        stack.fault(status=500, count=10 ** 6)
        began = time.monotonic() - warm_users.started
        cold_users = Users(stack.url, lambda team: 1.0, only=lambda team: team in cold).run()
        time.sleep(outage)
        stack.heal()
        healed_cold = time.monotonic() - cold_users.started
        healed_warm = time.monotonic() - warm_users.started
        time.sleep(15)
        warm_users.finish()
        cold_users.finish()
        stats = stack.stats()
        log = stack.gw_log.read_text(errors="replace")
    finally:
        stack.stop()
    first_after_heal = {}
    for t, team, status in sorted(cold_users.answers):
        if status == 200 and t >= healed_cold:
            first_after_heal.setdefault(team, round(t - healed_cold, 2))
    every_cold_team = len(first_after_heal) == len(cold)
    return {"outage_s": outage, "cold_teams": len(cold), "cold_teams_served_after_heal": len(first_after_heal),
            "slowest_cold_team_after_heal_s": max(first_after_heal.values()) if every_cold_team else None,
            "cold_answers_during_outage": cold_users.statuses(until=healed_cold),
            "warm_answers_during_outage": warm_users.statuses(since=began, until=healed_warm),
            "no_answer": dict(warm_users.no_answer + cold_users.no_answer),
            "stand_in_token_requests": stats["token_requests"],
            "breaker_transitions_logged": log.count("zipteams breaker "), "probers_logged": log.count("now probes")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=float, default=60.0, help="seconds of phase a")
    parser.add_argument("--ttl-phase", type=float, default=180.0, help="seconds of phase b")
    parser.add_argument("--outage", type=float, default=40.0, help="seconds of the stand-in outage in phase c")
    parser.add_argument("--only", choices=("a", "b", "c"), help="run one phase")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-budget-"))
    (tmp / "tenants.toml").write_text("\n".join(
        f'[[subtenant]]\ntenant = "bench"\nid = "team-{i}"\nname = "Team {i}"\nemail_domains = ["team{i}.example"]\n'
        for i in range(TEAMS)))
    try:
        report = {"settings": {name: BY_NAME[name].default for name in (
                      "WEB_CONCURRENCY", "GATEWAY_THREADS", "GATEWAY_CACHE_URL", "ZIPTEAMS_MAX_RPM",
                      "GATEWAY_BREAKER_FAILURES", "GATEWAY_BREAKER_COOLDOWN", "ZIPTEAMS_RETRIES")},
                  "teams": TEAMS, "users": USERS}
        phases = {"a": ("a_warm_up", lambda: phase_warm_up(tmp, args.warm)),
                  "b": ("b_60s_tokens", lambda: phase_short_tokens(tmp, args.ttl_phase)),
                  "c": ("c_recovery", lambda: phase_recovery(tmp, args.outage))}
        for letter, (name, run) in phases.items():
            if args.only in (None, letter):
                report[name] = run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))
    a, b, c = (report.get(name) for name in ("a_warm_up", "b_60s_tokens", "c_recovery"))
    targets = []
    if a:
        targets += [("a: every user served within 60 s of a restart",
                     a["every_user_served_after_s"] is not None and a["every_user_served_after_s"] <= 60),
                    ("a: no 429 from the stand-in", a["stand_in_statuses"].get("429", 0) == 0),
                    ("a: no 503 to a user", a["answers"].get(503, 0) == 0)]
    if b:
        targets.append(("b: 60 s tokens, no 503", b["answers"].get(503, 0) == 0))
    if c:
        targets.append(("c: cold teams served within 5 s of the heal",
                        c["slowest_cold_team_after_heal_s"] is not None and c["slowest_cold_team_after_heal_s"] <= 5))
    for name, ok in targets:
        print(("met     " if ok else "MISSED  ") + name)
    return 0 if all(ok for _, ok in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
