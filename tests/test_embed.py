"""The embed page, the subtenant picker and deny-by-default."""
import re
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from conftest import user_headers
from test_auth import csrf_from


def frame_src(response) -> str:
    return re.search(r'<iframe[^>]* src="([^"]+)"', response.get_data(as_text=True)).group(1).replace("&amp;", "&")


@pytest.fixture
def iframe_client(make_app):
    return make_app(GATEWAY_EMBED_MODE="iframe").test_client()


@pytest.mark.token_in_browser  # iframe mode: the token is in the page by design
def test_embed_page_shows_user_subtenant_and_dashboard(iframe_client, sim):
    client = iframe_client
    response = client.get("/", headers=user_headers("alice@acme.example"))
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "alice@acme.example" in text and "Sales EMEA" in text and "subtenant-select" not in text
    src = frame_src(response)
    assert src.startswith(sim.dashboard_url + "?token=")
    claims = jwt.decode(parse_qs(urlsplit(src).query)["token"][0], options={"verify_signature": False})
    assert (claims["tenantId"], claims["subTenantId"]) == ("acme", "sales-emea")


@pytest.mark.token_in_browser  # iframe mode: the token is in the page by design
def test_iframe_mode_dashboard_accepts_the_token(iframe_client, http):
    src = frame_src(iframe_client.get("/", headers=user_headers("alice@acme.example")))
    page = http.get(src)
    assert page.status_code == 200 and "sales-emea" in page.text


@pytest.mark.token_in_browser  # the iframe-mode case puts the token in the page by design
@pytest.mark.parametrize("mode", ["proxy", "iframe"])
def test_security_headers(make_app, sim, mode):
    response = make_app(GATEWAY_EMBED_MODE=mode).test_client().get("/", headers=user_headers("alice@acme.example"))
    headers = response.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Cookie" in headers["Vary"]
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp
    frame_src = sim.url if mode == "iframe" else "'self'"
    assert f"frame-src {frame_src};" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp


def test_security_headers_keep_what_a_response_set_and_add_cookie_to_vary(make_app):
    app = make_app()

    @app.route("/_test/own-headers")
    def own_headers():
        return "x", 200, {"Cache-Control": "private, max-age=5", "vary": "Accept-Encoding"}

    @app.route("/_test/cookie-vary")
    def cookie_vary():
        return "x", 200, {"Vary": "cookie"}

    headers = app.test_client().get("/_test/own-headers").headers
    assert headers.getlist("Cache-Control") == ["private, max-age=5"]
    assert headers.getlist("Vary") == ["Accept-Encoding, Cookie"]
    assert headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert app.test_client().get("/_test/cookie-vary").headers.getlist("Vary") == ["cookie"]


def test_frame_ancestors_setting(make_app):
    client = make_app(GATEWAY_FRAME_ANCESTORS="https://portal.partner.example").test_client()
    csp = client.get("/", headers=user_headers("alice@acme.example")).headers["Content-Security-Policy"]
    assert "frame-ancestors https://portal.partner.example" in csp


def test_unmatched_user_gets_a_plain_403(client):
    response = client.get("/", headers=user_headers("mallory@evil.example", "admins"))
    assert response.status_code == 403
    assert "not linked to a team" in response.get_data(as_text=True)


def test_unmatched_user_gets_json_when_asked(client):
    response = client.get("/", headers=user_headers("mallory@evil.example", Accept="application/json"))
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "not_linked" and error["request_id"] == response.headers["X-Request-Id"]


def test_several_matches_choose_at_select(client, sim):
    headers = user_headers("bob@acme.example", "emea")
    first = client.get("/", headers=headers)
    assert first.status_code == 302 and first.headers["Location"] == "/select"
    picker = client.get("/select", headers=headers)
    text = picker.get_data(as_text=True)
    assert "Sales EMEA" in text and "Sales US" in text
    chosen = client.post("/select", data={"subtenant": "acme/sales-emea", "csrf_token": csrf_from(picker)},
                         headers=headers)
    # Post/Redirect/Get, to an address that names the team.
    assert chosen.status_code == 303 and chosen.headers["Location"] == "/?team=acme%2Fsales-emea"
    page = client.get("/", headers=headers)
    text = page.get_data(as_text=True)
    assert "Sales EMEA" in text and 'data-testid="subtenant-select"' in text
    assert sim.stats()["by_subtenant"] == {"acme/sales-emea": 1}


