"""The Zipteams client against the live stand-in: success, every failure type, no leaks."""
import json
import socket
import threading

import pytest
from werkzeug.wrappers import Request, Response

from conftest import API_KEY, API_SECRET, HTTP_HEAD, FakeClock, free_port, start_sim
from gateway.sim.server import ServerThread
from gateway.tokens.client import (DashboardToken, ZipteamsClient, ZipteamsError, ZipteamsForbidden,
                              ZipteamsInvalidToken, ZipteamsMalformedResponse, ZipteamsMissingSubtenant,
                              ZipteamsMissingTenant, ZipteamsRateLimited, ZipteamsServerError,
                              ZipteamsTimeout, ZipteamsUnexpectedStatus, ZipteamsUnreachable)


@pytest.fixture
def client(sim):
    return ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=2)


def test_fetch_returns_a_parsed_token(client, sim):
    token = client.fetch_token("acme", "sales-us")
    assert isinstance(token, DashboardToken)
    assert (token.tenant, token.subtenant) == ("acme", "sales-us")
    assert 86300 < token.expires_at - token.issued_at <= 86400
    assert sim.stats()["by_subtenant"] == {"acme/sales-us": 1}


def test_exactly_the_four_documented_headers_are_sent():
    seen = {}

    @Request.application
    def capture(request):
        seen.update(request.headers)
        seen["path"] = request.path
        return Response(json.dumps({"code": "RESPONSE_SUCCESS", "data": {"token": "x"}}),
                        mimetype="application/json")

    with ServerThread(capture) as server:
        client = ZipteamsClient(server.url + "/api/v1", "k", "s", timeout=2)
        with pytest.raises(ZipteamsInvalidToken):
            client.fetch_token("t", "st")
    assert seen["path"] == "/api/v1/partner/dashboard/auth/token"
    custom = {k.lower(): v for k, v in seen.items() if k.lower().startswith("x-")}
    assert custom == {"x-api-key": "k", "x-api-secret": "s", "x-tenant-id": "t", "x-sub-tenant-id": "st"}
    assert "Cookie" not in seen and "Authorization" not in seen


@pytest.mark.parametrize("fault, error, status", [
    ({"status": 403}, ZipteamsForbidden, 502),
    ({"status": 500}, ZipteamsServerError, 502),
    ({"status": 429}, ZipteamsRateLimited, 503),
    ({"status": 400}, ZipteamsMissingTenant, 502),
    ({"status": 400, "message": "Subtenant ID is required"}, ZipteamsMissingSubtenant, 502),
    ({"malformed": True}, ZipteamsMalformedResponse, 502),
    ({"malformed": "no-token"}, ZipteamsMalformedResponse, 502),
    ({"malformed": "not-jwt"}, ZipteamsInvalidToken, 502),
    ({"malformed": "wrong-subtenant"}, ZipteamsInvalidToken, 502),
])
def test_each_failure_has_its_own_type(client, sim, fault, error, status):
    sim.fault(count=1, **fault)
    with pytest.raises(error) as info:
        client.fetch_token("acme", "sales-us")
    assert info.value.status_code == status
    assert "acme" in str(info.value)
    # The next request after the fault succeeds.
    assert client.fetch_token("acme", "sales-us").subtenant == "sales-us"


def test_wrong_secret_is_forbidden(sim):
    client = ZipteamsClient(sim.api_url, API_KEY, "wrong", timeout=2)
    with pytest.raises(ZipteamsForbidden):
        client.fetch_token("acme", "sales-us")


def test_missing_subtenant_from_the_spec(client):
    with pytest.raises(ZipteamsMissingSubtenant):
        client.fetch_token("acme", "")
    with pytest.raises(ZipteamsMissingTenant):
        client.fetch_token("", "x")


def test_rate_limit_carries_the_named_wait(client):
    sim = start_sim(rate_limit=1)
    try:
        client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=2)
        client.fetch_token("a", "b")
        with pytest.raises(ZipteamsRateLimited) as info:
            client.fetch_token("a", "b")
        assert 1 <= info.value.retry_after <= 60
    finally:
        sim.server.stop()


def test_timeout(sim):
    client = ZipteamsClient(sim.api_url, API_KEY, API_SECRET, timeout=0.3)
    sim.fault(delay=1.5, count=1)
    with pytest.raises(ZipteamsTimeout) as info:
        client.fetch_token("acme", "sales-us")
    assert info.value.status_code == 504


def test_connection_refused():
    client = ZipteamsClient(f"http://127.0.0.1:{free_port()}/api/v1", API_KEY, API_SECRET, timeout=2)
    with pytest.raises(ZipteamsUnreachable):
        client.fetch_token("acme", "sales-us")


def test_connection_dropped_mid_answer():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def slam():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"code\"")
        conn.close()

    threading.Thread(target=slam, daemon=True).start()
    client = ZipteamsClient(f"http://127.0.0.1:{listener.getsockname()[1]}/api/v1", "k", "s", timeout=2)
    with pytest.raises(ZipteamsError):
        client.fetch_token("acme", "sales-us")
    listener.close()


