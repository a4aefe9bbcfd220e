"""The end user's experience in a real Chromium: the branded page, errors people understand,
status events for a framing partner page, several tabs, session end, and long-open tabs.

Every page and state is checked with axe-core at desktop and phone widths; screenshots of
each land in test-artifacts/.
"""
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from werkzeug.wrappers import Request, Response

from conftest import ROOT, axe_check, base_config, start_sim
from gateway import create_app
from gateway.sim.server import ServerThread
from test_browser import CHROMIUM, browser  # noqa: F401  (the module-scoped Chromium fixture)

ARTIFACTS = ROOT / "test-artifacts"
WIDTHS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
BRAND = dict(GATEWAY_BRAND_NAME="Acme Portal", GATEWAY_BRAND_COLOR="#0b5d3b")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}"),
]


class Console:
    def __init__(self, page):
        self.lines = []
        page.on("console", lambda m: self.lines.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.lines.append(f"pageerror: {e}"))

    def csp_violations(self):
        return [line for line in self.lines if "Content Security Policy" in line or line.startswith("pageerror")]


@pytest.fixture
def servers(sim):
    started = []

    def start(sim_=None, **settings):
        target = sim_ or sim
        config = base_config(target, GATEWAY_COOKIE_SECURE="false", GATEWAY_EMBED_MODE="proxy", **BRAND)
        config.update(settings)
        server = ServerThread(create_app(config)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def identity(email, groups=""):
    return {"X-Forwarded-Email": email, "X-Forwarded-Groups": groups}


def wait_ready(page, timeout=15000):
    frame = page.frame_locator("iframe#dashboard")
    frame.locator("#app[data-state=ready]").wait_for(timeout=timeout)
    return frame


@contextmanager
def signed_in_page(browser, url=None, email="alice@acme.example", width="phone", *, groups="", **context_options):  # noqa: F811
    """A page in a fresh context signed in as ``email`` (the SSO proxy's headers), at one of
    ``WIDTHS``: opened at ``url``, or left blank for a test that watches the page (its console,
    its responses) before going anywhere. The context (``page.context``) is closed at the end,
    even when the test fails."""
    context = browser.new_context(viewport=WIDTHS[width], extra_http_headers=identity(email, groups), **context_options)
    try:
        page = context.new_page()
        if url is not None:
            page.goto(url)
        yield page
    finally:
        context.close()


# ------------------------------------------------------------- the page
@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_branded_embed_page(browser, servers, width):  # noqa: F811
    server = servers()
    with signed_in_page(browser, width=width) as page:
        console = Console(page)
        page.goto(server.url + "/")
        assert page.locator("html").get_attribute("lang") == "en"
        wait_ready(page)
        assert page.get_by_test_id("loading").is_hidden()
        assert page.locator(".brand-name").inner_text() == "Acme Portal"
        assert page.get_by_test_id("subtenant").inner_text() == "Sales EMEA"
        header_bg = page.evaluate("getComputedStyle(document.querySelector('.bar')).backgroundColor")
        assert header_bg == "rgb(11, 93, 59)"
        # Full height, no double scrollbars, nothing wider than the screen.
        assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        frame_box = page.locator("iframe#dashboard").bounding_box()
        assert frame_box["y"] + frame_box["height"] >= WIDTHS[width]["height"] - 2
        # One slim row of header on every width.
        assert page.locator(".bar").bounding_box()["height"] <= 48
        # Keyboard: the skip link first, then the header's controls (on a phone, behind a menu).
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.keyboard.press("Tab")
        first = "Sign out" if width == "desktop" else "Menu"
        assert page.evaluate("document.activeElement.textContent.trim()") == first
        axe_check(page, f"embed-{width}")
        if width == "phone":
            page.keyboard.press("Enter")
            assert page.get_by_role("button", name="Sign out").is_visible()
            assert page.get_by_text("alice@acme.example").is_visible()
            axe_check(page, "embed-menu-open-phone")
            page.keyboard.press("Escape")
            assert page.get_by_role("button", name="Sign out").is_hidden()
            assert page.evaluate("document.activeElement.getAttribute('aria-expanded')") == "false"
        assert console.csp_violations() == []


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_team_picker_and_switcher(browser, servers, width):  # noqa: F811
    server = servers()
    with signed_in_page(browser, email="bob@acme.example", width=width, groups="emea") as page:
        console = Console(page)
        page.goto(server.url + "/")
        assert page.url.endswith("/select")
        axe_check(page, f"picker-{width}")
        page.get_by_role("button", name="Sales EMEA").click()
        wait_ready(page)
        if width == "phone":
            assert page.get_by_test_id("subtenant").inner_text() == "Sales EMEA"  # the team stays in view
            page.get_by_role("button", name="Menu").click()
        select = page.get_by_test_id("subtenant-select")
        assert select.input_value() == "acme/sales-emea"
        assert page.url == server.url + "/?team=acme%2Fsales-emea"  # the address names the team
        select.select_option("acme/sales-us")  # choosing is not switching (WCAG 3.2.2)...
        page.wait_for_timeout(300)
        assert page.url == server.url + "/?team=acme%2Fsales-emea"
        page.get_by_role("button", name="Switch").click()  # ...the button is
        page.wait_for_url(server.url + "/?team=acme%2Fsales-us")
        frame = wait_ready(page)
        assert frame.locator("#app").get_attribute("data-subtenant") == "sales-us"
        axe_check(page, f"switcher-{width}")
        page.reload()  # a reload keeps the team (Post/Redirect/Get: nothing is sent again)
        assert wait_ready(page).locator("#app").get_attribute("data-subtenant") == "sales-us"
        assert console.csp_violations() == []


# --------------------------------------------------------------- errors
HELP = "https://help.acme.example/access"


def make_error(status, sim, servers):
    """A server and the request that makes it answer ``status``, as a browser would meet it,
    with the words the page says and its one button."""
    alice = identity("alice@acme.example")
    if status == 401:
        return servers(), {}, "/", "You are not signed in", "Sign in"
    if status == 403:
        return (servers(GATEWAY_HELP_URL=HELP), identity("mallory@evil.example"), "/", "not linked to a team",
                "Sign out and use another account")
    if status == 404:
        return servers(), alice, "/no-such-page", "Page not found", "Back to the dashboard"
    if status == 413:
        return servers(GATEWAY_PROXY_MAX_BODY="1000"), alice, "413", "too large", "Back to the dashboard"
    if status == 503:
        sim.fault(status=429, message="Rate limit exceeded. Try again in 42 seconds.", count=1)
        return servers(ZIPTEAMS_RETRIES="0"), alice, "/", "Trying again by itself in 4", "Try again"
    if status == 502:
        sim.fault(status=500, count=1)
        return servers(ZIPTEAMS_RETRIES="0"), alice, "/", "dashboard is unavailable", "Try again"
    if status == 504:
        sim.fault(delay=1.5, count=1)
        return (servers(ZIPTEAMS_TIMEOUT="0.5", ZIPTEAMS_RETRIES="0"), alice, "/", "took too long", "Try again")
    raise AssertionError(status)


@pytest.mark.parametrize("width", sorted(WIDTHS))
@pytest.mark.parametrize("status", [401, 403, 404, 413, 503, 502, 504])
def test_error_pages_say_what_happened_and_what_to_do(browser, servers, sim, status, width, monkeypatch):  # noqa: F811
    from gateway.delivery import loading

    # These pages are about failures, not about waiting: on a loaded machine a failing first
    # fetch could take past the loading page's second, and the test would see that page instead.
    monkeypatch.setattr(loading, "LOADING_PAGE_AFTER", 10.0)
    server, headers, path, words, action = make_error(status, sim, servers)
    context = browser.new_context(viewport=WIDTHS[width], extra_http_headers=headers)
    page = context.new_page()
    console = Console(page)
    if path == "413":
        page.goto(server.url + "/healthz")
        with page.expect_navigation():
            page.evaluate("""url => { const f = document.createElement('form'); f.method = 'post';
                f.action = url; f.enctype = 'text/plain'; const t = document.createElement('textarea');
                t.name = 'x'; t.value = 'y'.repeat(5000); f.appendChild(t); document.body.appendChild(f); f.submit(); }""",
                          server.url + "/dashboard/api/upload")
        response_status = int(page.locator("main").get_attribute("data-status"))
    else:
        response_status = page.goto(server.url + path).status
    assert response_status == status
    text = page.locator("main").inner_text()
    assert words in text
    # The step that fits this page, and nothing that strands a user who never had a dashboard.
    assert page.locator("main .actions .button").all_inner_texts() == [action]
    if status == 403:
        assert page.get_by_role("link", name="Get help").get_attribute("href") == HELP
    if status == 503:
        assert page.get_by_role("button", name="Stop trying by itself").is_visible()
    # No internal codes, no vendor's name: the page is white-labelled.
    seen = text + " " + page.title()
    assert "zipteams" not in seen.lower() and not re.search(r"\b[a-z]+_[a-z_]+\b", seen), seen
    # The request id: whole on one line, inside the screen, with a copy button.
    request_id = page.locator("main code")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id.inner_text())
    assert request_id.evaluate("e => e.getClientRects().length") == 1
    box = request_id.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTHS[width]["width"]
    assert page.get_by_role("button", name="Copy the request id").is_visible()
    assert page.locator(".brand-name").inner_text() == "Acme Portal"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    axe_check(page, f"error-{status}-{width}")
    assert console.csp_violations() == []
    context.close()


