"""The token budget and the breaker: sized from the rules, each worker process with its own
breaker and (without Redis) its own share of the budget, a background probe per open breaker,
recovery within seconds of a heal, a cap on threads that wait for Zipteams, and one deadline
over the lock wait and the fetch.

Injected clocks and captured timers, no sleeps; two tests under real gunicorn (2 workers).
"""
import re
import threading
from pathlib import Path

import pytest

from conftest import API_KEY, API_SECRET, SECRET_KEY, FakeClock, recording_session, user_headers
from gateway import config
from gateway.tokens.breaker import BreakerOpen, CircuitBreaker
from gateway.tokens.budget import FetchGate, ZipteamsQueueFull, budget_per_minute, process_share
from gateway.tokens.protection import SharedLoader
from gateway.shared import Shared
from gateway.tokens.cache import serve_window
from gateway.tokens.client import ZipteamsBadRequest, ZipteamsClient, ZipteamsServerError, ZipteamsTimeout
from test_protection import FakeTime, protected

DEFAULT = {s.name: s.default for s in config.SETTINGS}


@pytest.fixture
def t():
    return FakeTime()


def workers(sim, t, count=2, **kw):
    """``count`` worker processes' fetch pipelines (no Redis): each its own breaker and share."""
    return [protected(sim, t, workers=count, **kw) for _ in range(count)]


def heal(sim):
    sim.http.delete(sim.url + "/_sim/faults", timeout=5).raise_for_status()


class Timers:
    """The breakers' background rounds, captured and run in the order they fall due on the fake clock."""

    def __init__(self, t):
        self.t, self.due = t, []

    def schedule(self, delay, job):
        self.due.append((self.t.wall.now + delay, job))

    def delays(self):
        return [round(at - self.t.wall.now, 3) for at, _ in self.due]

    def run_next(self):
        self.due.sort(key=lambda pair: pair[0])
        at, job = self.due.pop(0)
        self.t.wall.advance(max(0.0, at - self.t.wall.now))
        job()


def probing(*pipelines):
    """Each pipeline's breaker probes with a real token request through that pipeline."""
    for fetch in pipelines:
        fetch.breaker.probe = lambda fetch=fetch: fetch("acme", "probe")
    return pipelines


# ------------------------------------------------------------- the breaker
def test_a_breaker_opened_in_one_worker_leaves_the_others_serving_and_its_probe_closes_only_its_own(sim, t):
    a, b = workers(sim, t, retries=0, failures=2, cooldown=3)
    sim.fault(status=500, count=2)
    for _ in range(2):
        with pytest.raises(ZipteamsServerError):
            a("acme", "x")
    assert a.breaker.state == CircuitBreaker.OPEN and b.breaker.state == CircuitBreaker.CLOSED
    with pytest.raises(BreakerOpen) as info:
        a("acme", "z")
    assert info.value.retry_after == 3
    assert b("acme", "z").subtenant == "z"  # b judges Zipteams for itself, and it is back
    assert sim.stats()["token_requests"] == 3
    t.wall.advance(3)
    assert a("acme", "z").subtenant == "z"  # a's request is a's probe
    assert a.breaker.state == CircuitBreaker.CLOSED


def test_a_misconfigured_subtenant_opens_no_breaker(sim, t):
    (a,) = workers(sim, t, count=1, retries=0, failures=1)
    sim.fault(status=400, count=3)
    for _ in range(3):
        with pytest.raises(ZipteamsBadRequest):
            a("acme", "misconfigured")
    assert a.breaker.state == CircuitBreaker.CLOSED and a("acme", "sales-us").subtenant == "sales-us"


def test_an_open_breaker_probes_in_the_background_once_per_cool_down_until_it_closes(sim, t):
    timers = Timers(t)
    a, b = probing(*workers(sim, t, retries=0, failures=1, cooldown=3, schedule=timers.schedule))
    sim.fault(status=500, count=100)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x")  # a's breaker opens: a's first round is due when the cool-down ends
    assert timers.delays() == [3.1]
    with pytest.raises(BreakerOpen):
        a("acme", "y")  # a request that sees it open starts no second round beside it
    assert timers.delays() == [3.1] and b.breaker.state == CircuitBreaker.CLOSED
    timers.run_next()  # the probe fails: the next round is a cool-down away
    assert timers.delays() == [3.1] and sim.stats()["token_requests"] == 2
    heal(sim)
    timers.run_next()
    assert a.breaker.state == CircuitBreaker.CLOSED and timers.due == []  # closed: the rounds stop
    assert sim.stats()["token_requests"] == 3