def test_undocumented_status():
    @Request.application
    def teapot(request):
        return Response("{}", status=418, mimetype="application/json")

    with ServerThread(teapot) as server:
        client = ZipteamsClient(server.url, "k", "s", timeout=2)
        with pytest.raises(ZipteamsUnexpectedStatus, match="418"):
            client.fetch_token("acme", "sales-us")


def test_expired_token_is_refused(sim):
    # The stand-in's clock is a day behind ours: its tokens arrive already expired.
    behind = start_sim(clock=FakeClock(start=1_000_000))
    try:
        client = ZipteamsClient(behind.api_url, API_KEY, API_SECRET, timeout=2)
        with pytest.raises(ZipteamsInvalidToken, match="already expired"):
            client.fetch_token("acme", "sales-us")
    finally:
        behind.server.stop()


def test_no_secret_or_token_in_repr_str_or_errors(client, sim, caplog):
    token = client.fetch_token("acme", "sales-us")
    for text in (repr(client), str(client), repr(token), str(token)):
        assert API_SECRET not in text and token.value not in text
    sim.fault(status=403, count=1)
    with pytest.raises(ZipteamsForbidden) as info:
        client.fetch_token("acme", "sales-us")
    assert API_SECRET not in repr(info.value) and API_SECRET not in str(info.value)
    assert API_SECRET not in caplog.text and token.value not in caplog.text


