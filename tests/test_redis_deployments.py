"""The shared tier on the Redis deployments partners run, each against real redis-server processes:
plain, TLS with an ACL user and a client certificate, a primary and replica behind three
Sentinels, a three-master Cluster, and that Cluster on TLS with an ACL user.

On each, two gateway instances (two apps, each with its own client and local token cache) make
one token request per subtenant for a cold herd of first visits, a logout on one is refused on
the other, and the shared rate window holds across both. With CI=true a missing redis-server
(or one without TLS) fails these tests instead of skipping them.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

import redis_servers as rs
from conftest import SECRET_KEY, FakeClock, user_headers
from gateway.config import SETTINGS, ConfigError, load
from gateway.shared import Shared
from gateway.sharedtier import check_shared_tier

COOKIE = "__Host-zg_session"
HANDOFF_SECRET = "h" * 40
ISS, AUD = "https://app.partner.example", "zipteams-gateway"
HERD = 200  # first visits, half to each instance, half to each of two subtenants
NO_REDIS_SETTINGS = {s.name: "" for s in SETTINGS if s.name.startswith("GATEWAY_REDIS_")}


def _need_redis():
    if rs.REDIS_SERVER is None or rs.REDIS_CLI is None:
        pytest.skip("redis-server and redis-cli not installed (apt-get install redis-server)")


def _deployment(cls, tmp_path_factory):
    _need_redis()
    if cls in (rs.TlsRedis, rs.TlsCluster) and not rs.tls_supported():
        pytest.skip("this redis-server was built without TLS")
    server = cls(tmp_path_factory.mktemp(cls.__name__.lower()))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory):
    yield from _deployment(rs.TlsRedis, tmp_path_factory)


@pytest.fixture(scope="session")
def sentinel_redis(tmp_path_factory):
    yield from _deployment(rs.SentinelSet, tmp_path_factory)


@pytest.fixture(scope="session")
def cluster_redis(tmp_path_factory):
    yield from _deployment(rs.Cluster, tmp_path_factory)


@pytest.fixture(scope="session")
def tls_cluster_redis(tmp_path_factory):
    yield from _deployment(rs.TlsCluster, tmp_path_factory)


class Plain:
    """conftest's redis-server, shaped like the others."""

    def __init__(self, server):
        self.url, self.settings, self.flush = server.url, {}, server.flush


@pytest.fixture(params=["plain", "tls", "sentinel", "cluster", "tls-cluster"])
def deployment(request):
    if request.param == "plain":
        return Plain(request.getfixturevalue("redis_server"))
    server = request.getfixturevalue(f"{request.param.replace('-', '_')}_redis")
    server.flush()
    return server


def gateway_settings(deployment, **more) -> dict:
    return {"GATEWAY_CACHE_URL": deployment.url, **deployment.settings, **more}


def handoff_token():
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 120, "jti": f"j-{time.monotonic_ns()}",
                       "email": "alice@acme.example"}, HANDOFF_SECRET, algorithm="HS256")


def jwt_instances(make_app, deployment, count=2):
    return [make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=HANDOFF_SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                     GATEWAY_HANDOFF_AUDIENCE=AUD, **gateway_settings(deployment)) for _ in range(count)]


