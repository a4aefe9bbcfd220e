"""Scale-out under real gunicorn and a real redis-server: one token for all, Redis optional,
never a 429 from Zipteams, metrics that add up, logs that are all JSON."""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib

from conftest import API_SECRET, JWT_SHAPE, recording_session, start_sim, user_headers

SUBTENANTS = 40


@pytest.fixture(scope="module")
def many_tenants(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "tenants.toml"
    tables = [f'[[subtenant]]\ntenant = "t{i % 3}"\nid = "team-{i}"\nname = "Team {i}"\n'
              f'emails = ["user{i}@corp.example"]\n' for i in range(SUBTENANTS)]
    tables.append('[[subtenant]]\ntenant = "acme"\nid = "sales-us"\nname = "Sales US"\n'
                  'email_domains = ["us.acme.example"]\n')
    path.write_text("\n".join(tables))
    return str(path)


def get(url, email, **kw):
    with recording_session() as http:
        return http.get(url, headers=user_headers(email), timeout=60, **kw)


def herd(server, size: int) -> list[int]:
    """``size`` different users' first visits, all at once; their statuses."""
    barrier = threading.Barrier(size)

    def first_request(i):
        barrier.wait()
        return get(server.url + "/", f"user{i}@us.acme.example").status_code

    with ThreadPoolExecutor(size) as pool:
        return list(pool.map(first_request, range(size)))


def test_four_workers_on_redis_make_one_token_request_for_a_herd(gunicorn, sim, redis_server):
    server = gunicorn(workers=4, threads=8, GATEWAY_CACHE_URL=redis_server.url)
    sim.fault(delay=0.5, count=1)  # the winner's fetch stays in flight while the herd arrives
    assert herd(server, 100) == [200] * 100
    assert sim.stats()["token_requests"] == 1


def test_zipteams_slowed_near_the_deadline_still_gets_one_token_request_from_four_workers(
        gunicorn, sim, redis_server):
    server = gunicorn(workers=4, threads=8, GATEWAY_CACHE_URL=redis_server.url, GATEWAY_EMBED_MODE="proxy",
                      ZIPTEAMS_DEADLINE="6", ZIPTEAMS_TIMEOUT="10")
    sim.fault(delay=5, count=1)  # close to the deadline: the lock must outlive it
    statuses = herd(server, 40)
    # Half of each worker's 8 threads may wait on the slow fetch; the rest are told to retry at
    # once (GATEWAY_THREADS), so they stay free for users whose token is cached.
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 4, statuses
    assert sim.stats()["token_requests"] == 1


def test_redis_stopping_mid_run_loses_no_request_and_its_return_is_picked_up(
        gunicorn, sim, redis_server, many_tenants):
    # A budget large enough that the rate limiter stays out of this test: it is about Redis.
    server = gunicorn(workers=2, threads=8, GATEWAY_CACHE_URL=redis_server.url,
                      GATEWAY_TENANTS_FILE=many_tenants, ZIPTEAMS_MAX_RPM="1000")
    statuses, stop = [], threading.Event()

    def user(n):
        i = n
        while not stop.is_set():
            statuses.append(get(server.url + "/", f"user{i % SUBTENANTS}@corp.example").status_code)
            i += 7

    threads = [threading.Thread(target=user, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    redis_server.stop()
    time.sleep(2.5)
    redis_server.start()
    time.sleep(6.5)  # past the gateway's 5 s pause before it tries Redis again
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # Back in use without a restart: a subtenant nobody has asked for yet lands in Redis.
    assert get(server.url + "/", "someone@us.acme.example").status_code == 200
    keys = redis_lib.Redis.from_url(redis_server.url).keys("*{acme/sales-us}:token")
    assert len(keys) == 1


def test_a_burst_over_40_subtenants_never_provokes_a_429(gunicorn, redis_server, many_tenants):
    limited = start_sim(rate_limit=30)
    try:
        # Zipteams' real limit is unknown, so the auto budget sizes for the rules (2 per team here);
        # a partner who knows the vendor's limit sets it, and the gateway then never provokes a 429.
        env = dict(ZIPTEAMS_API_URL=limited.api_url, ZIPTEAMS_DASHBOARD_URL=limited.dashboard_url,
                   GATEWAY_TENANTS_FILE=many_tenants, GATEWAY_CACHE_URL=redis_server.url, ZIPTEAMS_MAX_RPM="30")
        server = gunicorn(workers=2, threads=16, **env)
        with ThreadPoolExecutor(SUBTENANTS) as pool:
            statuses = list(pool.map(lambda i: get(server.url + "/", f"user{i}@corp.example").status_code,
                                     range(SUBTENANTS)))
        seen = limited.stats()
        assert seen["statuses"].get("429", 0) == 0
        assert seen["token_requests"] <= 30
        assert statuses.count(200) == seen["token_requests"]
        assert set(statuses) <= {200, 503}  # the rest are told to wait, by us
    finally:
        limited.server.stop()


def test_metrics_add_up_across_workers_and_logs_are_json(gunicorn, sim, many_tenants):
    from prometheus_client.parser import text_string_to_metric_families

    server = gunicorn(workers=2, threads=8, GATEWAY_TENANTS_FILE=many_tenants)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda i: get(server.url + "/", f"user{i % 12}@corp.example"), range(60)))
    with recording_session() as http:
        text = http.get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls = sum(s.value for s in families["gateway_zipteams_requests"].samples if s.name.endswith("_total"))
    # Per-process caches (no Redis here): each worker fetches each subtenant at most once.
    assert calls == sim.stats()["token_requests"]
    assert 12 <= calls <= 24
    requests_ = sum(s.value for s in families["gateway_requests"].samples
                    if s.name.endswith("_total") and s.labels["route"] == "embed.index")
    assert requests_ == 60
    lines = server.log.read_text().splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)  # every line, gunicorn's own included
        assert API_SECRET not in line and not JWT_SHAPE.search(line.encode())
        assert {"ts", "level", "logger", "message"} <= set(entry)
    # Fetched while serving a request: on that request's line (tests/test_audit.py).
    assert any(event["event"] == "token_fetched" for line in lines for event in json.loads(line).get("events", ()))
    assert not any(json.loads(line).get("event") in ("login", "embed_viewed", "token_fetched") for line in lines)


def test_metrics_are_hidden_outside_the_allow_list(gunicorn):
    server = gunicorn(workers=1, GATEWAY_METRICS_ALLOW="10.9.9.0/24")
    with recording_session() as http:
        assert http.get(server.url + "/metrics").status_code == 404