@pytest.mark.parametrize("choice", ["globex/ops", "acme/unknown", "", "acme/sales-emea/../ops"])
def test_selecting_a_subtenant_the_user_does_not_match_is_refused(client, sim, choice):
    headers = user_headers("bob@acme.example", "emea")
    picker = client.get("/select", headers=headers)
    response = client.post("/select", data={"subtenant": choice, "csrf_token": csrf_from(picker)},
                           headers=headers)
    assert response.status_code == 403
    assert sim.stats()["token_requests"] == 0


def test_select_needs_csrf(client):
    headers = user_headers("bob@acme.example", "emea")
    client.get("/select", headers=headers)
    assert client.post("/select", data={"subtenant": "acme/sales-us"}, headers=headers).status_code == 403


def test_choice_is_rechecked_when_groups_change(client):
    headers = user_headers("bob@acme.example", "emea")
    picker = client.get("/select", headers=headers)
    client.post("/select", data={"subtenant": "acme/sales-emea", "csrf_token": csrf_from(picker)},
                headers=headers)
    # The proxy no longer sends the "emea" group: that subtenant is gone at once.
    page = client.get("/", headers=user_headers("bob@acme.example", ""))
    assert "Sales US" in page.get_data(as_text=True) and "Sales EMEA" not in page.get_data(as_text=True)


def test_planted_session_choice_cannot_reach_another_team(client, sim):
    client.get("/", headers=user_headers("alice@acme.example"))
    with client.session_transaction() as s:
        s["subtenant"] = "globex/ops"
    page = client.get("/", headers=user_headers("alice@acme.example"))
    assert "Sales EMEA" in page.get_data(as_text=True)
    assert set(sim.stats()["by_subtenant"]) == {"acme/sales-emea"}


@pytest.mark.parametrize("params", [{"subtenant": "globex/ops"}, {"tenant": "globex", "sub": "ops"}])
def test_query_and_headers_cannot_pick_a_subtenant(client, sim, params):
    page = client.get("/", query_string=params,
                      headers=user_headers("alice@acme.example", **{"X-Sub-Tenant-Id": "ops", "X-Tenant-Id": "globex"}))
    assert "Sales EMEA" in page.get_data(as_text=True)
    assert set(sim.stats()["by_subtenant"]) == {"acme/sales-emea"}


def test_healthz_never_calls_zipteams(client, sim):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert sim.stats()["token_requests"] == 0


def test_unknown_page_is_a_plain_404(client):
    response = client.get("/nope", headers=user_headers("alice@acme.example"))
    assert response.status_code == 404 and "Page not found" in response.get_data(as_text=True)


