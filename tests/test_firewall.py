"""The credential firewall in proxy mode: only allow-listed headers and the dashboard's own
cookies cross to Zipteams, no token crosses to the browser in any body, coding or header,
paths and writes are checked before anything is forwarded, and the framing policy holds.
"""
import re
import socket
import time
from urllib.parse import quote

import pytest

from conftest import JWT_SHAPE, LEAKS, recording_session, user_headers
from gateway.sim.server import ServerThread
from test_browser import CHROMIUM, browser  # noqa: F401  (the module-scoped Chromium fixture)
from test_experience import partner_page  # noqa: F401  (host pages on other loopback origins)

ALICE = user_headers("alice@acme.example")
PH = re.compile(r"zgtoken-[0-9a-f]{32}")
ALLOWED_UPSTREAM = {"host", "accept", "accept-language", "user-agent", "content-type", "content-length",
                    "origin", "referer", "cookie", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                    "x-request-id", "accept-encoding", "x-requested-with", "sec-fetch-site", "sec-fetch-mode",
                    "sec-fetch-dest", "cache-control", "if-none-match", "range"}
PROXY_SECRET = "proxy-shared-secret-0123456789"
ACCESS_TOKEN = "ya29.user-idp-access-token-" + "a" * 24
SSO_COOKIES = {"_oauth2_proxy": "sso-session-cookie-value-1234567890", "CF_Authorization": "cf-session-abcdef123456",
               "_pomerium": "pomerium-session-0987654321"}


@pytest.fixture
def pc(make_app):
    return make_app(GATEWAY_EMBED_MODE="proxy").test_client()


def blob(response) -> bytes:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items()).encode()
    return headers + b"\n\n" + response.get_data()


def minted(sim) -> set[str]:
    return set(sim.server.server.app.extensions["sim"].minted)


def assert_no_token(data: bytes, tokens: set[str]):
    for token in tokens:
        for form in ("utf-8", "utf-16-le", "utf-16-be"):
            assert token.encode(form) not in data, f"a token reached the browser ({form})"
    assert not JWT_SHAPE.search(data)


# ------------------------------------------------ what crosses to the dashboard
def test_behind_an_identity_proxy_the_dashboard_gets_no_credential_of_the_partner_or_user(gunicorn, keys, sim):
    """Header mode behind a Pomerium-style proxy, under gunicorn: assertion, proxy secret,
    the user's IdP access token and the proxy's cookies all stop at the gateway."""
    LEAKS.secret(PROXY_SECRET, "proxy secret")
    LEAKS.secret(ACCESS_TOKEN, "user's IdP access token")
    for name, value in SSO_COOKIES.items():
        LEAKS.secret(value, f"SSO cookie {name}")
    now = int(time.time())
    assertion = keys.sign({"email": "alice@acme.example", "aud": "gateway", "iss": "https://proxy.example",
                           "iat": now, "exp": now + 300})
    LEAKS.secret(assertion, "identity assertion")
    server = gunicorn(workers=2, GATEWAY_EMBED_MODE="proxy", GATEWAY_ASSERTION_HEADER="X-Pomerium-Jwt-Assertion",
                      GATEWAY_ASSERTION_JWKS_URL=keys.url, GATEWAY_ASSERTION_AUDIENCE="gateway",
                      GATEWAY_ASSERTION_ISSUER="https://proxy.example", GATEWAY_PROXY_SECRET=PROXY_SECRET)
    headers = {"X-Pomerium-Jwt-Assertion": assertion, "X-Gateway-Proxy-Secret": PROXY_SECRET,
               "X-Forwarded-Access-Token": ACCESS_TOKEN, "Cf-Access-Jwt-Assertion": assertion,
               "X-Forwarded-Email": "alice@acme.example", "X-Tenant-Id": "other-tenant",
               "X-Sub-Tenant-Id": "other-team", "X-Api-Secret": "guess", "Accept-Language": "en",
               "Cookie": "; ".join(f"{k}={v}" for k, v in SSO_COOKIES.items()) + "; zd_zt_pref=compact"}
    with recording_session() as http:
        seen = [http.get(server.url + "/dashboard/api/echo", headers=headers, timeout=10).json(),
                http.post(server.url + "/dashboard/api/echo", data=b"{}", timeout=10,
                          headers={**headers, "Origin": server.url, "Content-Type": "application/json"}).json()]
    for echoed in seen:
        names = {name.lower() for name in echoed["headers"]}
        assert names <= ALLOWED_UPSTREAM, names - ALLOWED_UPSTREAM
        assert echoed["cookies"] == {"zt_pref": "compact"}
        text = str(echoed)
        for secret in (assertion, PROXY_SECRET, ACCESS_TOKEN, *SSO_COOKIES.values(), "other-team"):
            assert secret not in text
    assert seen[1]["headers"]["Origin"] == sim.url  # rewritten to the dashboard's own origin