def cold_herd(instances, size: int) -> list[int]:
    """``size`` different users' first visits, all at once, spread over ``instances``."""
    barrier = threading.Barrier(size)

    def first_visit(i):
        email = f"user{i}@us.acme.example" if i % 2 else f"user{i}@globex.example"
        client = instances[(i // 2) % len(instances)].test_client()
        barrier.wait()
        return client.get("/", headers=user_headers(email)).status_code

    with ThreadPoolExecutor(size) as pool:
        return list(pool.map(first_visit, range(size)))


# ------------------------------------------------------------------ every deployment
def test_the_check_and_the_start_up_line_name_the_mode_and_the_round_trip(deployment, make_app, caplog):
    config = {**NO_REDIS_SETTINGS, **gateway_settings(deployment)}
    check = check_shared_tier(config)
    assert check.ok, check.problems
    mode = {"redis": "plain", "rediss": "TLS", "redis+sentinel": "Sentinel", "redis+cluster": "Cluster",
            "rediss+cluster": "Cluster (TLS)"}[
        deployment.url.split("://")[0]]
    line = rf"shared tier: {re.escape(mode)} Redis at \S+, round trip \d+\.\d ms"
    assert re.fullmatch(line, check.line), check.line
    with caplog.at_level(logging.INFO, logger="gateway.sharedtier"):
        make_app(**gateway_settings(deployment))
    assert [r.levelno for r in caplog.records if re.fullmatch(line, r.getMessage())] == [logging.INFO]


def test_a_cold_herd_over_two_instances_makes_one_token_request_per_subtenant(make_app, sim, deployment):
    # Every request of the herd runs in a thread of its own here, as on an instance with that many
    # threads: the fetch gate's quick 503 (tests/test_scale.py) is not what this test measures.
    instances = [make_app(GATEWAY_THREADS=str(2 * HERD), **gateway_settings(deployment)) for _ in range(2)]
    sim.fault(delay=1.0, count=2)  # both winners' fetches stay in flight while the herd arrives
    statuses = cold_herd(instances, HERD)
    assert statuses == [200] * HERD, {s: statuses.count(s) for s in set(statuses)}
    assert sim.stats()["token_requests"] == 2  # sales-us and ops, once each, for both instances


def test_a_logout_on_one_instance_is_refused_on_the_other(make_app, deployment):
    first, second = jwt_instances(make_app, deployment)
    client = first.test_client()
    assert client.get("/sso/jwt", query_string={"jwt": handoff_token()}).status_code == 302
    cookie = client.get_cookie(COOKIE).value
    elsewhere = second.test_client()
    elsewhere.set_cookie(COOKIE, cookie)
    assert elsewhere.get("/").status_code == 200  # one session, good on every instance
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    replay = second.test_client()
    replay.set_cookie(COOKIE, cookie)
    assert replay.get("/").status_code == 401


def test_a_hand_off_used_on_one_instance_is_refused_on_the_other(make_app, deployment):
    first, second = jwt_instances(make_app, deployment)
    token = handoff_token()
    assert first.test_client().get("/sso/jwt", query_string={"jwt": token}).status_code == 302
    assert second.test_client().get("/sso/jwt", query_string={"jwt": token}).status_code == 401


def test_the_shared_rate_window_holds_across_instances(deployment):
    a, b = (Shared(deployment.url, SECRET_KEY, namespace="partner-a", settings=deployment.settings)
            for _ in range(2))
    assert [a.admit("zipteams", 3), b.admit("zipteams", 3), a.admit("zipteams", 3)] == [0, 0, 0]
    assert 59 < b.admit("zipteams", 3) <= 60
    assert a.available and b.available


def test_tokens_are_shared_between_instances(deployment):
    a, b = (Shared(deployment.url, SECRET_KEY, namespace="partner-a", settings=deployment.settings)
            for _ in range(2))
    a.put_token("acme", "sales", "t-1", expires_at=FakeClock().now + 60)
    assert b.get_token("acme", "sales") == "t-1"
    held = a.acquire("acme", "sales")
    assert held is not None and b.acquire("acme", "sales") is None
    held.release()


# ------------------------------------------------------------------ what is reported when it is wrong
def test_a_cluster_node_given_as_redis_url_is_a_configuration_error_naming_redis_cluster(
        cluster_redis, make_app, caplog):
    plain = f"redis://127.0.0.1:{cluster_redis.ports[0]}/0"
    check = check_shared_tier({**NO_REDIS_SETTINGS, "GATEWAY_CACHE_URL": plain})
    assert not check.ok
    [problem] = check.problems
    assert problem.startswith(f"GATEWAY_CACHE_URL={plain} ") and "redis+cluster://" in problem
    assert "unavailable" not in problem
    with caplog.at_level(logging.INFO):
        app = make_app(GATEWAY_CACHE_URL=plain)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("redis+cluster://" in m for m in errors), errors
    # At run time a MOVED is a misconfiguration in the log too, never "unavailable".
    caplog.clear()
    shared = app.extensions["shared"]
    for i in range(20):
        shared.put_token("acme", f"team-{i}", "t", expires_at=FakeClock().now + 60)
    lines = [r for r in caplog.records if r.name == "gateway.shared"]
    assert lines and all(r.levelno == logging.ERROR and "misconfigured" in r.getMessage()
                         and "redis+cluster://" in r.getMessage() for r in lines), [r.getMessage() for r in lines]


def test_gateway_check_reports_a_cluster_node_given_as_redis_url_as_a_configuration_error(cluster_redis, sim):
    from test_ops import flask_cli

    plain = f"redis://127.0.0.1:{cluster_redis.ports[0]}/0"
    result = flask_cli(sim, "check", GATEWAY_CACHE_URL=plain)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "shared cache (Redis): FAILED" in line]
    assert len(lines) == 1, result.stdout + result.stderr
    [line] = lines
    assert "redis+cluster://" in line and "unavailable" not in line, line


def test_tls_failures_say_exactly_what_is_wrong(tls_redis):
    good = {**NO_REDIS_SETTINGS, **gateway_settings(tls_redis)}
    cases = {
        "GATEWAY_REDIS_CA_FILE": (dict(good, GATEWAY_REDIS_CA_FILE=tls_redis.certs["wrong-ca"]), "GATEWAY_REDIS_CA_FILE must hold"),
        "ACL": (dict(good, GATEWAY_REDIS_PASSWORD="not-the-password-0123"), "the ACL user was refused"),
        "client certificate": (dict(good, GATEWAY_REDIS_CERT_FILE="", GATEWAY_REDIS_KEY_FILE=""),
                               "set GATEWAY_REDIS_CERT_FILE and GATEWAY_REDIS_KEY_FILE"),
    }
    for name, (config, expected) in cases.items():
        check = check_shared_tier(config)
        assert not check.ok, name
        assert expected in check.problems[0] and check.problems[0].startswith(f"GATEWAY_CACHE_URL={tls_redis.url} (TLS)"), \
            (name, check.problems)
        assert "not-the-password" not in check.line and rs.GATEWAY_PASSWORD not in check.line


def test_a_tls_server_whose_certificate_names_another_host_is_refused(tls_redis):
    # "127.1" reaches 127.0.0.1, which the certificate names; "127.1" it does not name. Any certificate
    # of the trusted CA would otherwise do, for any name (redis-py 5's cluster client checked none).
    url = tls_redis.url.replace("127.0.0.1", "127.1")
    check = check_shared_tier({**NO_REDIS_SETTINGS, **gateway_settings(tls_redis), "GATEWAY_CACHE_URL": url})
    assert not check.ok
    assert "does not name the host in GATEWAY_CACHE_URL" in check.problems[0], check.problems


@pytest.mark.parametrize("wrong", ["sentinel password", "master name", "data password"])
def test_sentinel_failures_say_what_to_check(sentinel_redis, wrong):
    config = {**NO_REDIS_SETTINGS, **gateway_settings(sentinel_redis)}
    if wrong == "sentinel password":
        config["GATEWAY_REDIS_SENTINEL_PASSWORD"] = "not-the-sentinel-pw"
    elif wrong == "master name":
        config["GATEWAY_CACHE_URL"] = sentinel_redis.url.replace(rs.MASTER, "nosuchmaster")
    else:
        config["GATEWAY_REDIS_PASSWORD"] = "not-the-data-pw-0123"
    check = check_shared_tier(config)
    assert not check.ok
    expected = "the ACL user was refused" if wrong == "data password" else "GATEWAY_REDIS_SENTINEL_PASSWORD"
    assert expected in check.problems[0] and "(Sentinel)" in check.problems[0], check.problems
    assert "not-the-" not in check.line


def test_the_acl_user_reaches_only_the_gateways_keys(tls_redis):
    """The ACL in the tests is as narrow as the docs say it may be: keys zg:* only."""
    import redis as redis_lib

    client = redis_lib.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=tls_redis.certs["ca"],
                             ssl_certfile=tls_redis.certs["client-cert"], ssl_keyfile=tls_redis.certs["client-key"],
                             username=rs.GATEWAY_USER, password=rs.GATEWAY_PASSWORD, socket_timeout=5)
    client.set("zg:x", 1)
    with pytest.raises(redis_lib.exceptions.NoPermissionError):
        client.set("other", 1)


