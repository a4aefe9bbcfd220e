"""Proxy mode: the dashboard through the gateway, the token never in the browser."""
import hashlib
import os
import re
import socket

import pytest

from conftest import JWT_SHAPE, FakeClock, free_port, recording_session, user_headers
from gateway.delivery.proxy import Scrubber, upstream_path
from gateway.delivery.proxy.scrub import pattern_for
from gateway.errors import NotFound

ALICE = user_headers("alice@acme.example")
PH = re.compile(r"zgtoken-[0-9a-f]{32}")


@pytest.fixture
def proxy_app(make_app):
    return make_app(GATEWAY_EMBED_MODE="proxy")


@pytest.fixture
def pc(proxy_app):
    return proxy_app.test_client()


def assert_no_jwt(response):
    blob = "\n".join(f"{k}: {v}" for k, v in response.headers.items()).encode() + response.get_data()
    assert not JWT_SHAPE.search(blob), blob[:500]


SAME_ORIGIN = {"Origin": "http://localhost"}  # the test client's own origin, as a browser would send


def echo(pc, method="GET", path="/dashboard/api/echo", **kwargs):
    kwargs.setdefault("headers", {})
    writes = SAME_ORIGIN if method not in ("GET", "HEAD", "OPTIONS") else {}
    kwargs["headers"] = {**ALICE, **writes, **kwargs["headers"]}
    response = pc.open(path, method=method, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()


# ------------------------------------------------------------- the journey
def test_embed_page_frames_the_gateways_own_dashboard_path(pc):
    page = pc.get("/", headers=ALICE)
    assert page.status_code == 200
    assert re.search(r'src="/dashboard/\?token=zgtoken-[0-9a-f]{32}"', page.get_data(as_text=True))
    assert "frame-src 'self'" in page.headers["Content-Security-Policy"]
    assert_no_jwt(page)


def test_dashboard_page_carries_a_placeholder_not_the_token(pc, sim):
    page = pc.get("/dashboard/", headers=ALICE)
    assert page.status_code == 200
    assert_no_jwt(page)
    text = page.get_data(as_text=True)
    [ph] = set(PH.findall(text))
    assert "sales-emea" in text
    # The page's own follow-up requests, placeholder and all, work through the proxy.
    for path in (f"/dashboard/app.js?token={ph}", f"/dashboard/app.css?token={ph}"):
        assert pc.get(path, headers=ALICE).status_code == 200
    data = pc.get("/dashboard/api/summary", headers={**ALICE, "Authorization": f"Bearer {ph}"})
    assert data.get_json()["subtenant"] == "sales-emea"
    assert set(sim.stats()["by_subtenant"]) == {"acme/sales-emea"}


def test_token_echoed_in_body_headers_and_location_is_replaced(pc):
    for path in ("/dashboard/api/echo-token", "/dashboard/api/redirect", "/dashboard/api/echo"):
        response = pc.get(path, headers=ALICE)
        assert_no_jwt(response)
    echoed = pc.get("/dashboard/api/echo-token", headers=ALICE)
    assert PH.fullmatch(echoed.headers["X-Dashboard-Token"])
    assert PH.fullmatch(echoed.get_json()["token"])


def test_placeholder_is_swapped_back_in_the_query_in_header_token_mode(make_app, sim):
    pc = make_app(GATEWAY_EMBED_MODE="proxy", GATEWAY_PROXY_TOKEN_IN="header:Authorization").test_client()
    page = pc.get("/dashboard/", headers=ALICE)
    ph = PH.search(page.get_data(as_text=True)).group(0)
    # The stand-in checks a query token before the header: 200 proves the real token went upstream.
    assert pc.get(f"/dashboard/app.css?token={ph}", headers=ALICE).status_code == 200
    seen = pc.get("/dashboard/api/echo?x=1", headers=ALICE).get_json()
    assert seen["query"] == "x=1" and seen["authorization_seen"] is True


def test_each_page_stays_bound_to_the_team_it_was_rendered_for(pc, sim):
    bob = user_headers("bob@acme.example", "emea")
    picker = pc.get("/select", headers=bob).get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', picker).group(1)
    pc.post("/select", data={"subtenant": "acme/sales-emea", "csrf_token": csrf}, headers=bob)
    emea_page = pc.get("/", headers=bob).get_data(as_text=True)
    emea_ph = PH.search(emea_page).group(0)
    # Another tab switches the session to Sales US...
    pc.post("/select", data={"subtenant": "acme/sales-us", "csrf_token": csrf}, headers=bob)
    # ...the first tab's dashboard keeps asking for, and getting, Sales EMEA.
    seen = pc.get("/dashboard/api/summary", headers={**bob, "Authorization": f"Bearer {emea_ph}"}).get_json()
    assert seen["subtenant"] == "sales-emea"
    assert pc.get("/dashboard/api/summary", headers=bob).get_json()["subtenant"] == "sales-us"


def test_a_placeholder_for_a_team_the_user_lost_or_from_another_session_is_refused(pc, proxy_app):
    ph = PH.search(pc.get("/dashboard/", headers=ALICE).get_data(as_text=True)).group(0)
    other = proxy_app.test_client()
    response = other.get(f"/dashboard/api/summary?token={ph}", headers=user_headers("bob@acme.example"))
    assert response.status_code == 403


def test_placeholder_belongs_to_the_session(pc, proxy_app):
    ph = PH.search(pc.get("/dashboard/", headers=ALICE).get_data(as_text=True)).group(0)
    other = proxy_app.test_client()
    page = other.get("/dashboard/", headers=user_headers("bob@acme.example"))
    assert PH.search(page.get_data(as_text=True)).group(0) != ph


def test_a_users_dashboard_requests_carry_only_their_subtenant(pc, proxy_app, sim):
    bob = proxy_app.test_client()
    assert pc.get("/dashboard/api/summary", headers=ALICE).get_json()["subtenant"] == "sales-emea"
    assert bob.get("/dashboard/api/summary", headers=user_headers("bob@acme.example")).get_json()[
        "subtenant"] == "sales-us"


def test_unmatched_and_anonymous_users_get_nothing(pc, sim):
    assert pc.get("/dashboard/").status_code == 401
    assert pc.get("/dashboard/", headers=user_headers("mallory@evil.example")).status_code == 403
    assert sim.stats()["dashboard_paths"] == []


def test_user_with_several_teams_must_choose_first(pc, sim):
    response = pc.get("/dashboard/", headers=user_headers("bob@acme.example", "emea"))
    assert response.status_code == 409
    assert sim.stats()["token_requests"] == 0


# --------------------------------------------------------- correct proxying
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_are_forwarded(pc, method):
    seen = echo(pc, method, data=b"payload" if method in ("POST", "PUT", "PATCH") else None)
    assert seen["method"] == method


def test_head_is_forwarded_without_a_body(pc):
    response = pc.head("/dashboard/api/summary", headers=ALICE)
    assert response.status_code == 200 and response.get_data() == b""
    assert int(response.headers["Content-Length"]) > 0


@pytest.mark.parametrize("query", ["a=1&b=%20x&c=%2F", "q=caf%C3%A9&&x=", "list=1&list=2;3", "raw=a+b%2Bc"])
def test_query_string_is_kept_byte_for_byte(pc, query):
    seen = echo(pc, path=f"/dashboard/api/echo?{query}")
    assert re.sub(r"^token=zgtoken-[0-9a-f]{32}&", "", seen["query"]) == query  # ours first


def test_browser_token_parameter_is_replaced_by_ours(pc):
    seen = echo(pc, path="/dashboard/api/echo?a=1&token=eyJmb3JnZWQ.eyJmb3JnZWQ.x&b=2")
    assert re.fullmatch(r"token=zgtoken-[0-9a-f]{32}&a=1&b=2", seen["query"])


def test_only_allow_listed_headers_are_forwarded(pc):
    seen = echo(pc, headers={"Connection": "X-Hop-One", "X-Hop-One": "1", "Keep-Alive": "timeout=5",
                             "TE": "trailers", "Upgrade": "websocket", "Proxy-Authorization": "Basic eA==",
                             "Authorization": "Basic c2VjcmV0", "X-Custom": "yes", "Accept-Language": "de",
                             "X-Tenant-Id": "other", "X-Sub-Tenant-Id": "other-team",
                             "X-Forwarded-For": "198.51.100.7"})
    names = {k.lower() for k in seen["headers"]}
    assert names <= {"host", "accept", "accept-language", "user-agent", "x-forwarded-for", "x-forwarded-proto",
                     "x-forwarded-host", "x-request-id", "accept-encoding", "content-length", "content-type"}, names
    assert seen["authorization_seen"] is False
    assert seen["headers"]["Accept-Language"] == "de"
    assert seen["headers"]["Accept-Encoding"] == "identity"
    # Our trusted test peer passed X-Forwarded-For along; we append the peer we saw.
    assert seen["headers"]["X-Forwarded-For"] == "198.51.100.7, 127.0.0.1"
    assert seen["headers"]["X-Forwarded-Proto"] == "http"
    assert seen["headers"]["X-Forwarded-Host"] == "localhost"


def test_a_partner_may_add_header_names_to_the_allow_list(make_app):
    pc = make_app(GATEWAY_EMBED_MODE="proxy", GATEWAY_PROXY_FORWARD_HEADERS="X-Custom, X-Trace").test_client()
    seen = echo(pc, headers={"X-Custom": "yes", "X-Other": "no"})
    assert seen["headers"]["X-Custom"] == "yes" and "X-Other" not in seen["headers"]


@pytest.mark.parametrize("name", ["X-Forwarded-Email", "X-Gateway-Proxy-Secret", "Cookie", "Authorization",
                                  "X-Forwarded-Access-Token", "Cf-Access-Jwt-Assertion", "X-Api-Secret",
                                  "Proxy-Foo", "X-My-Assertion"])
def test_identity_and_secret_headers_cannot_be_added_to_the_allow_list(make_app, name):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="GATEWAY_PROXY_FORWARD_HEADERS must not list"):
        make_app(GATEWAY_EMBED_MODE="proxy", GATEWAY_PROXY_FORWARD_HEADERS=f"X-Fine,{name}",
                 GATEWAY_ASSERTION_HEADER="X-My-Assertion", GATEWAY_ASSERTION_JWKS_URL="https://idp.example/jwks",
                 GATEWAY_ASSERTION_AUDIENCE="a", GATEWAY_ASSERTION_ISSUER="i")