def test_referer_is_rewritten_to_the_dashboards_path_without_its_query(pc, sim):
    pc.get("/", headers=ALICE)
    seen = pc.get("/dashboard/api/echo", headers={
        **ALICE, "Referer": "http://localhost/dashboard/report?token=zgtoken-" + "0" * 32}).get_json()
    assert seen["headers"]["Referer"] == sim.dashboard_url + "report"
    foreign = pc.get("/dashboard/api/echo", headers={**ALICE, "Referer": "https://evil.test/x"}).get_json()
    assert "Referer" not in foreign["headers"]


# ------------------------------------------------ what crosses to the browser
ECHOES = [
    {"type": "application/vnd.api+json"}, {"type": "application/problem+json"},
    {"type": "application/x-ndjson"}, {"type": "text/csv"}, {"type": "application/octet-stream"},
    {"type": "application/xml"}, {"type": "application/atom+xml"}, {"type": "application/x-unknown"},
    {"type": "text/html", "charset": "utf-16"}, {"type": "text/html", "charset": "utf-16-le"},
    {"type": "text/html", "charset": "utf-16-be"}, {"type": "text/plain", "charset": "utf-32"},
    {"type": "text/plain", "charset": "utf-32-le"}, {"type": "text/plain", "charset": "utf-32-be"},
    {"type": "image/png, text/html"},
    {"type": "application/json", "encoding": "gzip"}, {"type": "application/json", "encoding": "deflate"},
    {"type": "application/json", "encoding": "br"}, {"type": "application/json", "encoding": "zstd"},
    {"type": "text/csv", "encoding": "gzip"},
]


@pytest.mark.parametrize("spec", ECHOES, ids=lambda s: "-".join(s.values()))
def test_a_token_echoed_in_any_text_type_coding_or_header_never_reaches_the_browser(pc, sim, spec):
    response = pc.get("/dashboard/api/echo-token-as?" + "&".join(f"{k}={v}" for k, v in spec.items()), headers=ALICE)
    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers  # decoded, scrubbed, sent plain
    assert_no_token(blob(response), minted(sim))
    charset = spec.get("charset", "utf-8")
    assert PH.search(response.get_data().decode(charset)), "the token was replaced, not dropped"
    if "," in spec["type"]:
        assert response.headers["Content-Type"] == spec["type"]  # as sent, but read as text
    assert PH.search(response.headers["Link"]) and PH.search(response.headers["X-Insights-Session"])


def test_byte_ranges_of_a_text_answer_cannot_slice_a_token_past_the_scrubber(pc, sim):
    whole = pc.get("/dashboard/api/echo-token-as?type=text/plain", headers=ALICE)
    cut = whole.get_data().index(b"zgtoken-") + 10  # a range ending inside the token
    halves = [pc.get("/dashboard/api/echo-token-as?type=text/plain", headers={**ALICE, "Range": r})
              for r in (f"bytes=0-{cut}", f"bytes={cut + 1}-")]
    for half in halves:
        assert half.status_code == 200  # sent whole: a server may ignore Range
        assert_no_token(blob(half), minted(sim))
    assert_no_token(b"".join(h.get_data() for h in halves), minted(sim))
    # Binary answers keep their ranges (downloads resume).
    ranged = pc.get("/dashboard/api/echo-token-as?type=application/pdf", headers={**ALICE, "Range": "bytes=0-9"})
    assert ranged.status_code == 206 and len(ranged.get_data()) == 10


