"""The token cache: lifetimes from the JWT, single-flight, refresh-ahead. No sleeps."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import API_KEY, API_SECRET, FakeClock, start_sim
from gateway.tokens.cache import TokenCache
from gateway.tokens.client import ZipteamsClient, ZipteamsServerError


def direct(client):
    """The cache's fetch signature, straight to the client (no shared tier)."""
    return lambda tenant, subtenant, stale=None: client.fetch_token(tenant, subtenant)


class Deferred:
    """Collects background refreshes so a test runs them when it chooses."""

    def __init__(self):
        self.jobs = []

    def __call__(self, job):
        self.jobs.append(job)

    def run(self):
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


@pytest.fixture
def world():
    """A stand-in and a cache sharing one fake clock, tokens living 1000 s."""
    clock = FakeClock()
    sim = start_sim(clock=clock, token_ttl=1000)
    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5, clock=clock)
    spawn = Deferred()
    cache = TokenCache(direct(client), margin=60, clock=clock, spawn=spawn)
    yield sim, cache, clock, spawn
    sim.server.stop()


def test_second_get_is_a_hit(world):
    sim, cache, clock, _ = world
    first = cache.get("acme", "sales-us")
    assert cache.get("acme", "sales-us") is first
    assert sim.stats()["token_requests"] == 1
    assert cache.stats["hits"] == 1 and cache.stats["misses"] == 1


def test_keys_are_separate(world):
    sim, cache, _, _ = world
    a = cache.get("acme", "sales-us")
    b = cache.get("acme", "sales-emea")
    assert a.value != b.value
    assert sim.stats()["by_subtenant"] == {"acme/sales-us": 1, "acme/sales-emea": 1}


def test_token_is_never_served_within_the_margin(world):
    sim, cache, clock, spawn = world
    first = cache.get("acme", "sales-us")
    # Lifetime 1000 s, margin min(60, 10% of 1000) = 60: unusable from 940 s on.
    clock.advance(940)
    spawn.jobs.clear()  # do not let a refresh run; the entry must expire on its own
    second = cache.get("acme", "sales-us")
    assert second.value != first.value
    assert sim.stats()["token_requests"] == 2


def test_margin_is_capped_for_short_tokens():
    clock = FakeClock()
    sim = start_sim(clock=clock, token_ttl=60)
    try:
        client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5, clock=clock)
        cache = TokenCache(direct(client), margin=60, clock=clock, spawn=lambda job: None)
        token = cache.get("a", "b")
        clock.advance(53)  # 60 s token, margin capped at 6 s: still served at 53 s
        assert cache.get("a", "b") is token
        clock.advance(1)
        assert cache.get("a", "b") is not token
    finally:
        sim.server.stop()


def test_lifetime_is_capped_at_24_hours():
    clock = FakeClock()
    sim = start_sim(clock=clock, token_ttl=7 * 86400)
    try:
        client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5, clock=clock)
        cache = TokenCache(direct(client), margin=60, clock=clock, spawn=lambda job: None)
        token = cache.get("a", "b")
        clock.advance(86400)
        assert cache.get("a", "b") is not token
    finally:
        sim.server.stop()


def test_refresh_ahead_serves_the_old_token_without_waiting(world):
    sim, cache, clock, spawn = world
    first = cache.get("acme", "sales-us")
    clock.advance(0.75 * 940 + 1)
    # The user gets the cached token at once; the refresh is queued, not awaited.
    assert cache.get("acme", "sales-us") is first
    assert len(spawn.jobs) == 1 and sim.stats()["token_requests"] == 1
    # A second request meanwhile does not queue another refresh.
    assert cache.get("acme", "sales-us") is first
    assert len(spawn.jobs) == 1
    spawn.run()
    assert sim.stats()["token_requests"] == 2
    assert cache.get("acme", "sales-us").value != first.value
    assert cache.stats["refreshes"] == 1


def test_failed_refresh_keeps_serving_and_retries_later(world):
    sim, cache, clock, spawn = world
    first = cache.get("acme", "sales-us")
    clock.advance(0.75 * 940 + 1)
    cache.get("acme", "sales-us")
    sim.fault(status=500, count=1)
    spawn.run()
    assert cache.stats["refresh_failures"] == 1
    assert cache.get("acme", "sales-us") is first
    assert spawn.jobs == []  # no new attempt until the retry delay passes
    clock.advance(31)
    assert cache.get("acme", "sales-us") is first
    spawn.run()
    assert cache.get("acme", "sales-us").value != first.value