def test_a_busy_page_counts_down_and_opens_the_dashboard_by_itself(browser, servers, sim):  # noqa: F811
    sim.fault(status=429, message="Rate limit exceeded. Try again in 3 seconds.", count=1)
    server = servers(ZIPTEAMS_RETRIES="0")
    with signed_in_page(browser) as page:
        console = Console(page)
        assert page.goto(server.url + "/").status == 503
        wait = page.locator("main .wait")
        first = wait.inner_text()
        assert re.fullmatch(r"Trying again by itself in [23] seconds\.", first), first
        page.wait_for_function("() => !document.querySelector('main .wait').textContent.includes(' 3 ')", timeout=3000)
        # Once the wait named by Retry-After is over, the page comes back as the dashboard.
        wait_ready(page, timeout=10000)
        assert page.get_by_test_id("subtenant").inner_text() == "Sales EMEA"
        assert console.csp_violations() == []


# A click on the element, and whether the page's own handler kept it from going anywhere.
PREVENTED = """a => { let prevented = null;
    a.addEventListener('click', e => { prevented = e.defaultPrevented; e.preventDefault(); }, {once: true});
    a.click(); return prevented; }"""


def test_the_countdown_can_be_stopped(browser, servers, sim):  # noqa: F811
    sim.fault(status=429, message="Rate limit exceeded. Try again in 2 seconds.", count=1)
    server = servers(ZIPTEAMS_RETRIES="0")
    with signed_in_page(browser, width="desktop") as page:
        page.context.clock.install()  # the page's timers run on a clock this test moves
        assert page.goto(server.url + "/").status == 503
        again = page.get_by_role("link", name="Try again")
        # "Try again once the wait is over": until then the button says it is unavailable, and is.
        assert again.get_attribute("aria-disabled") == "true"
        axe_check(page, "error-503-waiting-desktop")
        assert again.evaluate(PREVENTED) is True  # a click goes nowhere
        page.get_by_role("button", name="Stop trying by itself").click()
        assert re.fullmatch(r"Not trying again by itself\. You can try again in [12] seconds?\.",
                            page.locator("main .wait").inner_text())
        assert again.get_attribute("aria-disabled") == "true"
        page.clock.run_for(10_000)  # well past the wait and its jitter: the page stayed
        assert page.locator("main").get_attribute("data-status") == "503"
        assert page.locator("main .wait").inner_text() == \
            "Not trying again by itself. Use \u201cTry again\u201d when you are ready."
        assert again.get_attribute("aria-disabled") is None  # the wait is over: it works now
        axe_check(page, "error-503-stopped-desktop")
        with page.expect_navigation():
            again.click()