def test_request_id_from_a_trusted_proxy_is_kept(client):
    response = client.get("/healthz", headers={"X-Request-Id": "req-12345678"})
    assert response.headers["X-Request-Id"] == "req-12345678"
    untrusted = client.get("/healthz", headers={"X-Request-Id": "req-12345678"},
                           environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert untrusted.headers["X-Request-Id"] != "req-12345678"


# ------------------------------------------------- the team in the address
def test_the_team_in_the_address_is_shown_and_rechecked(client, sim):
    bob = user_headers("bob@acme.example", "emea")  # sales-emea and sales-us
    page = client.get("/?team=acme%2Fsales-us", headers=bob)
    assert page.status_code == 200 and "<title>Sales US" in page.get_data(as_text=True)
    refused = client.get("/?team=globex%2Fops", headers=bob)
    assert refused.status_code == 403 and refused.headers["X-Gateway-Error"] == "team_not_allowed"
    assert "Open your dashboard" in refused.get_data(as_text=True)
    assert set(sim.stats()["by_subtenant"]) == {"acme/sales-us"}


# ------------------------------------------------------- the loading page
NAVIGATION = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


def test_a_slow_first_token_gives_a_browser_the_loading_page_at_once(client, sim, monkeypatch):
    from gateway.delivery import loading

    monkeypatch.setattr(loading, "LOADING_PAGE_AFTER", 0.2)
    sim.fault(delay=1.0, count=1)
    alice = user_headers("alice@acme.example", **NAVIGATION)
    first = client.get("/", headers=alice)
    text = first.get_data(as_text=True)
    assert first.status_code == 200 and 'data-page="loading"' in text
    next_url = re.search(r'data-next="([^"]+)"', text).group(1).replace("&amp;", "&")
    assert next_url == "/?team=acme%2Fsales-emea&wait=1"
    # The page asked again waits for the same fetch: one token request in all.
    page = client.get(next_url, headers=alice)
    assert page.status_code == 200 and 'data-page="embed"' in page.get_data(as_text=True)
    assert sim.stats()["token_requests"] == 1


def test_scripts_and_quick_answers_never_get_the_loading_page(client, sim):
    sim.fault(status=500, count=3)  # a quick failure: the same error page as ever
    failed = client.get("/", headers=user_headers("alice@acme.example", **NAVIGATION))
    assert failed.status_code == 502 and failed.headers["X-Gateway-Error"] == "dashboard_unavailable"
    sim.fault(delay=1.2, count=1)
    waited = client.get("/", headers=user_headers("alice@acme.example"))  # no Fetch Metadata: a script
    assert waited.status_code == 200 and 'data-page="embed"' in waited.get_data(as_text=True)


# ------------------------------------------------------ honest idle timer
def test_only_a_person_renews_the_idle_timer(make_app, clock):
    app = make_app(GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true", GATEWAY_COOKIE_SECURE="false",
                   GATEWAY_SESSION_IDLE="120", CLOCK=clock)
    client = app.test_client()
    client.post("/login", data={"email": "alice@acme.example", "csrf_token": csrf_from(client.get("/login"))})
    page = client.get("/")
    seen = lambda: client.get_cookie("zg_session") and _session(client)["seen"]  # noqa: E731
    started = seen()
    clock.advance(70)
    # The dashboard's polling and the page's own timers are not a person.
    assert client.get("/dashboard/api/summary").status_code == 200
    assert client.get("/session/status").status_code == 200
    assert seen() == started
    # Nor is a refused request (another site's POST without the CSRF token, an unknown path),
    # or a page's own retry by script (a navigation no person made).
    assert client.post("/session/activity", data={}, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get("/no-such-page", headers={"Sec-Fetch-Dest": "image", "Sec-Fetch-Mode": "no-cors"}
                      ).status_code == 404
    assert client.get("/", headers={"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}).status_code == 200
    assert seen() == started
    assert client.post("/session/activity", data={"csrf_token": csrf_from(page)}).status_code == 204
    assert seen() == started + 70
    clock.advance(70)
    # A person's own navigation (typed, clicked, reloaded) renews it too.
    assert client.get("/", headers={"Sec-Fetch-Mode": "navigate", "Sec-Fetch-User": "?1"}).status_code == 200
    assert seen() == started + 140
    clock.advance(121)
    assert client.get("/dashboard/api/summary").status_code == 401


def _session(client) -> dict:
    with client.session_transaction() as s:
        return dict(s)


# ------------------------------------------------------------- the SDK
def test_the_sdk_is_a_module_any_partner_page_can_load(client):
    response = client.get("/sdk.js", headers={"Origin": "https://portal.partner.example"})
    assert response.status_code == 200
    assert response.mimetype == "text/javascript" and "export function embed" in response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Cache-Control"] == "public, max-age=300" and response.headers["ETag"]
    assert "Set-Cookie" not in response.headers and "Cookie" not in response.headers.get("Vary", "")