def test_the_gauge_says_whether_the_shared_tier_answers(redis_server):
    from gateway.ops import metrics

    def gauge():
        return metrics.REGISTRY.get_sample_value("gateway_shared_tier_healthy", {"mode": "plain"})

    clock = [100.0]
    shared = Shared(redis_server.url, SECRET_KEY, namespace="partner-a", monotonic=lambda: clock[0])
    assert shared.get_token("acme", "sales") is None and gauge() == 1
    redis_server.stop()
    assert shared.get_token("acme", "sales") is None and gauge() == 0
    redis_server.start()
    clock[0] += 6
    assert shared.get_token("acme", "sales") is None and gauge() == 1


@pytest.mark.parametrize("settings, expected", [
    ({"GATEWAY_CACHE_URL": "redis://:pw-in-url-0123@h:6379/0", "GATEWAY_REDIS_PASSWORD": "pw-setting-0123"},
     "GATEWAY_REDIS_PASSWORD and the user-info of GATEWAY_CACHE_URL 'redis://***@h:6379/0' are both set"),
    ({"GATEWAY_CACHE_URL": "redis://h:6379/0", "GATEWAY_REDIS_CA_FILE": "/etc/hostname"},
     "GATEWAY_REDIS_CA_FILE is only for TLS"),
    ({"GATEWAY_CACHE_URL": "rediss://h:6379/0", "GATEWAY_REDIS_CERT_FILE": "/etc/hostname"},
     "GATEWAY_REDIS_CERT_FILE and GATEWAY_REDIS_KEY_FILE go together"),
    ({"GATEWAY_CACHE_URL": "redis+cluster://h:1,h:2", "GATEWAY_REDIS_SENTINEL_PASSWORD": "pw-sentinel-0123"},
     "GATEWAY_REDIS_SENTINEL_PASSWORD is only for redis+sentinel://"),
    ({"GATEWAY_CACHE_URL": "memory://", "GATEWAY_REDIS_PASSWORD": "pw-setting-0123"},
     "GATEWAY_REDIS_PASSWORD is set but GATEWAY_CACHE_URL is memory://"),
    ({"GATEWAY_CACHE_URL": "redis+sentinel://h:1,h:2"}, "must name the master"),
    ({"GATEWAY_CACHE_URL": "redis+cluster://h:1,h/0"}, "needs host:port for every node"),
    ({"GATEWAY_CACHE_URL": "redis+cluster://:pw-in-url-0123@h:1/0"}, "takes no path"),
])
def test_redis_settings_that_contradict_each_other_are_refused_naming_no_secret(settings, expected):
    from conftest import API_KEY, API_SECRET, DATA

    base = {"ZIPTEAMS_API_KEY": API_KEY, "ZIPTEAMS_API_SECRET": API_SECRET, "GATEWAY_SECRET_KEY": SECRET_KEY,
            "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml")}
    with pytest.raises(ConfigError) as info:
        load({**base, **settings})
    assert expected in str(info.value)
    assert "pw-" not in str(info.value)