def test_copy_puts_the_request_id_on_the_clipboard(browser, servers):  # noqa: F811
    server = servers()
    with signed_in_page(browser, width="desktop") as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page.goto(server.url + "/no-such-page")
        page.get_by_role("button", name="Copy the request id").click()
        page.get_by_role("status").filter(has_text="Copied").wait_for(timeout=3000)
        assert page.evaluate("navigator.clipboard.readText()") == page.locator("main code").inner_text()
        axe_check(page, "error-404-copied-desktop")


def test_not_linked_user_can_sign_out_to_use_another_account(browser, servers):  # noqa: F811
    server = servers(GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true", GATEWAY_HELP_URL=HELP,
                     DEMO_EXTRA_USERS=("no-team@demo.example",))
    context = browser.new_context(viewport=WIDTHS["phone"])
    page = context.new_page()
    page.goto(server.url + "/")
    page.get_by_role("button", name="no-team@demo.example").click()
    page.get_by_role("heading", name="Your account is not linked to a team").wait_for()
    page.get_by_role("button", name="Sign out and use another account").click()
    page.get_by_role("heading", name="You are signed out").wait_for()
    axe_check(page, "signed-out-phone")
    page.get_by_role("link", name="Open the dashboard again").click()
    assert page.get_by_role("heading", name="Demo sign-in").is_visible()  # a different account can be picked
    context.close()


