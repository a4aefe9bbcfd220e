"""Redis down, restarted empty or silent: nobody signed in is signed out, hand-offs get a plain page.

One stated policy per use of the shared store (``gateway.identity.revocations.SecurityState``): the
revocation check fails open, a revocation is recorded on a best-effort basis, a hand-off
that cannot be checked for single use is refused with a 503 page. Calls back off after a
failure and the log says so at most once a minute.
"""
import logging
import re
import time

import jwt
import pytest

from conftest import FakeClock, NotRedis, SilentRedis, user_headers
from gateway.identity.revocations import HandoffUnverifiable, SecurityState
from gateway.shared import StoreUnavailable as StateUnavailable

ALICE = user_headers("alice@acme.example")
HANDOFF_SECRET = "h" * 40
ISS, AUD = "https://app.partner.example", "zipteams-gateway"


def handoff_token(**claims):
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 120, "jti": f"j-{time.monotonic_ns()}",
            "email": "alice@acme.example", **claims}
    return jwt.encode(body, HANDOFF_SECRET, algorithm="HS256")


# ------------------------------------------------------------------ the policy, unit by unit
class Down:
    def __init__(self):
        self.calls = 0

    def mark(self, key, ttl=None):
        self.calls += 1
        raise StateUnavailable("ConnectionError from redis://***@cache:6379/0")

    marked = mark


def test_store_unavailable_is_never_revoked_and_calls_back_off(caplog):
    clock = FakeClock(start=1000)
    backend = Down()
    state = SecurityState(backend, retry_after=5, monotonic=clock)
    with caplog.at_level(logging.ERROR):
        assert state.session_revoked("sid-1") is False
        for _ in range(50):
            assert state.session_revoked("sid-1") is False
        assert backend.calls == 1  # backing off: one time-out per window, not one per request
        clock.advance(5)
        assert state.session_revoked("sid-1") is False
        assert backend.calls == 2
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1  # once a minute


def test_a_hand_off_that_cannot_be_checked_is_refused_as_unverifiable():
    state = SecurityState(Down(), monotonic=FakeClock())
    with pytest.raises(HandoffUnverifiable) as info:
        state.use_once("iss|jti", 60)
    assert info.value.status_code == 503


# ------------------------------------------------------------------ real Redis, every mode
@pytest.fixture
def header_app(make_app, redis_server):
    return make_app(GATEWAY_CACHE_URL=redis_server.url, GATEWAY_EMBED_MODE="proxy")


@pytest.fixture
def jwt_app(make_app, redis_server):
    return make_app(GATEWAY_CACHE_URL=redis_server.url, GATEWAY_AUTH_MODE="jwt", GATEWAY_EMBED_MODE="proxy",
                    GATEWAY_HANDOFF_SECRET=HANDOFF_SECRET, GATEWAY_HANDOFF_ISSUER=ISS, GATEWAY_HANDOFF_AUDIENCE=AUD)


def _dashboard_call(client, page_html, headers=None):
    ph = re.search(r"zgtoken-[0-9a-f]{32}", page_html).group(0)
    return client.get(f"/dashboard/api/summary?token={ph}", headers=headers or {})


@pytest.mark.parametrize("outage", ["stopped", "restarted-empty"])
def test_header_mode_users_keep_their_page_through_a_redis_outage(header_app, redis_server, outage):
    client = header_app.test_client()
    page = client.get("/", headers=ALICE)
    assert page.status_code == 200
    redis_server.stop()
    if outage == "restarted-empty":
        redis_server.start()
    for _ in range(3):
        assert client.get("/", headers=ALICE).status_code == 200
        assert _dashboard_call(client, page.get_data(as_text=True), ALICE).status_code == 200
    # A session re-created meanwhile (a new cookie, the proxy's next request) keeps the open page working.
    fresh = header_app.test_client()
    assert _dashboard_call(fresh, page.get_data(as_text=True), ALICE).status_code == 200


@pytest.mark.parametrize("outage", ["stopped", "restarted-empty"])
def test_jwt_mode_users_stay_signed_in_through_a_redis_outage(jwt_app, redis_server, outage):
    client = jwt_app.test_client()
    assert client.get("/sso/jwt", query_string={"jwt": handoff_token()}).status_code == 302
    page = client.get("/")
    assert page.status_code == 200
    redis_server.stop()
    if outage == "restarted-empty":
        redis_server.start()
    for _ in range(3):
        assert client.get("/").status_code == 200
        assert _dashboard_call(client, page.get_data(as_text=True)).status_code == 200
    # A form still works: the CSRF token lives in the session, which survived.
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303


def test_a_hand_off_during_a_redis_outage_gets_a_plain_503_page(jwt_app, redis_server):
    redis_server.stop()
    answer = jwt_app.test_client().get("/sso/jwt", query_string={"jwt": handoff_token()})
    assert answer.status_code == 503
    text = answer.get_data(as_text=True)
    assert "cannot be checked right now" in text and "Traceback" not in text