@pytest.mark.parametrize("how", ["get-with-a-body", "post"])
def test_a_range_on_a_request_with_a_body_never_gets_a_slice_of_text(pc, sim, how):
    pc.get("/", headers=ALICE)
    halves = []
    for r in ("bytes=10-40", "bytes=30-400"):
        headers = {**ALICE, "Range": r, "Origin": "http://localhost"}
        if how == "post":
            halves.append(pc.post("/dashboard/api/echo-token-as?type=text/plain", data=b"x", headers=headers))
        else:
            halves.append(pc.open("/dashboard/api/echo-token-as?type=text/plain", method="GET", data=b"x",
                                  headers=headers))
    for half in halves:
        assert half.status_code in (200, 404, 405), half.status_code  # the stand-in has no POST there
        assert_no_token(blob(half), minted(sim))
    assert_no_token(b"".join(h.get_data() for h in halves), minted(sim))


def test_a_token_this_process_never_obtained_is_scrubbed_too(make_app, sim):
    """Another worker's token (each process has its own cache without Redis), echoed by a
    dashboard that kept it: recognised by its Zipteams claims, not by its value."""
    sim.reset()
    worker_a, worker_b = make_app(GATEWAY_EMBED_MODE="proxy"), make_app(GATEWAY_EMBED_MODE="proxy")
    assert worker_a.test_client().get("/dashboard/api/echo-token-as", headers=ALICE).status_code == 200
    response = worker_b.test_client().get("/dashboard/api/echo-token-as?which=first", headers=ALICE)
    assert len(minted(sim)) == 2  # worker B fetched its own token and never saw worker A's
    assert_no_token(blob(response), minted(sim))
    assert PH.search(response.get_json()["token"])


@pytest.mark.parametrize("spelling", ["%74oken=bogus", "Token=bogus", "token%00=bogus", "token[]=bogus",
                                      "TOKEN=bogus&token=also"])
def test_a_browser_token_parameter_in_any_spelling_never_reaches_the_dashboard(pc, sim, spelling):
    seen = pc.get(f"/dashboard/api/echo?a=1&{spelling}", headers=ALICE).get_json()
    assert re.fullmatch(r"token=[^&]+&a=1", seen["query"]), seen["query"]
    assert pc.get(f"/dashboard/api/summary?{spelling}", headers=ALICE).status_code == 200
    assert sim.stats()["token_requests"] == 1  # nothing evicted a good token


def test_a_charset_that_could_hide_a_token_is_refused(pc, sim):
    response = pc.get("/dashboard/api/echo-token-as?type=text/plain&charset=cp037", headers=ALICE)
    assert response.status_code == 502
    assert_no_token(blob(response), minted(sim))


def test_a_quoted_dashboard_cookie_cannot_smuggle_another_cookie_upstream(gunicorn):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy")
    with recording_session() as http:
        seen = http.get(server.url + "/dashboard/api/echo", timeout=10,
                        headers={**ALICE, "Cookie": 'zd_b="q; zg_session=INJ"; zd_ok=1; zd_c="quoted"'}).json()
    assert seen["headers"]["Cookie"] == 'ok=1; c="quoted"'


def test_an_older_token_still_valid_is_scrubbed_after_a_renewal(make_app, sim):
    sim.reset()  # the dashboard's memory of earlier tests' tokens too
    app = make_app(GATEWAY_EMBED_MODE="proxy")
    pc = app.test_client()
    assert pc.get("/dashboard/api/echo-token-as", headers=ALICE).status_code == 200  # the dashboard keeps token 1
    app.extensions["tokens"].evict("acme", "sales-emea")  # renewed, as after a rotation
    response = pc.get("/dashboard/api/echo-token-as?which=first", headers=ALICE)
    assert sim.stats()["token_requests"] == 2 and len(minted(sim)) == 2
    assert_no_token(blob(response), minted(sim))
    assert PH.search(response.get_json()["token"])