def test_rounds_stopped_by_an_error_start_again_when_a_request_next_sees_the_breaker_open(sim, t):
    timers = Timers(t)
    (a,) = probing(*workers(sim, t, count=1, retries=0, failures=1, cooldown=3, schedule=timers.schedule))

    def interrupted():
        raise KeyboardInterrupt  # not an Exception a round may swallow

    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x")
    a.breaker.probe, probe = interrupted, a.breaker.probe
    with pytest.raises(KeyboardInterrupt):
        timers.run_next()
    assert timers.due == []  # the rounds stopped
    a.breaker.probe = probe
    assert a.breaker.before() is True  # a user's request is the probe now, in flight
    with pytest.raises(BreakerOpen, match="probe in flight"):
        a("acme", "y")  # another sees the breaker open: the rounds start again
    assert len(timers.due) == 1
    a.breaker.neutral(probe=True)  # the user's probe was throttled, say: it taught nothing
    timers.run_next()  # the background probe finds Zipteams back
    assert a.breaker.state == CircuitBreaker.CLOSED and timers.due == []


def test_a_probe_slot_whose_probe_never_reported_is_freed_when_its_lease_ends(sim, t):
    (a,) = workers(sim, t, count=1, retries=0, failures=1, cooldown=3)
    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x")
    t.wall.advance(3)
    assert a.breaker.before() is True  # a probe that never reports back
    with pytest.raises(BreakerOpen, match="probe in flight") as info:
        a("acme", "y")
    assert info.value.retry_after == 1
    t.wall.advance(25)  # the lease: the longest a probe can take
    assert a("acme", "y").subtenant == "y"
    assert a.breaker.state == CircuitBreaker.CLOSED


def test_at_the_defaults_cold_teams_are_served_within_seconds_of_a_40_s_outage_healing(sim, t):
    """Each worker's breaker opens on its own failures and probes every cool-down (3 s),
    counted in that worker's share of the budget; once Zipteams is back there is still room
    in each share for every team's first token."""
    teams, procs = 30, 2
    cooldown = float(DEFAULT["GATEWAY_BREAKER_COOLDOWN"])
    per_minute = budget_per_minute(DEFAULT["ZIPTEAMS_MAX_RPM"], teams=teams, processes=procs, cooldown=cooldown)
    timers = Timers(t)
    a, b = probing(*workers(sim, t, per_minute=per_minute, cooldown=cooldown, schedule=timers.schedule,
                            retries=int(DEFAULT["ZIPTEAMS_RETRIES"]),
                            failures=int(DEFAULT["GATEWAY_BREAKER_FAILURES"])))
    sim.fault(status=500, count=100000)
    outage_began = t.wall.now
    for worker in (a, b):
        while worker.breaker.state == CircuitBreaker.CLOSED:
            with pytest.raises(ZipteamsServerError):
                worker("acme", "cold")
    while t.wall.now - outage_began < 40:  # the outage goes on; each worker's rounds run on time
        timers.run_next()
        for worker in (a, b):
            # Users fail fast meanwhile; one whose worker's cool-down has just ended is that
            # worker's probe (one per cool-down, whoever sends it).
            open_ = worker.breaker.state == CircuitBreaker.OPEN
            with pytest.raises(BreakerOpen if open_ else ZipteamsServerError):
                worker("acme", "cold")
    assert len(timers.due) == 2  # one pending round per worker
    heal(sim)
    healed = t.wall.now
    while a.breaker.state != CircuitBreaker.CLOSED or b.breaker.state != CircuitBreaker.CLOSED:
        timers.run_next()
    assert t.wall.now - healed <= 3.2 and timers.due == []
    slept = len(t.slept)
    for worker in (a, b):  # every team's first token, in each worker: nothing waits or is refused
        for i in range(teams):
            assert worker("acme", f"team-{i}").subtenant == f"team-{i}"
    assert len(t.slept) == slept


# ---------------------------------------------------------------- the budget
def test_the_auto_budget_is_sized_from_the_teams_and_a_number_wins():
    assert DEFAULT["ZIPTEAMS_MAX_RPM"] == "auto"
    # A first token and a renewal per team, and a probe per 3 s cool-down, per fetching process.
    assert budget_per_minute("auto", teams=30, processes=2, cooldown=3) == 160
    assert budget_per_minute("auto", teams=30, processes=1, cooldown=3) == 80  # Redis: one fetch for all
    assert budget_per_minute("auto", teams=1, processes=1, cooldown=6) == 30  # never below 30
    assert budget_per_minute(25, teams=30, processes=2, cooldown=3) == 25


