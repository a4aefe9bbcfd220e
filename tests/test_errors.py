"""Friendly failures: each upstream fault gives its documented status and a plain page
that says what to do next, without internal codes or the vendor's name."""
import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import FakeClock, free_port, user_headers

ALICE = user_headers("alice@acme.example")
BRAND = {"GATEWAY_BRAND_NAME": "Acme Portal"}  # white-labelled: the vendor's name must not show


def visible_text(page: str) -> str:
    """The words a person sees: the page's text without tags, attributes, script or style."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.DOTALL | re.IGNORECASE)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def links(page: str) -> dict[str, str]:
    """Each link and button on the page: its words -> where it leads (a button: its form's action)."""
    found = {}
    for href, words in re.findall(r'<a [^>]*href="([^"]*)"[^>]*>(.*?)</a>', page, flags=re.DOTALL):
        found[" ".join(visible_text(words).split())] = html.unescape(href)
    for action, words in re.findall(r'<form method="post" action="([^"]*)">.*?<button[^>]*>(.*?)</button>',
                                    page, flags=re.DOTALL):
        found[" ".join(visible_text(words).split())] = "POST " + html.unescape(action)
    return found


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
def test_each_fault_gives_its_status_and_a_plain_page_then_recovers(client, sim, clock, fault, status, code,
                                                                    caplog):
    sim.fault(count=1, **fault)
    response = client.get("/", headers=ALICE)
    text = response.get_data(as_text=True)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    # The page carries the general code; the precise one, which names the vendor, is logged.
    general = "dashboard_busy" if status == 503 else "dashboard_unavailable"
    assert f'data-code="{general}"' in text and code not in text and f"code={code}" in caplog.text
    assert response.headers["X-Request-Id"] in text
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
    page = response.get_data(as_text=True)
    assert "about 42 seconds" in visible_text(page)
    # gateway.js counts these down, then opens the same page again by itself.
    assert 'data-retry-after="42" data-retry-url="/"' in page
    # The words and the button agree: wait, then try again (gateway.js keeps the button
    # unavailable until the wait is over); nothing offers to try "now".
    assert "Try again once the wait is over." in visible_text(page)
    assert links(page)["Try again"] == "/" and "now" not in visible_text(page)


@pytest.mark.parametrize("fault, status", [({"status": 429}, 503), ({"status": 500}, 502),
                                           ({"malformed": True}, 502), ({"status": 403}, 502)])
def test_no_internal_code_or_vendor_name_in_the_words_of_an_error_page(make_app, sim, fault, status):
    client = make_app(ZIPTEAMS_RETRIES="0", **BRAND).test_client()
    sim.fault(count=1, **fault)
    response = client.get("/", headers=ALICE)
    assert response.status_code == status
    words = visible_text(response.get_data(as_text=True))
    assert "zipteams" not in words.lower()
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", words), words  # no code_like_this
    assert re.search(r"Request id\s+[0-9a-f]{32}\s+Copy", words)  # whole, with its copy button


def test_a_failing_page_offers_to_try_the_same_page_again(make_app, sim):
    client = make_app(ZIPTEAMS_RETRIES="0").test_client()
    sim.fault(status=500, count=1)
    response = client.get("/?team=acme%2Fsales-emea&x=1", headers=ALICE)
    assert response.status_code == 502
    page = response.get_data(as_text=True)
    assert links(page)["Try again"] == "/?team=acme%2Fsales-emea&x=1"
    assert "data-retry-after" not in page  # nothing to count down: no wait was named


def test_a_timeout_offers_to_try_again(make_app, sim):
    client = make_app(ZIPTEAMS_TIMEOUT="0.3", ZIPTEAMS_RETRIES="0").test_client()
    sim.fault(delay=1, count=1)
    response = client.get("/", headers=ALICE)
    assert response.status_code == 504 and links(response.get_data(as_text=True))["Try again"] == "/"


def test_not_signed_in_offers_sign_in_returning_to_the_same_page(make_app):
    client = make_app().test_client()
    response = client.get("/?team=acme%2Fsales-us")  # no identity from the SSO proxy
    assert response.status_code == 401
    # Behind an identity-aware proxy, opening the page again is what signs in.
    assert links(response.get_data(as_text=True))["Sign in"] == "/?team=acme%2Fsales-us"


def test_not_linked_offers_sign_out_and_the_partners_help_link(make_app):
    client = make_app(GATEWAY_HELP_URL="https://help.partner.example/access?app=insights").test_client()
    response = client.get("/", headers=user_headers("mallory@evil.example"))
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    found = links(page)
    assert found["Sign out and use another account"] == "POST /logout"
    assert found["Get help (opens in a new tab)"] == "https://help.partner.example/access?app=insights"
    assert "Back to the dashboard" not in found  # they never had one
    # The sign-out form works from this page: it carries the session's CSRF token.
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    done = client.post("/logout", data={"csrf_token": csrf}, headers=user_headers("mallory@evil.example"))
    assert done.status_code == 303 and done.headers["Location"].endswith("/signed-out")


def test_without_a_help_url_no_help_link_is_shown(make_app):
    response = make_app().test_client().get("/", headers=user_headers("mallory@evil.example"))
    assert response.status_code == 403 and "Get help" not in response.get_data(as_text=True)


def test_sign_in_again_returns_to_the_team_the_ended_session_showed(make_app, clock):
    app = make_app(GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true", GATEWAY_COOKIE_SECURE="false",
                   GATEWAY_SESSION_IDLE="60", CLOCK=clock)
    client = app.test_client()
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True)).group(1)
    client.post("/login", data={"email": "bob@acme.example", "csrf_token": csrf})
    with client.session_transaction() as session:
        csrf = session["csrf"]  # a new session at sign-in, with a new token
    assert client.post("/select", data={"subtenant": "acme/sales-us", "csrf_token": csrf}).status_code == 303
    clock.advance(61)
    response = client.get("/")
    assert response.status_code == 401
    target = links(response.get_data(as_text=True))["Sign in again"]
    parts = urlsplit(target)
    assert parts.path == "/login" and parse_qs(parts.query)["next"] == ["/?team=acme%2Fsales-us"]


def test_a_failed_sign_in_link_is_never_repeated_in_a_page(make_app, keys):
    client = make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_JWKS_URL=keys.url, GATEWAY_HANDOFF_AUDIENCE="gw",
                      GATEWAY_HANDOFF_ISSUER="https://app.example").test_client()
    response = client.get("/sso/jwt?jwt=not.a.valid-token-at-all")
    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert "not.a.valid-token-at-all" not in page and "Back to the dashboard" not in page


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
