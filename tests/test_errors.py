"""Friendly failures: each upstream fault gives its documented status and a plain page."""
import pytest

from conftest import FakeClock, free_port, user_headers

ALICE = user_headers("alice@acme.example")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(make_app, clock):
    # No retries here: each fault should surface as itself (retries are tested in test_protection).
    return make_app(ZIPTEAMS_RETRIES="0", CLOCK=clock).test_client()


@pytest.mark.parametrize("fault, status, code", [
    ({"status": 429}, 503, "zipteams_rate_limited"),
    ({"status": 403}, 502, "zipteams_forbidden"),
    ({"status": 500}, 502, "zipteams_server_error"),
    ({"status": 400}, 502, "zipteams_missing_tenant"),
    ({"malformed": True}, 502, "zipteams_malformed_response"),
    ({"malformed": "no-token"}, 502, "zipteams_malformed_response"),
    ({"malformed": "not-jwt"}, 502, "zipteams_invalid_token"),
    ({"malformed": "wrong-subtenant"}, 502, "zipteams_invalid_token"),
])
def test_each_fault_gives_its_status_and_a_plain_page_then_recovers(client, sim, clock, fault, status, code):
    sim.fault(count=1, **fault)
    response = client.get("/", headers=ALICE)
    text = response.get_data(as_text=True)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert f'data-code="{code}"' in text and response.headers["X-Request-Id"] in text
    assert "Traceback" not in text and "upstream_status" not in text
    if status == 503:
        # A 429 names a wait; no token request goes out before it has passed.
        assert client.get("/", headers=ALICE).status_code == 503
        clock.advance(int(response.headers["Retry-After"]) + 1)
    assert client.get("/", headers=ALICE).status_code == 200


def test_rate_limit_becomes_503_with_retry_after(client, sim):
    sim.fault(status=429, message="Rate limit exceeded. Try again in 42 seconds.", count=1)
    response = client.get("/", headers=ALICE)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "42"
    assert "about 42 seconds" in response.get_data(as_text=True)


def test_rate_limit_without_a_named_wait_defaults_to_60(client, sim):
    sim.fault(status=429, message="Slow down", count=1)
    assert client.get("/", headers=ALICE).headers["Retry-After"] == "60"


def test_timeout_becomes_504(make_app, sim):
    client = make_app(ZIPTEAMS_TIMEOUT="0.3", ZIPTEAMS_RETRIES="0").test_client()
    sim.fault(delay=1, count=1)
    response = client.get("/", headers=ALICE)
    assert response.status_code == 504 and "took too long" in response.get_data(as_text=True)
    assert client.get("/", headers=ALICE).status_code == 200


def test_refused_connection_becomes_502(make_app):
    client = make_app(ZIPTEAMS_API_URL=f"http://127.0.0.1:{free_port()}/api/v1", ZIPTEAMS_RETRIES="0").test_client()
    response = client.get("/", headers=ALICE)
    assert response.status_code == 502 and "dashboard is unavailable" in response.get_data(as_text=True)


def test_errors_answer_json_to_api_clients(client, sim):
    sim.fault(status=429, count=1)
    response = client.get("/", headers={**ALICE, "Accept": "application/json"})
    assert response.status_code == 503
    body = response.get_json()["error"]
    assert body == {"status": 503, "code": "zipteams_rate_limited", "title": "The dashboard is busy",
                    "message": body["message"], "hint": body["hint"], "retry_after": 60,
                    "request_id": response.headers["X-Request-Id"]}


def test_unexpected_exception_is_a_plain_500(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("internal detail that must not be shown")

    response = app.test_client().get("/boom")
    text = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "internal detail" not in text and "Traceback" not in text


def test_method_not_allowed_is_a_plain_page(client):
    response = client.delete("/", headers=ALICE)
    assert response.status_code == 405 and "Not allowed" in response.get_data(as_text=True)


@pytest.mark.parametrize("path, location", [("/dashboard", "/dashboard/"), ("/dashboard?x=1&y=%2F", "/dashboard/?x=1&y=%2F")])
def test_a_missing_trailing_slash_redirects_to_a_relative_url_whatever_the_host(make_app, path, location):
    client = make_app(GATEWAY_EMBED_MODE="proxy").test_client()
    for method in ("GET", "POST"):
        response = client.open(path, method=method, headers={"Host": "evil.test"})
        assert response.status_code == 308 and response.headers["Location"] == location


def test_a_body_shorter_than_its_content_length_is_a_400_page(client, caplog):
    # werkzeug raises ClientDisconnected when the body ends before Content-Length says.
    response = client.post("/logout", data="csrf_token=abc", content_type="application/x-www-form-urlencoded",
                           environ_overrides={"CONTENT_LENGTH": "1000"})
    assert response.status_code == 400
    assert 'data-code="bad_request_body"' in response.get_data(as_text=True)
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("error", ["InvalidChunkSize", "ChunkMissingTerminator", "InvalidChunkExtension",
                                   "NoMoreData"])
def test_gunicorns_body_errors_are_a_400_in_json_too(app, error):
    from gunicorn.http import errors as gunicorn_errors

    @app.post("/read-body")
    def read_body():
        raise getattr(gunicorn_errors, error)("\x00bad")

    response = app.test_client().post("/read-body", headers={"Accept": "application/json"})
    body = response.get_json()["error"]
    assert response.status_code == 400 and body["code"] == "bad_request_body"
    assert "bad" not in body["message"]