def test_without_redis_each_worker_s_share_is_the_budget_divided_by_the_workers_rounded_down():
    assert process_share(160, 2) == 80  # the auto budget: each worker's own 2 per team and probes
    assert process_share(25, 4) == 6  # 24 in all: never more than the 25 set
    assert process_share(3, 4) == 1  # never a worker with none


def test_the_docs_warm_up_example_is_what_check_prints_for_30_teams_at_the_defaults():
    from gateway.admin.cli import warm_up_line

    cfg = {name: config.BY_NAME[name].parse(DEFAULT[name]) for name in
           ("GATEWAY_CACHE_URL", "WEB_CONCURRENCY", "ZIPTEAMS_MAX_RPM", "GATEWAY_BREAKER_COOLDOWN")}
    line = warm_up_line(cfg, 30)
    assert "ZIPTEAMS_MAX_RPM=160 (auto, from the rules) gives each worker 80 a minute of its own" in line
    readme = " ".join((Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text().split())
    assert f"(`{line}`)" in readme


def test_a_cold_start_at_the_auto_budget_warms_every_team_in_both_workers_and_keeps_their_renewals(sim, t):
    """Each worker's share of auto (80 of 160) holds its 30 first tokens and 30 renewals. The old
    default (30, split per worker: 12 first tokens a minute each) took 3 minutes here."""
    per_minute = budget_per_minute("auto", teams=30, processes=2, cooldown=3)
    a, b = workers(sim, t, per_minute=per_minute, cooldown=3)
    for worker in (a, b):
        for i in range(30):
            worker("acme", f"team-{i}")
    for worker in (a, b):  # 60-second tokens: every one renewed within the same minute
        for i in range(30):
            worker("acme", f"team-{i}", refresh=True)
    assert t.slept == [] and sim.stats()["token_requests"] == 120


def test_the_auto_budget_follows_the_rules_when_they_are_reloaded(make_app, tmp_path):
    rules = tmp_path / "tenants.toml"
    rules.write_text(_teams(3))
    ticks = FakeClock(start=0)
    auto = make_app(GATEWAY_TENANTS_FILE=str(rules), GATEWAY_RULES_RELOAD="1", MONOTONIC=ticks)
    fixed = make_app(GATEWAY_TENANTS_FILE=str(rules), GATEWAY_RULES_RELOAD="1", MONOTONIC=ticks,
                     ZIPTEAMS_MAX_RPM="25")
    limiter = auto.extensions["limiter"]  # 2 workers (WEB_CONCURRENCY), no Redis
    assert (limiter.per_minute, limiter.share) == ((2 * 3 + 20) * 2, 2 * 3 + 20)
    rules.write_text(_teams(40))
    ticks.advance(2)
    assert (limiter.per_minute, limiter.share) == ((2 * 40 + 20) * 2, 2 * 40 + 20)
    assert (fixed.extensions["limiter"].per_minute, fixed.extensions["limiter"].share) == (25, 12)


def _teams(count: int) -> str:
    return "\n".join(f'[[subtenant]]\ntenant = "corp"\nid = "team-{i}"\nname = "Team {i}"\n'
                     f'emails = ["user{i}@corp.example"]\n' for i in range(count))


# ---------------------------------------------------------- the thread cap
def test_past_the_cap_a_request_gets_a_fast_503_when_the_fetches_ahead_are_slow():
    now = FakeClock(start=0)
    gate = FetchGate(2, patience=1.0, monotonic=now)
    gate.enter()
    gate.enter()
    now.advance(1.0)  # both have waited on Zipteams for a second: it is slow, waiting would only hold a thread
    with pytest.raises(ZipteamsQueueFull) as info:
        gate.enter()
    assert info.value.status_code == 503 and info.value.retry_after == 5


def test_past_the_cap_a_request_waits_for_a_place_while_zipteams_answers_quickly():
    gate = FetchGate(1, patience=30, monotonic=FakeClock(start=0))
    first = gate.enter()
    entered = threading.Event()

    def second():
        gate.leave(gate.enter())
        entered.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    gate.leave(first)
    waiter.join(timeout=10)
    assert entered.is_set()


# ------------------------------------------------------------ the deadline
def test_after_waiting_on_another_process_s_fetch_ours_gets_only_the_time_left(sim, redis_server):
    """The deadline covers the wait for the shared lock and the fetch together (28 s were seen for 20)."""
    holder = Shared(redis_server.url, SECRET_KEY, namespace="p")
    held = holder.acquire("acme", "slow")
    ticks = FakeClock(start=0)

    def poll(seconds):
        ticks.advance(1.0)
        if ticks.now == 15:  # the other process gives up without a token after 15 s
            held.release()

    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5)
    given = []

    def fetch(tenant, subtenant, refresh=False, within=None):
        given.append(within)
        return client.fetch_token(tenant, subtenant)

    loader = SharedLoader(fetch, Shared(redis_server.url, SECRET_KEY, namespace="p"), deadline=20,
                          margin=lambda tok: serve_window(tok, FakeClock().now, 60)[0], monotonic=ticks, sleep=poll)
    assert loader("acme", "slow").subtenant == "slow"
    assert len(given) == 1 and 4 <= given[0] <= 5