# ------------------------------------------------ a partner page framing us
@pytest.fixture
def partner_page():
    pages = {}

    @Request.application
    def serve(request):
        target = request.args.get("src", "")
        html = f"""<!doctype html><html lang="en"><body><h1>Partner portal</h1>
<script>window.events = []; window.addEventListener('message', e => window.events.push({{origin: e.origin, data: e.data}}));</script>
<iframe id="gw" src="{target}" style="width:100%;height:600px"></iframe></body></html>"""
        return Response(html, mimetype="text/html")

    for name in ("allowed", "other"):
        pages[name] = ServerThread(serve).start()
    yield pages
    for server in pages.values():
        server.stop()


def test_status_events_reach_only_the_allowed_parent(browser, servers, partner_page):  # noqa: F811
    allowed = partner_page["allowed"].url
    server = servers(GATEWAY_FRAME_ANCESTORS=f"'self' {allowed}")
    context = browser.new_context(viewport=WIDTHS["desktop"])
    results = {}
    for case, path, headers in [("ready", "/", identity("alice@acme.example")),
                                ("error", "/no-such-page", identity("alice@acme.example")),
                                ("session-ended", "/", {})]:
        context.set_extra_http_headers(headers)
        page = context.new_page()
        page.goto(f"{allowed}/?src={server.url}{path}")
        page.wait_for_function("kind => window.events.some(e => e.data.type === kind)", arg=case, timeout=15000)
        results[case] = page.evaluate("window.events")
        if case == "ready":
            shot(page, "framed-by-partner-desktop")
        page.close()
    for case, events in results.items():
        [event] = [e for e in events if e["data"]["type"] == case]
        assert event["origin"] == server.url
        assert event["data"]["source"] == "zipteams-gateway" and re.fullmatch(r"[0-9a-f]{32}", event["data"]["requestId"])
    # The embed page says it is loading, then ready once the dashboard has really loaded.
    assert [e["data"]["type"] for e in results["ready"] if e["data"]["type"] != "resize"] == ["loading", "ready"]
    assert results["ready"][1]["data"]["status"] == 200
    assert results["error"][0]["data"]["status"] == 404
    assert results["session-ended"][0]["data"]["status"] == 401
    # A site not in GATEWAY_FRAME_ANCESTORS may not frame us, and hears nothing.
    context.set_extra_http_headers(identity("alice@acme.example"))
    page = context.new_page()
    page.goto(f"{partner_page['other'].url}/?src={server.url}/")
    time.sleep(1.5)
    assert page.evaluate("window.events") == []
    context.close()


# ----------------------------------------------------------- several tabs
def test_two_tabs_with_different_teams_each_keep_their_own(browser, servers):  # noqa: F811
    fast = start_sim(poll_ms=700)
    try:
        server = servers(fast)
        with signed_in_page(browser, email="bob@acme.example", width="desktop", groups="emea") as tab_a:
            tab_a.goto(server.url + "/")
            tab_a.get_by_role("button", name="Sales EMEA").click()
            frame_a = wait_ready(tab_a)
            tab_b = tab_a.context.new_page()
            tab_b.goto(server.url + "/")
            tab_b.get_by_test_id("subtenant-select").select_option("acme/sales-us")
            tab_b.get_by_role("button", name="Switch").click()
            tab_b.wait_for_url(server.url + "/?team=acme%2Fsales-us")
            frame_b = wait_ready(tab_b)
            assert frame_b.locator("#app").get_attribute("data-subtenant") == "sales-us"
            before = float(frame_a.locator("#app").get_attribute("data-loaded-at"))
            tab_a.wait_for_function("""() => { const d = document.getElementById('dashboard').contentDocument;
                return Number(d.getElementById('app').dataset.loadedAt) > %f; }""" % (before + 1), timeout=10000)
            # Tab A's dashboard went on refreshing after the switch, and still shows Sales EMEA.
            assert frame_a.locator("#app").get_attribute("data-subtenant") == "sales-emea"
            assert tab_a.get_by_test_id("subtenant").inner_text() == "Sales EMEA"
            shot(tab_a, "two-tabs-a-emea-desktop")
            shot(tab_b, "two-tabs-b-us-desktop")
    finally:
        fast.server.stop()