def test_a_silent_redis_costs_one_time_out_per_window_not_one_per_request(make_app):
    silent = SilentRedis()
    try:
        app = make_app(GATEWAY_CACHE_URL=silent.url, GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=HANDOFF_SECRET,
                       GATEWAY_HANDOFF_ISSUER=ISS, GATEWAY_HANDOFF_AUDIENCE=AUD)
        client = app.test_client()
        with client.session_transaction() as s:  # a session that signed in before Redis went silent
            s.update(sid="s-1", csrf="c", email="alice@acme.example", groups=[], iat=int(time.time()),
                     seen=int(time.time()))
        started = time.monotonic()
        statuses = [client.get("/session/status", headers={"Accept": "application/json"}).status_code
                    for _ in range(20)]
        elapsed = time.monotonic() - started
        assert set(statuses) == {200}, statuses  # nobody signed out
        assert elapsed < 3.0, f"20 requests took {elapsed:.1f}s: each one waited on the silent Redis"
    finally:
        silent.close()


def test_a_server_that_is_not_redis_fails_soft_like_an_outage(make_app, caplog):
    other = NotRedis()
    try:
        app = make_app(GATEWAY_CACHE_URL=other.url)  # its start-up line: an ERROR naming the problem
        assert app.extensions["shared"] is None  # not asked again: the host's store and own caches serve
        client = app.test_client()
        for _ in range(3):
            page = client.get("/", headers=user_headers("alice@acme.example"))
            assert page.status_code == 200, page.text
            status = client.get("/session/status", headers=user_headers("alice@acme.example", Accept="application/json"))
            assert status.status_code == 200, status.text
        assert other.accepted  # it was asked
        assert any(r.levelno == logging.ERROR and "does not answer as Redis does" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        other.close()


def test_a_gateway_whose_cache_url_is_not_redis_starts_and_serves(gunicorn):
    import requests

    other = NotRedis()
    try:
        server = gunicorn(workers=1, GATEWAY_CACHE_URL=other.url, GATEWAY_LOG_FORMAT="text")
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        page = requests.get(server.url + "/", headers=user_headers("alice@acme.example"), timeout=10)
        assert page.status_code == 200, page.text
        log = server.log.read_text()
        assert "does not answer as Redis does" in log and "Traceback" not in log, log
    finally:
        other.close()


# ------------------------------------------------- every mode x every kind of outage
@pytest.fixture(scope="module")
def idp():
    oidc_mock = pytest.importorskip("oidc_provider_mock")
    with oidc_mock.run_server_in_thread(port=0, require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


def _signed_in(mode, make_app, redis_server, idp, monkeypatch):
    """An app in ``mode`` on the real Redis, a client signed in to it, and that client's headers."""
    settings = dict(GATEWAY_CACHE_URL=redis_server.url)
    if mode == "jwt":
        settings.update(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=HANDOFF_SECRET,
                        GATEWAY_HANDOFF_ISSUER=ISS, GATEWAY_HANDOFF_AUDIENCE=AUD)
    elif mode == "oidc":
        from test_oidc import CLIENT_ID, PUBLIC

        monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the loopback IdP speaks plain HTTP
        settings.update(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=idp, OIDC_CLIENT_ID=CLIENT_ID,
                        OIDC_CLIENT_SECRET="client-secret", GATEWAY_PUBLIC_URL=PUBLIC)
    app = make_app(**settings)
    client = app.test_client()
    headers = {}
    if mode == "header":
        headers = ALICE
    elif mode == "jwt":
        assert client.get("/sso/jwt", query_string={"jwt": handoff_token()}).status_code == 302
    else:
        from test_oidc import login

        _, answer = login(client, idp, {"email": "alice@acme.example", "groups": ["emea"]})
        assert answer.status_code == 302
    return app, client, headers


@pytest.mark.parametrize("outage", ["stopped", "restarted-empty", "silent"])
@pytest.mark.parametrize("mode", ["header", "jwt", "oidc"])
def test_no_signed_in_user_is_signed_out_or_loses_a_form_in_any_mode(mode, outage, make_app, redis_server,
                                                                      idp, monkeypatch):
    app, client, headers = _signed_in(mode, make_app, redis_server, idp, monkeypatch)
    page = client.get("/", headers=headers)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    if outage == "silent":
        redis_server.pause()
    else:
        redis_server.stop()
        if outage == "restarted-empty":
            redis_server.start()
    try:
        for _ in range(3):
            assert client.get("/", headers=headers).status_code == 200
            assert _dashboard_call(client, html, headers).status_code == 200
        if mode == "header":
            # The identity proxy's next request may come without our cookie: the open page still works.
            assert _dashboard_call(app.test_client(), html, headers).status_code == 200
    finally:
        if outage == "silent":
            redis_server.resume()
        elif outage == "stopped":
            redis_server.start()
    assert client.get("/", headers=headers).status_code == 200  # and after Redis is back
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert client.post("/logout", data={"csrf_token": csrf}, headers=headers).status_code == 303