def test_a_fetch_with_no_time_left_sends_nothing(sim, t):
    fetch = protected(sim, t)
    with pytest.raises(ZipteamsTimeout):
        fetch("acme", "x", within=0)
    assert sim.stats()["token_requests"] == 0 and fetch.breaker.state == CircuitBreaker.CLOSED


# ------------------------------------------------------- real gunicorn
def worker_of(response) -> str:
    return response.headers["X-Request-Id"][:16]  # a generated id starts with its process's prefix


def from_the_other_worker(url: str, path: str, first: str, headers=None):
    """The answer to ``path`` on fresh connections until one is served by a worker other than ``first``."""
    for _ in range(200):
        with recording_session() as http:
            response = http.get(url + path, headers=headers or {}, timeout=10)
        if worker_of(response) != first:
            return response
    pytest.fail("every new connection went to the same worker")


def test_under_gunicorn_a_breaker_opened_in_one_worker_leaves_the_other_serving(gunicorn, sim):
    """Each worker has its own breaker: the one that saw the failure fails fast, the other still fetches."""
    server = gunicorn(workers=2, GATEWAY_BREAKER_FAILURES="1", ZIPTEAMS_RETRIES="0", GATEWAY_BREAKER_COOLDOWN="60")
    sim.fault(status=500, count=1)
    with recording_session() as http:  # one keep-alive connection: one worker
        failed = http.get(server.url + "/", headers=user_headers("alice@acme.example"), timeout=10)
        assert failed.status_code == 502
        ready = http.get(server.url + "/readyz", timeout=10)
        refused = http.get(server.url + "/", headers=user_headers("bob@acme.example"), timeout=10)
    assert worker_of(ready) == worker_of(refused) == worker_of(failed)
    assert ready.status_code == 200 and ready.json()["zipteams"] == {"breaker": "open"}
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 1
    other = from_the_other_worker(server.url, "/readyz", worker_of(failed))
    assert other.status_code == 200 and other.json()["zipteams"] == {"breaker": "closed"}
    served = from_the_other_worker(server.url, "/", worker_of(failed), user_headers("bob@acme.example"))
    assert served.status_code == 200
    assert sim.stats()["token_requests"] == 2
    with recording_session() as http:  # whichever worker answers: the instance shows its worst breaker
        metrics = http.get(server.url + "/metrics", timeout=10).text
    assert re.search(r"^gateway_breaker_state 2\.0$", metrics, flags=re.MULTILINE), metrics


def test_under_gunicorn_each_worker_spends_only_its_share_of_the_budget(gunicorn, sim, tmp_path):
    rules = tmp_path / "teams.toml"
    rules.write_text(_teams(12))
    server = gunicorn(workers=2, GATEWAY_TENANTS_FILE=str(rules), ZIPTEAMS_MAX_RPM="10")
    with recording_session() as http:  # one keep-alive connection: one worker serves them all
        answers = [http.get(server.url + "/", headers=user_headers(f"user{i}@corp.example"), timeout=10)
                   for i in range(5)]
    busy = {worker_of(r) for r in answers}
    assert len(busy) == 1
    # 10 a minute for 2 workers: 5 each, 4 of them for first tokens (1 kept for refreshes).
    assert [r.status_code for r in answers] == [200] * 4 + [503]
    other = from_the_other_worker(server.url, "/", busy.pop(), user_headers("user9@corp.example"))
    assert other.status_code == 200  # the other worker draws on its own share
    assert sim.stats()["token_requests"] == 5


def test_a_probe_our_own_budget_refuses_waits_a_whole_cool_down_before_the_next(sim, t):
    timers = Timers(t)
    (a,) = probing(*workers(sim, t, count=1, retries=0, failures=1, cooldown=3, per_minute=2,
                            schedule=timers.schedule))
    a("acme", "y")
    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x", refresh=True)  # the second and last slot of the minute: the breaker opens
    timers.run_next()  # the probe is refused by the rate limiter: nothing learned
    assert timers.delays() == [3.1]  # not a round every 0.1 s until the window frees
    assert a.breaker.state == CircuitBreaker.HALF_OPEN and sim.stats()["token_requests"] == 2