def test_a_placeholder_reflected_into_a_download_stays_a_placeholder(pc, sim):
    page = pc.get("/dashboard/", headers=ALICE).get_data(as_text=True)
    ph = PH.search(page).group(0)
    for query in (f"title={ph}", f"title={quote('x ' + ph)}", f"token={ph}&title={ph}"):
        response = pc.get(f"/dashboard/api/download?{query}", headers=ALICE)
        assert response.status_code == 200 and response.mimetype == "application/octet-stream"
        assert ph.encode() in response.get_data()
        assert_no_token(blob(response), minted(sim))


def test_a_placeholder_in_a_header_is_never_swapped_for_the_token(pc, sim):
    page = pc.get("/dashboard/", headers=ALICE).get_data(as_text=True)
    ph = PH.search(page).group(0)
    seen = pc.get("/dashboard/api/echo", headers={**ALICE, "Accept-Language": ph, "X-Requested-With": ph}).get_json()
    assert seen["headers"]["Accept-Language"] == ph and seen["headers"]["X-Requested-With"] == ph


def test_an_encoding_the_gateway_cannot_read_is_refused_not_passed_on(pc, sim):
    response = pc.get("/dashboard/api/echo-token-as?encoding=compress", headers=ALICE)
    assert response.status_code == 502
    assert_no_token(blob(response), minted(sim))


def test_event_stream_is_scrubbed_and_flushed_event_by_event(gunicorn, sim):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy")
    with recording_session() as http:
        response = http.get(server.url + "/dashboard/api/events?n=3&gap=1", headers=ALICE, stream=True, timeout=10)
        assert response.headers["Content-Type"].startswith("text/event-stream")
        started = time.monotonic()
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith(b"data:"))
        waited = time.monotonic() - started
        rest = b"\n".join(lines)
    assert waited < 0.9, "the first event was held back until the stream ended"
    assert PH.search(first.decode())
    assert_no_token(first + rest, minted(sim))
    assert rest.count(b"data:") == 2


# ------------------------------------------------ paths and writes, under gunicorn
def raw_request(url: str, request_line: str, headers: dict) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    lines = [request_line, f"Host: {host}:{port}", "Connection: close"] + [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("path", ["/dashboard/..;/_sim/stats", "/dashboard/.;/api/echo", "/dashboard/api;x=1/echo",
                                  "/dashboard/api/echo;jsessionid=abc", "/dashboard/%", "/dashboard/api/%zz",
                                  "/dashboard/api/echo%", "/dashboard/%3b/x", "/dashboard/.../x",
                                  "/dashboard/api/%2e%2e;/x", "/dashboard/a\"b", "/dashboard/a{b}",
                                  "/dashboard/%ef%bc%8e%ef%bc%8e/_sim/stats", "/dashboard/a%ef%bc%8fb"])
def test_path_parameters_dot_segments_and_lone_percent_are_404_with_nothing_forwarded(gunicorn, sim, path):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy")
    answer = raw_request(server.url, f"GET {path} HTTP/1.1", ALICE)
    assert answer.startswith(b"HTTP/1.1 404") or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert sim.stats()["dashboard_paths"] == []


def test_the_upstream_receives_exactly_the_bytes_that_were_checked(gunicorn, sim):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy")
    answer = raw_request(server.url, "GET /dashboard/api/echo%2dx%41?q=%7e HTTP/1.1", ALICE)
    assert answer.startswith(b"HTTP/1.1 404")  # the stand-in's own 404 for that path
    assert sim.stats()["dashboard_paths"] == ["/dashboard/api/echo%2Dx%41"]


@pytest.mark.parametrize("headers, status", [
    ({"Origin": "http://evil.test"}, 403),
    ({"Origin": "null"}, 403),
    ({}, 403),
    ({"Referer": "http://evil.test/page"}, 403),
    ({"Sec-Fetch-Site": "cross-site", "Origin": "SELF"}, 403),
    ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, 200),
    ({"Origin": "SELF"}, 200),
    ({"Referer": "SELF/dashboard/"}, 200),
], ids=["foreign-origin", "null-origin", "nothing", "foreign-referer", "cross-site-metadata",
        "null-origin-same-origin-metadata", "own-origin", "own-referer"])
