"""Protections toward Zipteams: breaker, rate limit, 429 back-off, retries, shared single fetch."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import API_KEY, API_SECRET, SECRET_KEY, FakeClock, start_sim, user_headers
from gateway.tokens.breaker import BreakerOpen, CircuitBreaker
from gateway.tokens.budget import RateLimiter, ZipteamsThrottled
from gateway.tokens.protection import ProtectedFetch, SharedLoader
from gateway.shared import Shared
from gateway.tokens.cache import TokenCache, serve_window
from gateway.tokens.client import ZipteamsClient, ZipteamsForbidden, ZipteamsRateLimited, ZipteamsServerError


class FakeTime:
    """One fake clock for wall time, monotonic time and sleep."""

    def __init__(self):
        self.wall = FakeClock()
        self.slept = []

    def monotonic(self):
        return self.wall.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.wall.advance(seconds)


@pytest.fixture
def t():
    return FakeTime()


def protected(sim, t, *, retries=2, per_minute=1000, shared=None, failures=3, cooldown=30, name="p", workers=1,
              schedule=None):
    """One worker process's fetch pipeline: its own breaker, and its own share of ``per_minute``
    (one of ``workers``) unless ``shared`` answers. ``schedule`` captures the breaker's rounds."""
    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=2)
    breaker = CircuitBreaker(failures, cooldown, clock=t.monotonic, schedule=schedule)
    limiter = RateLimiter(per_minute, shared=shared, name=name, workers=workers, clock=t.wall)
    return ProtectedFetch(client, limiter=limiter, breaker=breaker, retries=retries, deadline=20,
                          clock=t.wall, monotonic=t.monotonic, sleep=t.sleep)


# ------------------------------------------------------------------ retries
def test_5xx_is_retried_with_growing_jittered_backoff(sim, t):
    fetch = protected(sim, t, retries=2)
    sim.fault(status=500, count=2)
    assert fetch("acme", "sales-us").subtenant == "sales-us"
    assert sim.stats()["token_requests"] == 3
    first, second = t.slept
    assert 0.1 <= first <= 0.3 and 0.2 <= second <= 0.6


def test_retries_stop_at_their_bound(sim, t):
    fetch = protected(sim, t, retries=2)
    sim.fault(status=500, count=5)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")
    assert sim.stats()["token_requests"] == 3


def test_4xx_is_not_retried(sim, t):
    fetch = protected(sim, t)
    sim.fault(status=403, count=1)
    with pytest.raises(ZipteamsForbidden):
        fetch("acme", "sales-us")
    assert sim.stats()["token_requests"] == 1 and t.slept == []


# ------------------------------------------------------------------ breaker
def test_breaker_opens_fails_fast_then_probes_once(sim, t):
    fetch = protected(sim, t, retries=0, failures=3, cooldown=30)
    sim.fault(status=500, count=3)
    for _ in range(3):
        with pytest.raises(ZipteamsServerError):
            fetch("acme", "sales-us")
    assert fetch.breaker.state == CircuitBreaker.OPEN
    with pytest.raises(BreakerOpen) as info:
        fetch("acme", "sales-us")
    assert info.value.status_code == 503 and info.value.retry_after == 30
    assert sim.stats()["token_requests"] == 3  # failing fast: nothing sent
    t.wall.advance(30)
    assert fetch("acme", "sales-us").subtenant == "sales-us"  # the probe
    assert fetch.breaker.state == CircuitBreaker.CLOSED


def test_a_failed_probe_opens_the_breaker_again(sim, t):
    fetch = protected(sim, t, retries=0, failures=1, cooldown=10)
    sim.fault(status=500, count=2)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")
    t.wall.advance(10)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")
    with pytest.raises(BreakerOpen):
        fetch("acme", "sales-us")


def test_cached_tokens_are_served_while_the_breaker_is_open(make_app, sim):
    client = make_app(GATEWAY_BREAKER_FAILURES="1", ZIPTEAMS_RETRIES="0").test_client()
    alice = user_headers("alice@acme.example")
    assert client.get("/", headers=alice).status_code == 200
    sim.fault(status=500, count=1)
    assert client.get("/", headers=user_headers("bob@acme.example")).status_code == 502
    # Ready all the same: this instance serves every cached user through the vendor's outage.
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["zipteams"] == {"breaker": "open"}
    assert client.get("/", headers=user_headers("bob@acme.example")).status_code == 503  # fast fail
    assert client.get("/", headers=alice).status_code == 200  # cached: served as usual