@pytest.mark.parametrize("url, mode", [
    ("redis://h:6379/0", "plain"), ("unix:///run/redis.sock", "plain"), ("rediss://h:6380/0", "TLS"),
    ("redis+sentinel://a:26379,b:26379/mymaster/2", "Sentinel"), ("redis+cluster://a:7000,b:7001", "Cluster"),
    ("rediss+cluster://a:7000", "Cluster (TLS)")])
def test_every_deployment_has_its_url(url, mode):
    from gateway.redisurl import split_redis_url

    assert split_redis_url(url).mode == mode


# ------------------------------------------------------------------ failover under load
USERS = ("alice@acme.example", "user1@us.acme.example", "user2@globex.example")  # three subtenants


def signed_in_users(instances, count: int):
    """``count`` users signed in by hand-off (on alternating instances), each with a client on
    every instance carrying the same cookie."""
    users = []
    for i in range(count):
        now = int(time.time())
        token = jwt.encode({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 120, "jti": f"load-{i}-{now}",
                            "email": USERS[i % len(USERS)]}, HANDOFF_SECRET, algorithm="HS256")
        first = instances[i % 2].test_client()
        assert first.get("/sso/jwt", query_string={"jwt": token}).status_code == 302
        cookie = first.get_cookie(COOKIE).value
        clients = []
        for app in instances:
            client = app.test_client()
            client.set_cookie(COOKIE, cookie)
            clients.append(client)
        users.append(clients)
    return users