def test_a_refresh_that_brings_the_same_token_waits_before_asking_again(world):
    """The spec's token has no jti: Zipteams may answer a refresh with the token we have."""
    sim, cache, clock, spawn = world
    first = cache.get("acme", "sales-us")
    clock.advance(0.75 * 940 + 1)
    cache.get("acme", "sales-us")
    sim.fault(malformed="same-token", count=1)
    spawn.run()
    assert sim.stats()["token_requests"] == 2
    for _ in range(20):  # every request used to start another refresh from here on
        assert cache.get("acme", "sales-us").value == first.value
    assert spawn.jobs == []
    clock.advance(31)
    cache.get("acme", "sales-us")
    spawn.run()
    assert sim.stats()["token_requests"] == 3
    assert cache.get("acme", "sales-us").value != first.value


def test_concurrent_misses_make_one_upstream_call(world):
    sim, cache, _, _ = world
    sim.fault(delay=0.5, count=1)  # hold the first request open so the others pile up
    barrier = threading.Barrier(20)

    def get(_):
        barrier.wait()
        return cache.get("acme", "sales-us").value

    with ThreadPoolExecutor(20) as pool:
        values = set(pool.map(get, range(20)))
    assert len(values) == 1
    assert sim.stats()["token_requests"] == 1


def test_a_slow_key_does_not_block_other_keys(world):
    sim, cache, _, _ = world
    sim.fault(delay=2, count=1)
    slow = threading.Thread(target=cache.get, args=("acme", "slow"))
    slow.start()
    for _ in range(200):
        if sim.stats()["token_requests"]:
            break
        time.sleep(0.01)
    # Answered while the slow fetch is still in flight.
    fast = ThreadPoolExecutor(1).submit(cache.get, "acme", "fast")
    assert fast.result(timeout=1.5).subtenant == "fast"
    assert slow.is_alive()
    slow.join()


def test_failure_reaches_every_waiter_and_is_not_cached(world):
    sim, cache, _, _ = world
    sim.fault(status=500, count=1)
    with pytest.raises(ZipteamsServerError):
        cache.get("acme", "sales-us")
    assert len(cache) == 0
    assert cache.get("acme", "sales-us").subtenant == "sales-us"


def test_evict_only_the_given_token(world):
    sim, cache, clock, _ = world
    first = cache.get("acme", "sales-us")
    clock.advance(1)
    cache.evict("acme", "sales-us")
    second = cache.get("acme", "sales-us")
    cache.evict("acme", "sales-us", first)  # stale: the newer token stays
    assert cache.peek("acme", "sales-us") is second


def test_threads_waiting_for_zipteams_are_capped_and_cached_users_keep_being_served(world):
    """A stalled Zipteams used to take every thread: cached users' throughput fell to 11 %."""
    from gateway.tokens.budget import FetchGate, ZipteamsQueueFull

    sim, _, clock, _ = world
    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=5, clock=clock)
    ticks = FakeClock(start=0)
    stalled, inside = threading.Event(), threading.Semaphore(0)

    def fetch(tenant, subtenant, stale=None):
        if subtenant.startswith("cold"):
            inside.release()
            stalled.wait(timeout=30)  # Zipteams stalls for the cold teams
        return client.fetch_token(tenant, subtenant)

    cache = TokenCache(fetch, margin=60, clock=clock, spawn=lambda job: None,
                       gate=FetchGate(2, patience=1.0, monotonic=ticks))
    warm = cache.get("acme", "warm")
    waiting = [threading.Thread(target=cache.get, args=("acme", f"cold-{i}")) for i in range(2)]
    for thread in waiting:
        thread.start()
    inside.acquire()
    inside.acquire()  # two threads (the cap) now wait on Zipteams
    ticks.advance(1.0)
    with pytest.raises(ZipteamsQueueFull) as info:
        cache.get("acme", "cold-2")  # a third: a fast 503, not one more thread held
    assert info.value.status_code == 503 and info.value.retry_after
    assert cache.get("acme", "warm") is warm  # cached users never meet the cap
    stalled.set()
    for thread in waiting:
        thread.join(timeout=10)
    assert cache.get("acme", "cold-2").subtenant == "cold-2"