def test_an_open_breaker_is_closed_by_a_background_probe_without_user_traffic(sim, t):
    jobs = []
    fetch = protected(sim, t, retries=0, failures=1, cooldown=10, schedule=lambda delay, job: jobs.append((delay, job)))
    fetch.breaker.probe = lambda: fetch("acme", "sales-us")
    sim.fault(status=500, count=2)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")
    assert fetch.breaker.state == CircuitBreaker.OPEN and [d for d, _ in jobs] == [10.1]
    t.wall.advance(10.1)
    jobs.pop()[1]()  # the probe fails (Zipteams still down): open again, next probe scheduled
    assert fetch.breaker.state == CircuitBreaker.OPEN and len(jobs) == 1
    t.wall.advance(10.1)
    jobs.pop()[1]()  # Zipteams is back: closed, with no user request in between
    assert fetch.breaker.state == CircuitBreaker.CLOSED and jobs == []
    assert sim.stats()["token_requests"] == 3


def test_the_app_closes_its_breaker_by_itself_after_an_outage(make_app, sim):
    # BREAKER_SCHEDULE=None: the breaker's own timer thread, not the suite's no-op.
    client = make_app(GATEWAY_BREAKER_FAILURES="1", GATEWAY_BREAKER_COOLDOWN="0.5", ZIPTEAMS_RETRIES="0",
                      BREAKER_SCHEDULE=None).test_client()
    sim.fault(status=500, count=1)
    assert client.get("/", headers=user_headers("bob@acme.example")).status_code == 502
    assert client.get("/readyz").get_json()["zipteams"] == {"breaker": "open"}
    deadline = time.monotonic() + 10
    while client.get("/readyz").get_json()["zipteams"]["breaker"] != "closed" and time.monotonic() < deadline:
        time.sleep(0.1)  # a real timer: nothing here asks for a token
    assert client.get("/readyz").get_json()["zipteams"] == {"breaker": "closed"}
    assert sim.stats()["token_requests"] == 2  # the user's failed one and the probe


@pytest.mark.parametrize("fault, error", [
    ({"status": 400}, "ZipteamsBadRequest"), ({"status": 403}, "ZipteamsForbidden"),
    ({"malformed": "wrong-subtenant"}, "ZipteamsInvalidToken")])
def test_configuration_errors_never_open_the_breaker(sim, t, fault, error):
    from gateway.tokens import client as zipteams

    fetch = protected(sim, t, retries=0, failures=1, cooldown=30)
    sim.fault(count=3, **fault)
    for _ in range(3):
        with pytest.raises(getattr(zipteams, error)):
            fetch("acme", "misconfigured")
    assert fetch.breaker.state == CircuitBreaker.CLOSED
    assert fetch("acme", "sales-us").subtenant == "sales-us"  # every other team is served


def test_the_half_open_probe_slot_is_freed_whatever_the_probe_raised(sim, t, monkeypatch):
    fetch = protected(sim, t, retries=0, failures=1, cooldown=10)
    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")
    t.wall.advance(10)

    def boom(*args, **kwargs):
        raise RuntimeError("a bug in the client")

    monkeypatch.setattr(fetch.client, "fetch_token", boom)
    with pytest.raises(RuntimeError):
        fetch("acme", "sales-us")  # the probe, gone wrong in an unexpected way
    monkeypatch.undo()
    assert fetch("acme", "sales-us").subtenant == "sales-us"  # not "probe in flight" for good
    assert fetch.breaker.state == CircuitBreaker.CLOSED


# ------------------------------------------------------------ rate limiting
def test_local_rate_limit_refuses_before_zipteams_would(sim, t):
    fetch = protected(sim, t, per_minute=3)
    for sub in ("a", "b"):
        fetch("acme", sub)
    fetch("acme", "c", refresh=True)  # the last slot of three is kept for refreshes
    with pytest.raises(ZipteamsThrottled) as info:
        fetch("acme", "d")
    assert info.value.status_code == 503 and 1 <= info.value.retry_after <= 60
    assert sim.stats()["token_requests"] == 3
    t.wall.advance(61)
    assert fetch("acme", "d").subtenant == "d"