def test_only_the_dashboards_own_cookies_are_forwarded_under_their_own_names(pc):
    pc.get("/", headers=ALICE)
    pc.set_cookie("zd_zt_pref", "compact", path="/dashboard/")
    pc.set_cookie("_oauth2_proxy", "sso-session", path="/")
    pc.set_cookie("zt_plain", "not-namespaced", path="/dashboard/")
    seen = echo(pc)
    assert seen["headers"]["Cookie"] == "zt_pref=compact"
    assert seen["cookies"] == {"zt_pref": "compact"}


def test_upstream_set_cookie_is_rescoped_to_the_dashboard_path(pc):
    response = pc.get("/dashboard/api/cookie", headers=ALICE)
    cookies = [c for c in response.headers.getlist("Set-Cookie") if "zg_session=" not in c]
    assert cookies == ["zd_zt_pref=compact; Path=/dashboard/; HttpOnly; SameSite=Lax",
                       "zd_zt_view=week; Path=/dashboard/"]


def test_location_into_the_dashboard_is_rewritten(pc):
    response = pc.get("/dashboard/api/redirect", headers=ALICE)
    assert response.status_code == 302
    assert PH.sub("PH", response.headers["Location"]) == "/dashboard/api/summary?token=PH"


def test_request_body_streams_intact(pc):
    body = os.urandom(3 * 1024 * 1024 + 17)
    result = pc.post("/dashboard/api/upload", data=body, headers={**ALICE, **SAME_ORIGIN}).get_json()
    assert result == {"body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}


def test_request_body_over_the_limit_is_413(make_app, sim):
    pc = make_app(GATEWAY_EMBED_MODE="proxy", GATEWAY_PROXY_MAX_BODY="1000").test_client()
    response = pc.post("/dashboard/api/upload", data=b"x" * 1001, headers={**ALICE, **SAME_ORIGIN})
    assert response.status_code == 413 and "too large" in response.get_data(as_text=True)
    assert pc.post("/dashboard/api/upload", data=b"x" * 1000, headers={**ALICE, **SAME_ORIGIN}).status_code == 200
    assert "/dashboard/api/upload" in sim.stats()["dashboard_paths"]


def test_chunked_body_over_the_limit_is_413(gunicorn, http):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy", GATEWAY_PROXY_MAX_BODY="100000")

    def chunks(count):
        for _ in range(count):
            yield b"y" * 10000

    headers = {**ALICE, "Origin": server.url}
    ok = http.post(server.url + "/dashboard/api/upload", data=chunks(10), headers=headers)
    assert ok.status_code == 200 and ok.json()["body_bytes"] == 100000
    response = http.post(server.url + "/dashboard/api/upload", data=chunks(20), headers=headers)
    assert response.status_code == 413


def test_dashboard_timeout_is_504(make_app):
    pc = make_app(GATEWAY_EMBED_MODE="proxy", ZIPTEAMS_TIMEOUT="0.5").test_client()
    pc.get("/", headers=ALICE)  # warm the token first
    response = pc.get("/dashboard/api/slow?s=2", headers=ALICE)
    assert response.status_code == 504 and "took too long" in response.get_data(as_text=True)


def test_dashboard_unreachable_is_502(make_app):
    pc = make_app(GATEWAY_EMBED_MODE="proxy",
                  ZIPTEAMS_DASHBOARD_URL=f"http://127.0.0.1:{free_port()}/dashboard/").test_client()
    response = pc.get("/dashboard/", headers=ALICE)
    assert response.status_code == 502 and "unavailable" in response.get_data(as_text=True)


def test_cross_site_writes_to_the_dashboard_are_refused(pc, sim):
    response = pc.post("/dashboard/api/echo", data=b"x", headers={**ALICE, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert sim.stats()["dashboard_paths"] == []


def test_proxied_pages_may_only_be_framed_by_us_and_are_not_shared(pc):
    response = pc.get("/dashboard/api/summary", headers=ALICE)
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    # The stand-in sends no Cache-Control for its API: an authenticated answer is then not stored.
    assert response.headers["Cache-Control"] == "no-store" and "Cookie" in response.headers["Vary"]


# ----------------------------------------------------- renewal and rejection
def test_rejected_token_is_evicted_and_the_request_retried_once(make_app, sim):
    clock = FakeClock()
    pc = make_app(GATEWAY_EMBED_MODE="proxy", CLOCK=clock).test_client()
    assert pc.get("/dashboard/api/summary", headers=ALICE).status_code == 200
    sim.http.post(sim.url + "/_sim/revoke").raise_for_status()
    clock.advance(120)  # the cached token is no longer brand new
    response = pc.get("/dashboard/api/summary", headers=ALICE)
    assert response.status_code == 200
    assert sim.stats()["token_requests"] == 2


def test_rejected_token_on_a_write_is_evicted_but_not_replayed(make_app, sim):
    clock = FakeClock()
    pc = make_app(GATEWAY_EMBED_MODE="proxy", CLOCK=clock).test_client()
    pc.get("/dashboard/api/summary", headers=ALICE)
    sim.http.post(sim.url + "/_sim/revoke").raise_for_status()
    clock.advance(120)
    assert pc.post("/dashboard/api/echo", data=b"x", headers={**ALICE, **SAME_ORIGIN}).status_code == 401
    assert pc.post("/dashboard/api/echo", data=b"x", headers={**ALICE, **SAME_ORIGIN}).status_code == 200
    assert sim.stats()["token_requests"] == 2


def test_a_fresh_token_rejected_is_not_refetched_in_a_loop(pc, sim):
    pc.get("/dashboard/api/summary", headers=ALICE)
    sim.http.post(sim.url + "/_sim/revoke").raise_for_status()
    assert pc.get("/dashboard/api/summary", headers=ALICE).status_code == 401
    assert sim.stats()["token_requests"] == 1


# ----------------------------------------------------------- the scrubber
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_scrubber_replaces_across_every_chunk_boundary(size):
    token = b"eyJhbGciOi.eyJzdWIiOi.sig-abc_DEF"
    text = b"start " + token + b" middle e" + token + token + b" ey end e"
    expected = text.replace(token, b"PH")
    scrubber = Scrubber(pattern_for((token.decode(),), "PH"))
    out = b"".join(scrubber.feed(text[i:i + size]) for i in range(0, len(text), size)) + scrubber.finish()
    assert out == expected


@pytest.mark.parametrize("size", [1, 5, 64, 1000])
def test_scrubber_finds_every_token_in_utf8_and_utf16_across_chunks(size):
    old, new = "eyJvbGQ.eyJvbGQ.old-sig", "eyJuZXc.eyJuZXc.new-sig"
    text = ("a" + old + " b " + new).encode() + ("<p>" + new + "</p>").encode("utf-16-le") + \
        old.encode("utf-16-be") + b"e" + new.encode()[:-1]
    pattern = pattern_for((new, old), "PH")
    scrubber = Scrubber(pattern)
    out = b"".join(scrubber.feed(text[i:i + size]) for i in range(0, len(text), size)) + scrubber.finish()
    for token in (old, new):
        for form in ("utf-8", "utf-16-le", "utf-16-be"):
            assert token.encode(form) not in out
    assert out.count(b"PH") == 2 and "PH".encode("utf-16-le") in out and "PH".encode("utf-16-be") in out
    assert out.endswith(b"e" + new.encode()[:-1])  # a near-miss is passed on unchanged


def test_scrubber_holds_nothing_back_past_a_newline():
    scrubber = Scrubber(pattern_for(("eyJhbGciOi.eyJzdWIiOi.sig",), "PH"))
    assert scrubber.feed(b"data: 1\n\n") == b"data: 1\n\n"  # an event goes out at once
    assert scrubber.feed(b"data: ey") == b""  # could be the start of a token: held
    assert scrubber.feed(b"J\n\n") == b"data: eyJ\n\n"


# ----------------------------------------------------------- path traversal
TRAVERSAL = [
    "/dashboard/../_sim/stats", "/dashboard/%2e%2e/_sim/stats", "/dashboard/%2E%2E/_sim/stats",
    "/dashboard/..%2f_sim/stats", "/dashboard/api%2fecho", "/dashboard/api%5cecho", "/dashboard/api\\echo",
    "/dashboard//api/echo", "/dashboard/./api/echo", "/dashboard/api/./echo", "/dashboard/api/%00",
    "/dashboard/api/%0d%0aX-Injected:%201", "/dashboard/%c0%ae%c0%ae/_sim/stats", "/dashboard/%252e%252e/_sim",
    "/dashboard/api/..", "/dashboard/%2e/api", "/dashboard/.%2e/_sim/stats", "/dashboard/api/echo%7f",
    "/dashboard/%e0%80%ae%e0%80%ae/x",
]


@pytest.mark.parametrize("raw", TRAVERSAL)
def test_path_outside_the_base_is_refused(raw):
    with pytest.raises(NotFound):
        upstream_path(raw)


def test_normal_paths_pass_unchanged():
    assert upstream_path("/dashboard/") == ""
    assert upstream_path("/dashboard/api/echo?x=1") == "api/echo"
    assert upstream_path("/dashboard/reports/caf%C3%A9.csv") == "reports/caf%C3%A9.csv"


ACCEPTED = ["/dashboard/a-b_c.d~e/f!$&'()*+,=:@/x", "/dashboard/caf%C3%A9/%2B%20%41", "/dashboard/caf%c3%a9"]
RE_ENCODED = ['/dashboard/a"b', "/dashboard/a<b>", "/dashboard/a^b", "/dashboard/a`b", "/dashboard/a{b}",
              "/dashboard/a|b", "/dashboard/a[b]", "/dashboard/a#b"]


def request_line_urllib3_sends(path: str) -> str:
    """The request target urllib3's connection pool (the proxy's client) writes for ``path``."""
    import threading
    import urllib3

    with socket.create_server(("127.0.0.1", 0)) as server:
        seen = []

        def answer():
            conn, _ = server.accept()
            with conn:
                seen.append(conn.recv(65536).split(b"\r\n", 1)[0].decode("latin-1"))
                conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        with urllib3.HTTPConnectionPool("127.0.0.1", server.getsockname()[1], retries=False) as pool:
            pool.urlopen("GET", path, redirect=False)
        thread.join(10)
    return seen[0].split(" ")[1]


@pytest.mark.parametrize("raw", ACCEPTED)
def test_an_accepted_path_is_forwarded_byte_for_byte(raw):
    rest = upstream_path(raw)
    assert rest == raw[len("/dashboard/"):].replace("%c3%a9", "%C3%A9")
    assert request_line_urllib3_sends("/dashboard/" + rest) == "/dashboard/" + rest


@pytest.mark.parametrize("raw", RE_ENCODED)
def test_a_path_the_client_would_re_encode_is_refused(raw):
    # Forwarded, it would reach the dashboard as other bytes than the ones judged here.
    assert request_line_urllib3_sends(raw) != raw
    with pytest.raises(NotFound):
        upstream_path(raw)


def raw_http(url: str, request_line: str, headers: dict) -> int:
    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        lines = [request_line] + [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close", "", ""]
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("raw", TRAVERSAL + ["http://127.0.0.1/_sim/stats", "/dashboard/%2e%2e%2f%2e%2e%2f_sim"])
def test_traversal_over_real_http_never_leaves_the_base(live_proxy, sim, raw):
    status = raw_http(live_proxy.url, f"GET {raw} HTTP/1.1",
                      {"Host": "gateway.example", **ALICE})
    # gunicorn itself answers 400 to bytes HTTP forbids; everything it passes on gets our 404.
    assert status in (400, 404)
    assert all(p.startswith("/dashboard/") for p in sim.stats()["dashboard_paths"])
    assert sim.stats()["dashboard_paths"] == []


@pytest.fixture
def live_proxy(gunicorn):
    return gunicorn(workers=1, threads=4, GATEWAY_EMBED_MODE="proxy")


def test_traversal_through_the_test_client_gets_404(pc, sim):
    for raw in TRAVERSAL:
        assert pc.get(raw, headers=ALICE).status_code == 404, raw
    assert sim.stats()["dashboard_paths"] == []


# ------------------------------------------------------------------ memory
def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_100mb_export_streams_in_constant_memory(live_proxy):
    master = live_proxy.proc.pid
    with open(f"/proc/{master}/task/{master}/children") as fh:
        [worker] = [int(p) for p in fh.read().split()]
    with recording_session() as http:
        http.get(live_proxy.url + "/dashboard/api/summary", headers=ALICE).raise_for_status()
        before = rss_kb(worker)
        received = 0
        with http.get(live_proxy.url + "/dashboard/export.csv?mb=100", headers=ALICE, stream=True) as r:
            assert r.status_code == 200
            for chunk in r.iter_content(256 * 1024):
                received += len(chunk)
        after = rss_kb(worker)
    assert received > 100 * 1024 * 1024
    assert after - before < 20 * 1024, f"worker grew by {(after - before) / 1024:.1f} MB"


def test_long_open_page_keeps_working_across_token_renewals(sim, make_app):
    from conftest import start_sim, base_config
    from gateway import create_app

    clock = FakeClock()
    short = start_sim(clock=clock, token_ttl=60)
    try:
        app = create_app(base_config(short, GATEWAY_EMBED_MODE="proxy", CLOCK=clock))
        pc = app.test_client()
        page = pc.get("/dashboard/", headers=ALICE)
        ph = PH.search(page.get_data(as_text=True)).group(0)
        # The same page keeps calling the API with the same placeholder for three lifetimes.
        for _ in range(12):
            clock.advance(15)
            response = pc.get("/dashboard/api/summary", headers={**ALICE, "Authorization": f"Bearer {ph}"})
            assert response.status_code == 200
            assert response.get_json()["subtenant"] == "sales-emea"
            assert response.get_json()["expires_at"] > clock.now
        assert short.stats()["token_requests"] >= 3
    finally:
        short.server.stop()


def test_hop_by_hop_response_headers_are_dropped():
    from urllib3 import HTTPHeaderDict
    from gateway.delivery.proxy.policy import response_headers
    headers = HTTPHeaderDict()
    for name, value in [("Connection", "keep-alive, X-Upstream-Hop"), ("X-Upstream-Hop", "1"),
                        ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("Trailer", "X"),
                        ("Upgrade", "h2c"), ("Proxy-Authenticate", "Basic"), ("X-Kept", "TKN"),
                        ("Set-Cookie", "a=1; Domain=dash.example; Path=/base/x"), ("Set-Cookie", "b=2"),
                        ("Location", "http://dash.example/base/next?token=TKN"),
                        ("Cache-Control", "public, max-age=60")]:
        headers.add(name, value)

    out = response_headers(headers, pattern=pattern_for(("TKN",), "PH"), upstream_origin="http://dash.example",
                           upstream_base_path="/base/", decoded=True)
    assert out == [("X-Kept", "PH"), ("Set-Cookie", "zd_a=1; Path=/dashboard/"),
                   ("Set-Cookie", "zd_b=2; Path=/dashboard/"),
                   ("Location", "/dashboard/next?token=PH"), ("Cache-Control", "private, max-age=60")]
