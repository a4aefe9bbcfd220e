"""Browser journeys in a real Chromium: the dashboard renders, and in proxy mode no token
reaches the browser anywhere: DOM, frame URLs, cookies, storage, or any response it received.
"""
import os
import re
from pathlib import Path

import pytest

from conftest import JWT_SHAPE, LEAKS, axe_check, base_config, record_browser
from gateway import create_app
from gateway.sim.server import ServerThread

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM} "
                       "(apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        record_browser(browser)  # every response Chromium receives goes to the leak oracle
        yield browser
        browser.close()


@pytest.fixture
def gateway_server(sim):
    servers = []

    def start(mode, **settings):
        app = create_app(base_config(sim, GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true",
                                     GATEWAY_COOKIE_SECURE="false", GATEWAY_EMBED_MODE=mode, **settings))
        servers.append(ServerThread(app).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


class Recorder:
    """Everything the browser received, and its console."""

    def __init__(self, page):
        self.responses, self.console, self.urls = [], [], []
        page.on("response", lambda r: self.responses.append(r))
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def received(self) -> list[tuple[str, bytes]]:
        out = []
        for response in self.responses:
            headers = "\n".join(f"{k}: {v}" for k, v in response.all_headers().items())
            try:
                body = response.body()
            except Exception:  # noqa: BLE001 - redirects and aborted loads have no body
                body = b""
            out.append((response.url, headers.encode() + b"\n\n" + body))
        return out


def sign_in(page, base_url, email="alice@acme.example", check_as=None):
    page.goto(base_url + "/")
    if check_as:
        axe_check(page, check_as)
    page.get_by_role("button", name=email).click()
    page.wait_for_url(re.compile(re.escape(base_url) + r"/(\?team=[^&]+)?$"))  # the page names its team


def dashboard_frame(page):
    page.wait_for_selector("iframe#dashboard")
    frame = page.frame_locator("iframe#dashboard")
    frame.locator("#app[data-state=ready]").wait_for(timeout=15000)
    return frame


@pytest.mark.smoke
def test_proxy_mode_journey_shows_data_and_no_token_reaches_the_browser(browser, gateway_server):
    server = gateway_server("proxy")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    rec = Recorder(page)
    sign_in(page, server.url, check_as="login-desktop")
    frame = dashboard_frame(page)
    assert page.get_by_test_id("subtenant").inner_text() == "Sales EMEA"
    assert frame.locator("#app").get_attribute("data-subtenant") == "sales-emea"
    assert re.fullmatch(r"\d+", frame.locator("#meetings").inner_text())
    axe_check(page, "proxy-embed-desktop")

    # Nothing JWT-shaped anywhere the browser can see or keep.
    dom = [page.content()] + [f.content() for f in page.frames]
    frame_urls = [f.url for f in page.frames]
    storage = [f.evaluate("() => JSON.stringify([localStorage, sessionStorage])") for f in page.frames]
    cookies = [f"{c['name']}={c['value']}" for c in context.cookies()]
    for text in dom + frame_urls + storage + cookies + rec.urls:
        assert not JWT_SHAPE.search(text.encode()), text[:300]
    received = rec.received()
    assert any("/dashboard/api/summary" in url for url, _ in received)
    assert any("/dashboard/api/echo" not in url and b"zgtoken-" in blob for url, blob in received)
    for url, blob in received:
        LEAKS.record("browser:" + url, {}, blob)
        assert not JWT_SHAPE.search(blob), url
    # The page that echoes the token, fetched by the browser itself.
    echoed = page.evaluate("() => fetch('/dashboard/api/echo-token').then(r => r.text())")
    assert "zgtoken-" in echoed and not JWT_SHAPE.search(echoed.encode())
    assert not [m for m in rec.console if "Content Security Policy" in m or m.startswith("pageerror")]
    context.close()


@pytest.mark.token_in_browser
def test_iframe_mode_journey_shows_the_dashboard(browser, gateway_server, sim):
    server = gateway_server("iframe")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    rec = Recorder(page)
    sign_in(page, server.url, "bob@acme.example")
    frame = dashboard_frame(page)
    assert frame.locator("#app").get_attribute("data-subtenant") == "sales-us"
    frame_url = page.frames[1].url
    assert frame_url.startswith(sim.dashboard_url + "?token=")  # iframe mode exposes the token, by design
    axe_check(page, "iframe-embed-desktop")
    assert not [m for m in rec.console if "Content Security Policy" in m or m.startswith("pageerror")]
    context.close()


def test_phone_width_and_error_page(browser, gateway_server):
    server = gateway_server("proxy")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    sign_in(page, server.url, check_as="login-phone")
    dashboard_frame(page)
    axe_check(page, "proxy-embed-phone")
    response = page.goto(server.url + "/no-such-page")
    assert response.status == 404
    assert page.get_by_role("heading").inner_text() == "Page not found"
    axe_check(page, "error-404-phone")
    context.close()


# ------------------------------------------------ the dashboard failing its own page
FETCH = """path => fetch(path, {headers: {Accept: 'application/json'}})
    .then(r => r.text().then(body => [r.status, r.headers.get('X-Gateway-Error'), body]))"""


def test_a_wrong_dashboard_url_shows_the_gateways_page_with_the_request_id(browser, gateway_server, sim):
    server = gateway_server("proxy", ZIPTEAMS_DASHBOARD_URL=sim.url + "/insights/")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    rec = Recorder(page)
    sign_in(page, server.url)
    panel = page.get_by_test_id("failed")
    panel.wait_for(timeout=15000)
    assert panel.get_by_role("heading").inner_text() == "The dashboard could not be found"
    assert "contact support and quote the request id" in panel.inner_text()
    assert page.locator("iframe#dashboard").is_hidden()
    # The frame's document is the gateway's page (a 502), and its request id is the one shown.
    [frame] = [f for f in page.frames if f.url.startswith(server.url + "/dashboard/")]
    [answer] = [r for r in rec.responses if r.frame == frame and r.request.is_navigation_request()]
    assert answer.status == 502 and answer.headers["x-gateway-error"] == "dashboard_not_found"
    request_id = frame.evaluate("document.body.dataset.requestId")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and answer.headers["x-request-id"] == request_id
    assert panel.locator("code").inner_text() == request_id
    # The dashboard's own scripts, from inside that frame, get what the dashboard sent.
    assert frame.evaluate(FETCH, "/dashboard/api/summary") == [404, None, "not found"]
    axe_check(page, "dashboard-not-found-desktop")
    # "Try again" asks again, and gets the same page (the setting is still wrong).
    with page.expect_response(lambda r: r.request.is_navigation_request() and "/dashboard/" in r.url) as again:
        panel.get_by_role("button", name="Try again").click()
    assert again.value.status == 502
    panel.wait_for(state="visible")
    assert not [m for m in rec.console if "Content Security Policy" in m or m.startswith("pageerror")]
    context.close()


def test_a_failing_dashboard_page_reconnects_and_its_scripts_see_their_own_errors(browser, gateway_server, sim):
    server = gateway_server("proxy")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    # The frame's page fails once (the gateway's "Reconnecting…" panel, which tries again by
    # itself), then the dashboard's own data call fails once: that is the dashboard's to show.
    sim.fault(dashboard_status=500, count=1)
    sim.fault(dashboard_status=500, path="/dashboard/api/summary", count=1)
    sign_in(page, server.url)
    paused = page.get_by_test_id("paused")
    paused.wait_for(timeout=15000)
    assert re.fullmatch(r"[0-9a-f]{32}", paused.locator("code").inner_text())
    frame = page.frame_locator("iframe#dashboard")
    frame.locator("#app[data-state=error]").wait_for(timeout=15000)
    assert frame.locator("#status").inner_text() == "Could not load data (HTTP 500)"  # the raw status
    assert page.get_by_test_id("paused").is_hidden()
    context.close()
