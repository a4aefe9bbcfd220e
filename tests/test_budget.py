"""The token budget and the breaker, one per instance: sized from the rules, shared by the
workers, one background prober, recovery within seconds of a heal, a cap on threads that
wait for Zipteams, and one deadline over the lock wait and the fetch.

Injected clocks and captured timers, no sleeps; two tests under real gunicorn (2 workers).
"""
import threading

import pytest

from conftest import API_KEY, API_SECRET, SECRET_KEY, FakeClock, recording_session, user_headers
from gateway import config
from gateway.tokens.instance import InstanceState
from gateway.tokens.breaker import BreakerOpen, CircuitBreaker
from gateway.tokens.budget import FetchGate, ZipteamsQueueFull, budget_per_minute
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
    """``count`` workers' fetch pipelines on one instance's shared state."""
    instance = InstanceState()
    return [protected(sim, t, instance=instance, pid=101 + i, **kw) for i in range(count)]


def heal(sim):
    sim.http.delete(sim.url + "/_sim/faults", timeout=5).raise_for_status()


def capture(worker, jobs):
    worker.breaker._schedule = lambda delay, job: jobs.append((delay, job))
    worker.breaker.probe = lambda: worker("acme", "probe")


# ------------------------------------------------------------- the breaker
def test_a_breaker_opened_by_one_worker_fails_fast_in_the_other_and_one_probe_closes_it_for_both(sim, t):
    a, b = workers(sim, t, retries=0, failures=2, cooldown=3)
    sim.fault(status=500, count=2)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x")
    with pytest.raises(ZipteamsServerError):
        b("acme", "y")  # the second failure in a row for the instance, whichever worker saw it
    assert a.breaker.state == b.breaker.state == CircuitBreaker.OPEN
    with pytest.raises(BreakerOpen):
        a("acme", "z")
    assert sim.stats()["token_requests"] == 2
    t.wall.advance(3)
    assert b("acme", "z").subtenant == "z"  # b's request is the probe
    assert a.breaker.state == CircuitBreaker.CLOSED and a("acme", "w").subtenant == "w"


def test_a_misconfigured_subtenant_in_one_worker_opens_no_breaker_for_the_others(sim, t):
    a, b = workers(sim, t, retries=0, failures=1)
    sim.fault(status=400, count=3)
    for _ in range(3):
        with pytest.raises(ZipteamsBadRequest):
            a("acme", "misconfigured")
    assert b.breaker.state == CircuitBreaker.CLOSED and b("acme", "sales-us").subtenant == "sales-us"


def test_one_worker_probes_in_the_background_and_another_takes_over_when_it_dies(sim, t):
    a, b = workers(sim, t, retries=0, failures=1, cooldown=3)
    jobs_a, jobs_b = [], []
    capture(a, jobs_a)
    capture(b, jobs_b)
    sim.fault(status=500, count=100)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x")  # a opens the breaker and becomes the instance's prober
    assert [d for d, _ in jobs_a] == [3.1]
    with pytest.raises(BreakerOpen):
        b("acme", "y")  # b sees it open, and a live prober: b starts none
    assert jobs_b == []
    t.wall.advance(3.1)
    jobs_a.pop()[1]()  # a's round: the probe fails, the next round is a cool-down away
    assert [d for d, _ in jobs_a] == [3.1] and sim.stats()["token_requests"] == 2
    orphan = jobs_a.pop()  # a is killed: its timer never fires, its heartbeat goes stale
    t.wall.advance(40)
    with pytest.raises(ZipteamsServerError):
        b("acme", "y")  # a user's request is the probe after the cool-down; it fails
    assert len(jobs_b) == 1  # and b took the prober's role over
    orphan[1]()  # a round of the old prober that was already on its way steps aside
    assert jobs_a == [] and sim.stats()["token_requests"] == 3
    heal(sim)
    t.wall.advance(3.1)
    jobs_b.pop()[1]()
    assert a.breaker.state == CircuitBreaker.CLOSED and jobs_b == []  # closed: the rounds stop


def test_a_probe_slot_whose_holder_died_is_freed_when_its_lease_ends(sim, t):
    a, b = workers(sim, t, retries=0, failures=1, cooldown=3)
    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x")
    t.wall.advance(3)
    assert a.breaker.before() is True  # a takes the probe slot, then is killed before it reports
    with pytest.raises(BreakerOpen, match="probe in flight"):
        b("acme", "y")
    t.wall.advance(25)  # the lease: the longest a probe can take
    assert b("acme", "y").subtenant == "y"
    assert a.breaker.state == CircuitBreaker.CLOSED