def test_a_burst_of_cold_requests_never_takes_the_share_kept_for_refreshes(sim, t):
    fetch = protected(sim, t, per_minute=10)
    for sub in "abcdefgh":  # 8 of 10: the other 2 are kept for refreshes of tokens in use
        fetch("acme", sub)
    with pytest.raises(ZipteamsThrottled):
        fetch("acme", "cold")
    assert fetch("acme", "a", refresh=True).subtenant == "a"
    assert fetch("acme", "b", refresh=True).subtenant == "b"
    with pytest.raises(ZipteamsThrottled):
        fetch("acme", "c", refresh=True)  # the whole budget is spent now
    assert sim.stats()["token_requests"] == 10


def test_the_refresh_share_is_kept_in_the_shared_window_too(sim, t, redis_server):
    shared = Shared(redis_server.url, SECRET_KEY, namespace="reserve", clock=t.wall)
    fetch = protected(sim, t, per_minute=5, shared=shared, name="reserve")
    for sub in "abcd":
        fetch("acme", sub)
    with pytest.raises(ZipteamsThrottled):
        fetch("acme", "cold")
    assert fetch("acme", "a", refresh=True).subtenant == "a"


def test_without_redis_each_worker_keeps_its_own_share_of_the_budget(sim, t):
    """10 a minute for 2 workers: 5 each, of which 4 may go to first tokens (a fifth kept for refreshes)."""
    busy, idle = (protected(sim, t, per_minute=10, workers=2) for _ in range(2))
    assert busy.limiter.share == 5
    for sub in "abcd":
        busy("acme", sub)
    with pytest.raises(ZipteamsThrottled):
        busy("acme", "cold")  # this worker's first tokens are spent...
    for sub in "abcd":
        idle("acme", sub)  # ...while the other still has its own share
    busy("acme", "a", refresh=True)
    with pytest.raises(ZipteamsThrottled):
        busy("acme", "b", refresh=True)  # 5 of 5: nothing left in this worker's minute
    assert sim.stats()["token_requests"] == 9  # never more than 10 in the minute, both together
    t.wall.advance(60)
    assert busy("acme", "cold").subtenant == "cold"  # the minute has passed


def test_the_workers_shares_add_up_to_at_most_the_budget_and_each_gets_at_least_one():
    assert [RateLimiter(10, shared=None, name="p", workers=w).share for w in (1, 2, 3, 4)] == [10, 5, 3, 2]
    assert RateLimiter(3, shared=None, name="p", workers=4).share == 1  # never a worker with none


def test_while_redis_does_not_answer_each_worker_falls_back_to_its_share(sim, t):
    down = Shared("redis://127.0.0.1:1/0", SECRET_KEY, namespace="down", clock=t.wall)
    fetch = protected(sim, t, per_minute=10, workers=2, shared=down)
    for sub in "abcd":
        fetch("acme", sub)
    with pytest.raises(ZipteamsThrottled):
        fetch("acme", "cold")  # 4 first tokens of this worker's 5, not 8 of the instance's 10
    assert sim.stats()["token_requests"] == 4


def test_a_429_stops_token_requests_for_the_wait_it_names(sim, t):
    fetch = protected(sim, t)
    sim.fault(status=429, message="Rate limit exceeded. Try again in 20 seconds.", count=1)
    with pytest.raises(ZipteamsRateLimited):
        fetch("acme", "a")
    with pytest.raises(ZipteamsThrottled) as info:
        fetch("acme", "b")
    assert info.value.retry_after == 20
    assert sim.stats()["token_requests"] == 1
    t.wall.advance(20)
    assert fetch("acme", "b").subtenant == "b"


def test_without_redis_a_429_stops_only_the_worker_that_got_it(sim, t):
    got_it, other = protected(sim, t), protected(sim, t)
    sim.fault(status=429, message="Rate limit exceeded. Try again in 20 seconds.", count=1)
    with pytest.raises(ZipteamsRateLimited):
        got_it("acme", "a")
    with pytest.raises(ZipteamsThrottled):
        got_it("acme", "b")
    assert other("acme", "b").subtenant == "b"


def test_a_429_back_off_is_shared_through_redis(sim, t, redis_server):
    shared_a = Shared(redis_server.url, SECRET_KEY, namespace="x", clock=t.wall)
    shared_b = Shared(redis_server.url, SECRET_KEY, namespace="x", clock=t.wall)
    a = protected(sim, t, shared=shared_a)
    b = protected(sim, t, shared=shared_b)
    sim.fault(status=429, count=1)
    with pytest.raises(ZipteamsRateLimited):
        a("acme", "a")
    with pytest.raises(ZipteamsThrottled):
        b("acme", "b")
    assert sim.stats()["token_requests"] == 1