def test_proxied_writes_need_a_same_origin_signal(gunicorn, sim, headers, status):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy")
    sent = {k: v.replace("SELF", server.url) for k, v in headers.items()}
    with recording_session() as http:
        response = http.post(server.url + "/dashboard/api/echo", data=b"x", headers={**ALICE, **sent}, timeout=10)
    assert response.status_code == status
    assert ("/dashboard/api/echo" in sim.stats()["dashboard_paths"]) == (status == 200)


# ------------------------------------------------ framing, in Chromium
@pytest.mark.browser
def test_a_dashboard_csp_does_not_lift_the_framing_policy(browser, partner_page, make_app, sim):  # noqa: F811
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    listed = partner_page["allowed"].url
    app = make_app(GATEWAY_EMBED_MODE="proxy", GATEWAY_COOKIE_SECURE="false",
                   GATEWAY_FRAME_ANCESTORS=f"'self' {listed}")
    server = ServerThread(app).start()
    try:
        context = browser.new_context(extra_http_headers=ALICE)
        outcomes = {}
        for name in ("allowed", "other"):
            page = context.new_page()
            console = []
            page.on("console", lambda m: console.append(m.text))
            csp = []
            page.on("response", lambda r: csp.append(r.headers_array())
                    if r.url.startswith(server.url + "/dashboard/") else None)
            page.goto(f"{partner_page[name].url}/?src={server.url}/dashboard/")
            page.wait_for_timeout(1500)
            frame = page.frames[1]
            ready = frame.url.startswith(server.url) and frame.locator("#app[data-state=ready]").count() == 1
            outcomes[name] = (ready, console, csp)
            page.close()
        context.close()
    finally:
        server.stop()
    ready, _, csp = outcomes["allowed"]
    assert ready, "a listed partner page must be able to show the dashboard"
    policies = [v for headers in csp[:1] for h in headers for k, v in [(h["name"], h["value"])]
                if k.lower() == "content-security-policy"]
    assert len(policies) == 2 and any(p.startswith("default-src") for p in policies), policies
    ready, console, _ = outcomes["other"]
    assert not ready
    assert any("frame-ancestors" in line for line in console), console


def test_a_proxied_body_shorter_than_its_content_length_is_a_quick_400(gunicorn, sim):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy", ZIPTEAMS_TIMEOUT="10")
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall((f"POST /dashboard/api/upload HTTP/1.1\r\nHost: {host}:{port}\r\nX-Forwarded-Email: alice@acme.example\r\n"
                      f"Origin: {server.url}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789").encode())
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:60]
    assert time.monotonic() - started < 5, "the dashboard was left waiting for the missing bytes"


def test_the_dashboard_cannot_forge_the_gateways_error_signal():
    """X-Gateway-Error tells the embed page (and through it the partner's SDK) that the gateway
    failed: a dashboard that sent it could put its words in the gateway's panel."""
    from urllib3 import HTTPHeaderDict

    from gateway.delivery.proxy import policy, scrub

    upstream = HTTPHeaderDict({"Content-Type": "application/json", "X-Gateway-Error": "dashboard_busy",
                               "Retry-After": "5"})
    pattern = scrub.pattern_for(("eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnRJZCI6ImEifQ.sig",), "zgtoken-" + "0" * 32)
    sent = policy.response_headers(upstream, pattern=pattern, upstream_origin="http://127.0.0.1:1",
                                   upstream_base_path="/dashboard/", decoded=False)
    assert "x-gateway-error" not in {name.lower() for name, _ in sent}
    assert ("Content-Type", "application/json") in sent