def test_at_the_defaults_cold_teams_are_served_within_seconds_of_a_40_s_outage_healing(sim, t):
    """Probes every cool-down (3 s) while open, counted in the budget, and still room for
    every team's first token in both workers once Zipteams is back."""
    teams, procs = 30, 2
    cooldown = float(DEFAULT["GATEWAY_BREAKER_COOLDOWN"])
    per_minute = budget_per_minute(DEFAULT["ZIPTEAMS_MAX_RPM"], teams=teams, processes=procs, cooldown=cooldown)
    a, b = workers(sim, t, per_minute=per_minute, cooldown=cooldown, retries=int(DEFAULT["ZIPTEAMS_RETRIES"]),
                   failures=int(DEFAULT["GATEWAY_BREAKER_FAILURES"]))
    jobs = []
    capture(a, jobs)
    capture(b, jobs)
    sim.fault(status=500, count=100000)
    outage_began = t.wall.now
    while a.breaker.state == CircuitBreaker.CLOSED:
        with pytest.raises(ZipteamsServerError):
            (a, b)[len(t.slept) % 2]("acme", "cold")
    while t.wall.now - outage_began < 40:  # the outage goes on; the prober's rounds run on time
        delay, job = jobs.pop()
        t.wall.advance(delay)
        job()
        with pytest.raises(BreakerOpen):
            b("acme", "cold")  # users fail fast meanwhile
    assert len(jobs) == 1
    heal(sim)
    healed = t.wall.now
    delay, job = jobs.pop()
    t.wall.advance(delay)
    job()
    assert a.breaker.state == CircuitBreaker.CLOSED and t.wall.now - healed <= 3.2
    slept = len(t.slept)
    for worker in (a, b):  # every team's first token, in each worker: nothing waits or is refused
        for i in range(teams):
            assert worker("acme", f"team-{i}").subtenant == f"team-{i}"
    assert len(t.slept) == slept


# ---------------------------------------------------------------- the budget
def test_the_auto_budget_is_sized_from_the_teams_and_a_number_wins():
    assert DEFAULT["ZIPTEAMS_MAX_RPM"] == "auto"
    # A first token and a renewal per team and fetching process, and a probe per 3 s cool-down.
    assert budget_per_minute("auto", teams=30, processes=2, cooldown=3) == 140
    assert budget_per_minute("auto", teams=30, processes=1, cooldown=3) == 80  # Redis: one fetch for all
    assert budget_per_minute("auto", teams=1, processes=2, cooldown=3) == 30  # never below 30
    assert budget_per_minute(25, teams=30, processes=2, cooldown=3) == 25


def test_a_cold_start_at_the_auto_budget_warms_every_team_in_both_workers_and_keeps_their_renewals(sim, t):
    """The old default (30, split per worker: 12 first tokens a minute each) took 3 minutes here."""
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
    assert auto.extensions["limiter"].per_minute == 2 * 3 * 2 + 20
    rules.write_text(_teams(40))
    ticks.advance(2)
    assert auto.extensions["limiter"].per_minute == 2 * 40 * 2 + 20
    assert fixed.extensions["limiter"].per_minute == 25


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


def test_under_gunicorn_a_breaker_opened_in_one_worker_is_open_in_the_other(gunicorn, sim):
    server = gunicorn(workers=2, GATEWAY_BREAKER_FAILURES="1", ZIPTEAMS_RETRIES="0", GATEWAY_BREAKER_COOLDOWN="60")
    sim.fault(status=500, count=1)
    with recording_session() as http:
        failed = http.get(server.url + "/", headers=user_headers("alice@acme.example"), timeout=10)
    assert failed.status_code == 502
    ready = from_the_other_worker(server.url, "/readyz", worker_of(failed))
    assert ready.status_code == 200 and ready.json()["zipteams"] == {"breaker": "open"}
    refused = from_the_other_worker(server.url, "/", worker_of(failed), user_headers("bob@acme.example"))
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 1
    assert sim.stats()["token_requests"] == 1


def test_under_gunicorn_one_worker_may_use_the_whole_instance_budget(gunicorn, sim, tmp_path):
    rules = tmp_path / "teams.toml"
    rules.write_text(_teams(12))
    server = gunicorn(workers=2, GATEWAY_TENANTS_FILE=str(rules), ZIPTEAMS_MAX_RPM="10")
    with recording_session() as http:  # one keep-alive connection: one worker serves them all
        answers = [http.get(server.url + "/", headers=user_headers(f"user{i}@corp.example"), timeout=10)
                   for i in range(9)]
    busy = {worker_of(r) for r in answers}
    assert len(busy) == 1
    # 8 first tokens of the 10 a minute (2 kept for refreshes), all by one worker; then the budget is spent.
    assert [r.status_code for r in answers] == [200] * 8 + [503]
    other = from_the_other_worker(server.url, "/", busy.pop(), user_headers("user9@corp.example"))
    assert other.status_code == 503  # the other worker draws on the same, spent budget
    assert sim.stats()["token_requests"] == 8


def test_a_probe_our_own_budget_refuses_waits_a_whole_cool_down_before_the_next(sim, t):
    (a,) = workers(sim, t, count=1, retries=0, failures=1, cooldown=3, per_minute=2)
    jobs = []
    capture(a, jobs)
    a("acme", "y")
    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        a("acme", "x", refresh=True)  # the second and last slot of the minute: the breaker opens
    t.wall.advance(jobs[-1][0])
    jobs.pop()[1]()  # the probe is refused by the rate limiter: nothing learned
    assert [d for d, _ in jobs] == [3.1]  # not a round every 0.1 s until the window frees
    assert a.breaker.state == CircuitBreaker.HALF_OPEN and sim.stats()["token_requests"] == 2