# ----------------------------------------------------- shared single fetch
def test_processes_sharing_redis_fetch_each_token_once(redis_server):
    sim = start_sim()
    try:
        loaders = []
        for _ in range(4):  # four "processes", each with its own cache and connections
            client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5)
            shared = Shared(redis_server.url, SECRET_KEY, namespace="p")
            loader = SharedLoader(lambda te, st, c=client, **_: c.fetch_token(te, st), shared,
                                  margin=lambda tok: serve_window(tok, FakeClock().now, 60)[0])
            loaders.append(TokenCache(loader, margin=60))
        sim.fault(delay=0.5, count=1)
        barrier = threading.Barrier(40)

        def first_request(i):
            barrier.wait()
            return loaders[i % 4].get("acme", "sales-us").value

        with ThreadPoolExecutor(40) as pool:
            values = set(pool.map(first_request, range(40)))
        assert len(values) == 1
        assert sim.stats()["token_requests"] == 1
    finally:
        sim.server.stop()


def test_shared_refresh_is_done_once(redis_server):
    clock = FakeClock()
    sim = start_sim(clock=clock, token_ttl=1000)
    try:
        caches = []
        for _ in range(3):
            client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5, clock=clock)
            shared = Shared(redis_server.url, SECRET_KEY, namespace="p", clock=clock)
            loader = SharedLoader(lambda te, st, c=client, **_: c.fetch_token(te, st), shared,
                                  margin=lambda tok: serve_window(tok, clock(), 60)[0], clock=clock)
            caches.append(TokenCache(loader, margin=60, clock=clock, spawn=lambda job: job()))
        first = {c.get("acme", "s").value for c in caches}
        assert len(first) == 1 and sim.stats()["token_requests"] == 1
        clock.advance(0.75 * 940 + 1)
        for c in caches:
            c.get("acme", "s")  # each triggers its (inline) refresh
        assert sim.stats()["token_requests"] == 2
        assert len({c.peek("acme", "s").value for c in caches}) == 1
    finally:
        sim.server.stop()


def test_a_waiter_never_fetches_beside_a_live_lock_holder_and_gives_up_at_the_deadline(redis_server):
    """The old lock expired after 15 s while a 20 s deadline still let its holder fetch: the
    waiters gave up at 16 s and each fetched for itself, exactly when Zipteams was slow."""
    from gateway.tokens.client import ZipteamsTimeout

    holder = Shared(redis_server.url, SECRET_KEY, namespace="p")
    assert holder.acquire("acme", "slow")  # a fetch in flight elsewhere (renewed while it runs), deadline 20
    monotonic = FakeClock(start=0)
    fetches = []
    waiter = SharedLoader(lambda te, st, **_: fetches.append(st), Shared(redis_server.url, SECRET_KEY, namespace="p"),
                          margin=lambda tok: 0, deadline=20, monotonic=monotonic,
                          sleep=lambda s: monotonic.advance(1.0))
    with pytest.raises(ZipteamsTimeout):
        waiter("acme", "slow")
    assert fetches == []  # waited (past the old 16 s) without a second fetch
    assert 20 <= monotonic.now <= 22


def test_each_attempt_is_capped_by_the_time_left_to_the_deadline(sim, t):
    from gateway.tokens.client import ZipteamsTimeout

    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=10)
    fetch = ProtectedFetch(client, limiter=RateLimiter(100, shared=None, name="p"),
                           breaker=CircuitBreaker(5, 30), retries=0, deadline=1.0)
    sim.fault(delay=3, count=1)
    started = time.monotonic()
    with pytest.raises(ZipteamsTimeout):
        fetch("acme", "sales-us")
    assert time.monotonic() - started < 2.0  # not the client's 10 s read time-out


def test_without_redis_each_process_fetches_for_itself(sim):
    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5)
    shared = Shared("redis://127.0.0.1:1/0", SECRET_KEY, namespace="p")
    loader = SharedLoader(lambda te, st, **_: client.fetch_token(te, st), shared,
                          margin=lambda tok: serve_window(tok, FakeClock().now, 60)[0])
    assert loader("acme", "s").subtenant == "s"
    assert sim.stats()["token_requests"] == 1


def test_the_half_open_probe_is_not_retried(sim, t):
    fetch = protected(sim, t, retries=2, failures=1, cooldown=10)
    sim.fault(status=500, count=10)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")  # three attempts, then open
    t.wall.advance(10)
    with pytest.raises(ZipteamsServerError):
        fetch("acme", "sales-us")  # the probe: one attempt
    assert sim.stats()["token_requests"] == 4