def test_signing_out_in_one_tab_ends_the_others(browser, servers, sim):  # noqa: F811
    server = servers(GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true")
    context = browser.new_context(viewport=WIDTHS["desktop"])
    tab_a = context.new_page()
    tab_a.goto(server.url + "/")
    tab_a.get_by_role("button", name="alice@acme.example").click()
    wait_ready(tab_a)
    tab_b = context.new_page()
    tab_b.goto(server.url + "/")
    wait_ready(tab_b)
    tab_b.get_by_role("button", name="Sign out").click()
    tab_a.get_by_test_id("session-ended").wait_for(timeout=5000)
    assert tab_a.locator("iframe#dashboard").is_hidden()
    assert tab_a.get_by_role("button", name="Sign out").is_hidden()  # no controls of the ended session
    axe_check(tab_a, "session-ended-desktop")
    tab_b.get_by_role("heading", name="You are signed out").wait_for()
    axe_check(tab_b, "signed-out-desktop")
    # And the server agrees: the old session's next request is refused.
    assert tab_a.evaluate("fetch('/session/status').then(r => r.status)") == 401
    context.close()


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_the_team_picker_says_who_is_signed_in_and_signs_out_every_tab(browser, servers, width):  # noqa: F811
    server = servers()
    with signed_in_page(browser, server.url + "/?team=acme%2Fsales-emea", email="bob@acme.example",
                        width=width, groups="emea") as tab_a:
        wait_ready(tab_a)
        tab_b = tab_a.context.new_page()
        console = Console(tab_b)
        tab_b.goto(server.url + "/select")  # a user on the wrong account is not stuck here
        header = tab_b.locator("header.bar")
        # "Signed in as" is for screen readers; the email is what everyone sees, whole.
        assert " ".join(header.locator(".user").inner_text().split()) == "Signed in as bob@acme.example"
        email = header.locator(".user").bounding_box()
        assert email["x"] >= 0 and email["x"] + email["width"] <= WIDTHS[width]["width"]
        assert tab_b.evaluate("e => e.scrollWidth <= e.clientWidth", header.locator(".user").element_handle())
        axe_check(tab_b, f"picker-account-{width}")
        header.get_by_role("button", name="Sign out").click()
        tab_b.get_by_role("heading", name="You are signed out").wait_for()
        assert tab_b.locator("header.bar .account").count() == 0
        tab_a.get_by_test_id("session-ended").wait_for(timeout=5000)  # the other tab heard it
        assert console.csp_violations() == []


def test_sso_session_gone_shows_session_ended_not_a_broken_frame(browser, servers):  # noqa: F811
    server = servers()
    with signed_in_page(browser, server.url + "/") as page:
        wait_ready(page)
        page.context.set_extra_http_headers({})  # the SSO proxy's session ended: no more identity
        page.evaluate("document.getElementById('dashboard').contentWindow.location.reload()")
        page.get_by_test_id("session-ended").wait_for(timeout=10000)
        assert page.locator("iframe#dashboard").is_hidden()
        axe_check(page, "session-ended-phone")


# --------------------------------------------------------- long-open tabs
@pytest.mark.slow
@pytest.mark.token_in_browser
def test_a_tab_open_for_three_token_lifetimes_still_shows_live_data(browser, servers):  # noqa: F811
    short = start_sim(token_ttl=30, poll_ms=5000)
    try:
        pages, samples = {}, {"proxy": [], "iframe": []}
        for mode in ("proxy", "iframe"):
            server = servers(short, GATEWAY_EMBED_MODE=mode)
            context = browser.new_context(viewport=WIDTHS["desktop"], extra_http_headers=identity("alice@acme.example"))
            page = context.new_page()
            page.goto(server.url + "/")
            wait_ready(page)
            pages[mode] = page
        started = time.monotonic()
        while time.monotonic() - started < 95:
            for mode, page in pages.items():
                if page.locator("iframe#dashboard").is_hidden():
                    state = "hidden"
                else:  # the frame may be cross-origin (iframe mode): ask through Playwright
                    app = page.frame_locator("iframe#dashboard").locator("#app")
                    state = app.get_attribute("data-state", timeout=5000) if app.count() else "loading"
                samples[mode].append(state)
            time.sleep(5)
        for mode, page in pages.items():
            frame = wait_ready(page, timeout=20000)
            loaded_at = float(frame.locator("#app").get_attribute("data-loaded-at"))
            assert time.time() - loaded_at < 15, f"{mode}: data is stale"
            assert frame.locator("#app").get_attribute("data-subtenant") == "sales-emea"
            # Never an expired dashboard on screen: its data calls never failed.
            assert "error" not in samples[mode], (mode, samples[mode])
            shot(page, f"long-open-{mode}-desktop")
        # Each mode went through at least three tokens.
        assert short.stats()["token_requests"] >= 3
    finally:
        short.server.stop()