def _segment(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token_corpus() -> list[tuple[str, bool]]:
    """Real tokens and every way a token can fail to read that we could think of, each with
    whether only PyJWT >= 2.10's canonical base64url check refuses it (2.9 reads it)."""
    import jwt as pyjwt

    good = pyjwt.encode({"tenantId": "acme", "subTenantId": "team01", "iat": 1, "exp": 2}, "k" * 32)
    head, body, sig = good.split(".")
    odd = [b"[]", b"1", b'"x"', b"null", b"{", b"\xff\xfe", b'{"a":1}x', b"{}", b'{"kid": 1}', b'{"b64": false}',
           '{"é": "\u00e9"}'.encode(), b"[" * 100000, b'{"a": NaN}', b'{"a": "\\ud800"}']
    corpus = [(good, False), (pyjwt.encode({"a": [1, {"b": None}]}, "k" * 64, algorithm="HS512"), False),
              (head + "." + body + ".", False), (head + "." + body, False), (good + ".", False), ("..", False),
              ("", False), ("a.b.c", False), (head + ".." + sig, False), (head + "." + body + "." + sig + "=", False),
              (head + "." + body[:-1] + "." + sig, False)]
    # "crit" (RFC 7515, 4.1.11): PyJWT 2.10+ reads only "b64", named in the header; 2.9 ignores it.
    for raw, strict in ((b'{"alg": "HS256", "crit": ["exp"], "exp": 1}', True), (b'{"crit": []}', True),
                        (b'{"crit": "b64", "b64": true}', True), (b'{"crit": [1]}', True), (b'{"crit": ["b64"]}', True),
                        (b'{"crit": ["b64"], "b64": true}', False), (b'{"crit": null}', True)):
        corpus.append((_segment(raw) + "." + body + "." + sig, strict))
    corpus += [(value, True) for value in (
        head + "." + body + "." + sig + "==", head + "=." + body + "." + sig, head + "." + body + ".!!!",
        head + "." + body + "." + sig[:-1], head + ".é." + sig, head + "." + body + "." + "\u00e9" + sig,
        head + ". " + body + "." + sig, head + "." + body + "." + sig[:-1] + "R")]
    for raw in odd:
        corpus += [(_segment(raw) + "." + body + "." + sig, False), (head + "." + _segment(raw) + "." + sig, False)]
    return corpus


@pytest.mark.parametrize("value,strict_only", _token_corpus())
def test_a_token_is_read_as_pyjwt_reads_it_without_a_signature_check(value, strict_only):
    """The claims reader (no PyJWT in a worker: docs/performance.md, "Memory") agrees with PyJWT's
    unverified decode on every token of the corpus: the same claims, or refused by both; never
    claims PyJWT would not read (at 2.9 too, which reads more)."""
    import jwt as pyjwt

    from gateway.tokens.claims import unverified_claims

    try:
        pyjwt.get_unverified_header(value)
        expected = pyjwt.decode(value, options={"verify_signature": False})
    except (pyjwt.PyJWTError, RecursionError):  # PyJWT 2.9 lets a too-deep segment's RecursionError out
        expected = None
    ours = unverified_claims(value)
    assert ours is None or ours == expected
    if not strict_only:
        assert ours == expected


def _token_with(claims: bytes) -> str:
    return _segment(b'{"alg": "HS256", "typ": "JWT"}') + "." + _segment(claims) + "." + _segment(b"sig")


@pytest.mark.parametrize("answer", [
    _token_with(b'{"tenantId": "acme", "subTenantId": "t1", "iat": 1700000000, "exp": NaN}'),
    _token_with(b'{"tenantId": "acme", "subTenantId": "t1", "iat": NaN}'),
    _token_with(b'{"tenantId": "acme", "subTenantId": "t1", "exp": Infinity}'),
    _token_with(b'{"tenantId": "acme", "subTenantId": "t1", "exp": 1e308}'),
    _token_with(b'{"tenantId": "acme", "subTenantId": "t1", "exp": 1' + b"0" * 400 + b"}"),
    _token_with(b'{"tenantId": "acme", "subTenantId": "t1", "iat": -1' + b"0" * 400 + b"}"),
    _token_with(b'{"alg": "none", "crit": ["exp"], "exp": 1}'),
])
def test_a_token_whose_times_no_clock_reaches_is_refused_not_served_for_ever(answer):
    """A NaN exp never compares as expired (served, never renewed, a 500 for every later page); an
    integer too large for a float raised OverflowError, a 500. Each is a token we cannot use: 502."""
    error = _fetch_from(json.dumps({"code": "RESPONSE_SUCCESS", "data": {"token": answer}}))
    assert isinstance(error, ZipteamsInvalidToken) and error.status_code == 502


def test_an_answer_nested_deeper_than_the_json_reader_goes_is_malformed_not_a_500():
    error = _fetch_from('{"code": "RESPONSE_SUCCESS", "data": ' + "[" * 100000 + "]" * 100000 + "}")
    assert isinstance(error, ZipteamsMalformedResponse) and error.status_code == 502


def _fetch_from(body: str) -> ZipteamsError:
    """The error a token request raises when the token API (a real HTTP server) answers ``body``."""
    @Request.application
    def token_api(request):
        return Response(body, mimetype="application/json")

    with ServerThread(token_api) as server:
        client = ZipteamsClient(server.url + "/api/v1", "k", "s", timeout=2)
        with pytest.raises(ZipteamsError) as info:
            client.fetch_token("acme", "t1")
    return info.value


# ------------------------------------------------------- a Zipteams that trickles its answer
def test_a_trickling_zipteams_ends_a_token_request_within_connect_and_answer_in_all(trickler):
    """Each byte restarts a per-read time-out: the request as a whole gets connect plus answer."""
    import time

    url = f"http://127.0.0.1:{trickler(HTTP_HEAD)}/api/v1"
    client = ZipteamsClient(url, API_KEY, API_SECRET, timeout=1)
    outcome = {}

    def fetch():
        started = time.monotonic()
        try:
            client.fetch_token("acme", "sales-emea")
        except ZipteamsError as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(10)  # without a limit in all it would go on for ever
    assert not worker.is_alive(), "the token request was still running after 10 s"
    assert outcome["error"].code == "zipteams_timeout"
    assert f"no complete answer from {url}/partner/dashboard/auth/token within 2 s in all" in str(outcome["error"])
    assert 1.8 <= outcome["took"] < 4, outcome


def test_under_gunicorn_a_trickling_zipteams_gets_a_first_visit_a_plain_page_within_the_deadline(gunicorn, trickler):
    # The production start (gevent worker): the user waits ZIPTEAMS_DEADLINE, not for ever.
    import time

    import requests

    server = gunicorn(workers=1, ZIPTEAMS_API_URL=f"http://127.0.0.1:{trickler(HTTP_HEAD)}/api/v1",
                      ZIPTEAMS_TIMEOUT="1", ZIPTEAMS_DEADLINE="3", GATEWAY_LOG_FORMAT="text")
    started = time.monotonic()
    page = requests.get(server.url + "/", headers={"X-Forwarded-Email": "alice@acme.example",
                                                  "Accept": "application/json"}, timeout=15)
    took = time.monotonic() - started
    assert page.status_code in (503, 504), page.text
    assert page.json()["error"]["code"] == "zipteams_timeout"
    assert took < 6, took
    assert "Traceback" not in server.log.read_text()


def test_token_requests_given_up_on_are_capped_at_the_pool_size_then_refused_at_once(trickler):
    """Under real threads each one runs on while the server trickles: no more than the pool holds."""
    import time

    client = ZipteamsClient(f"http://127.0.0.1:{trickler(HTTP_HEAD)}/api/v1", API_KEY, API_SECRET,
                            timeout=0.25, pool_size=2)
    for _ in range(2):
        with pytest.raises(ZipteamsError, match="within 0.5 s in all"):
            client.fetch_token("acme", "sales-emea")
    started = time.monotonic()
    with pytest.raises(ZipteamsError, match="that took too long are still running") as refused:
        client.fetch_token("acme", "sales-emea")
    assert refused.value.code == "zipteams_timeout"
    assert time.monotonic() - started < 0.2  # no third thread, no wait