def under_load(users, event, *, settle: float) -> tuple[dict[int, int], float]:
    """Every user asks for the page on both instances in turn while ``event()`` runs, and for
    ``settle`` seconds after it (past the gateway's pause before it asks Redis again); the
    statuses seen and how long ``event`` took."""
    statuses: list[int] = []
    stop = threading.Event()

    def user(clients):
        turn = 0
        while not stop.is_set():
            statuses.append(clients[turn % 2].get("/").status_code)
            turn += 1
            time.sleep(0.02)  # about 50 pages a second per user

    threads = [threading.Thread(target=user, args=(clients,)) for clients in users]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        event()
        took = time.monotonic() - started
        time.sleep(settle)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {s: statuses.count(s) for s in set(statuses)}, took


def logout_is_honoured_everywhere(users) -> None:
    """A logout on one instance, after the event, is refused on the other."""
    mine, elsewhere = users[0]
    page = mine.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert mine.post("/logout", data={"csrf_token": csrf}).status_code == 303
    assert elsewhere.get("/").status_code == 401
    assert all(clients[1].get("/").status_code == 200 for clients in users[1:])  # nobody else


def redis_errors() -> float:
    from gateway.ops import metrics

    return metrics.REGISTRY.get_sample_value("gateway_redis_errors_total") or 0.0


def state_unavailable() -> float:
    from gateway.ops import metrics

    return sum(s.value for f in metrics.REGISTRY.collect() if f.name == "gateway_state_unavailable"
               for s in f.samples if s.name.endswith("_total"))


@pytest.mark.parametrize("event", ["sentinel failover", "cluster master restart"])
def test_a_failover_under_load_signs_no_one_out_and_keeps_token_requests_bounded(make_app, sim, event, request):
    server = request.getfixturevalue("sentinel_redis" if event == "sentinel failover" else "cluster_redis")
    server.flush()
    instances = jwt_instances(make_app, server)
    users = signed_in_users(instances, 12)
    for clients in users:
        assert [c.get("/").status_code for c in clients] == [200, 200]
    before = sim.stats()["token_requests"]
    assert before <= len(USERS) * len(instances)
    if event == "sentinel failover":
        action = server.failover
    else:
        # The master holding alice's session marks' slot... any master: each holds a third of them.
        action = lambda: server.restart(server.ports[0])  # noqa: E731
    errors_before, unavailable_before = redis_errors(), state_unavailable()
    seen, took = under_load(users, action, settle=6.5)
    during = sim.stats()["token_requests"] - before
    print(f"\n{event}: {took:.1f}s, pages {seen}, token requests during it: {during}, failed Redis calls "
          f"{redis_errors() - errors_before:.0f}, checks answered without the store "
          f"{state_unavailable() - unavailable_before:.0f}")
    assert set(seen) == {200}, seen  # no one signed out, no error page
    assert during <= len(USERS) * len(instances)  # at most one per subtenant per instance: no herd
    logout_is_honoured_everywhere(users)


def test_under_gunicorn_the_log_names_the_tier_and_metrics_say_it_is_healthy(gunicorn, cluster_redis):
    from prometheus_client.parser import text_string_to_metric_families

    from conftest import recording_session

    cluster_redis.flush()
    server = gunicorn(workers=2, GATEWAY_CACHE_URL=cluster_redis.url)
    with recording_session() as http:
        for _ in range(4):  # both workers, most likely: each says what its own calls found
            assert http.get(server.url + "/", headers=user_headers("bob@acme.example")).status_code == 200
        text = http.get(server.url + "/metrics").text
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "gateway_shared_tier_healthy"]
    # livemin: one value for the instance, the master (which never called Redis) not counted
    assert [(s.labels, s.value) for s in family.samples] == [({"mode": "Cluster"}, 1.0)]
    # Once: a line logged while the master loads the app must not be written again by each worker.
    assert len(re.findall(r'"shared tier: Cluster Redis at redis\+cluster://[^"]+, round trip [\d.]+ ms"',
                          server.log.read_text())) == 1, server.log.read_text()
