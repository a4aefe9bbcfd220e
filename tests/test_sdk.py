"""The gateway inside a partner's app, in Chromium: a host page on another loopback origin frames
it through the host SDK (/sdk.js), in proxy and in iframe mode; what the page does when the
dashboard cannot be shown, is slow to come, fails while open, or is left alone; and an
iframe-mode token renewed in place. axe-core checks every state (screenshots in test-artifacts/).

Servers and the browser are shared by the module; the page clock (Playwright) and the app's
clock (CLOCK) stand in for waiting.
"""
import re
import secrets
from pathlib import Path

import pytest
from werkzeug.wrappers import Request, Response

from conftest import DATA, FakeClock, axe_check, base_config, start_sim
from gateway import create_app
from gateway.sim.server import ServerThread
from test_browser import CHROMIUM, browser  # noqa: F401  (the module-scoped Chromium fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}"),
]
DESKTOP = {"width": 1280, "height": 800}
REQUEST_ID = re.compile(r"[0-9a-f]{32}")


# ------------------------------------------------------------ a partner's page
@Request.application
def host_page(request):
    """The partner's page: the SDK from the gateway, under a strict CSP of the partner's own."""
    nonce = secrets.token_urlsafe(12)
    gateway = request.args["gw"]
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Partner portal</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'nonce-{nonce}' {gateway}; frame-src {gateway}">
</head><body><h1>Partner portal</h1><main id="slot"></main>
<script type="module" nonce="{nonce}">
import {{ embed }} from "{gateway}/sdk.js";
window.events = [];
const insights = embed(document.getElementById("slot"), {request.args.get("options", "{}")});
for (const type of ["loading", "ready", "reconnecting", "error", "session-ended", "signed-out", "team-changed", "resize",
                    "sign-in-required", "choose-team"]) {{
  insights.on(type, (event) => window.events.push(event));
}}
window.insights = insights;
</script></body></html>"""
    return Response(html, mimetype="text/html")


@pytest.fixture(scope="module")
def hosts():
    started = {name: ServerThread(host_page).start() for name in ("listed", "other")}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    """The tests' rules, plus carol, who is in two teams by her address (demo sign-in has no groups)."""
    rules = (DATA / "tenants.toml").read_text()
    for email in ("alice@acme.example", "bob@acme.example"):
        rules = rules.replace(f'emails = ["{email}"]', f'emails = ["{email}", "carol@acme.example"]')
    path = tmp_path_factory.mktemp("rules") / "tenants.toml"
    path.write_text(rules)
    return str(path)


@pytest.fixture(scope="module")
def gateways(_shared_sim, hosts, tenants):
    """One gateway per embed mode, framable by the listed host only."""
    started = {}
    for mode in ("proxy", "iframe"):
        # Signed in with a session cookie, as behind any sign-in; identity headers added by the
        # test browser would also go to the partner's origin and make its module load need CORS.
        config = base_config(_shared_sim, GATEWAY_COOKIE_SECURE="false", GATEWAY_EMBED_MODE=mode,
                             GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true", GATEWAY_TENANTS_FILE=tenants,
                             GATEWAY_FRAME_ANCESTORS=f"'self' {hosts['listed'].url}")
        started[mode] = ServerThread(create_app(config)).start()
    yield started
    for server in started.values():
        server.stop()


def sign_in(context, gateway, email):
    """The demo sign-in, through the context's own cookie jar (no page to render)."""
    form = context.request.get(gateway.url + "/login").text()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    done = context.request.post(gateway.url + "/login", form={"email": email, "csrf_token": csrf, "next": "/healthz"})
    assert done.ok, done.status


@pytest.fixture
def open_context(browser):  # noqa: F811
    """New browser contexts, closed at the end of the test even when it fails (nothing runs on into the next)."""
    made = []

    def make(**kwargs):
        made.append(browser.new_context(**kwargs))
        return made[-1]

    yield make
    for context in made:
        context.close()


def open_host(context, host, gateway, options="{}"):
    page = context.new_page()
    page.goto(f"{host.url}/?gw={gateway.url}&options={options}")
    return page


def events(page, since=0):
    """The SDK events the host page heard (resize aside: it comes whenever the size changes)."""
    return [e for e in page.evaluate("window.events")[since:] if e["type"] != "resize"]


def wait_event(page, kind, since=0, timeout=15000):
    page.wait_for_function("([kind, since]) => (window.events || []).slice(since).some(e => e.type === kind)",
                           arg=[kind, since], timeout=timeout)
    return events(page, since)


def gateway_frame(page, gateway):
    return next(f for f in page.frames if f.url.startswith(gateway.url) and f.parent_frame == page.main_frame)


# -------------------------------------------------------- the journey, both modes
@pytest.mark.token_in_browser  # the iframe-mode case puts the token in the frame's address by design
@pytest.mark.parametrize("mode", ["proxy", "iframe"])
def test_a_listed_partner_page_embeds_and_drives_the_dashboard(open_context, gateways, hosts, sim, mode):
    gateway = gateways[mode]
    context = open_context(viewport=DESKTOP)
    sign_in(context, gateway, "carol@acme.example")  # two teams
    console = []
    context.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page = open_host(context, hosts["listed"], gateway,
                     '{"team": "acme/sales-emea", "chrome": "none", "autoResize": true}')
    seen = wait_event(page, "ready")
    assert [e["type"] for e in seen] == ["loading", "ready"]
    loading, ready = seen
    assert loading["team"] == {"id": "acme/sales-emea", "name": "Sales EMEA"}
    assert ready["team"] == {"id": "acme/sales-emea", "name": "Sales EMEA"} and ready["status"] == 200
    assert [t["id"] for t in ready["teams"]] == ["acme/sales-emea", "acme/sales-us"]
    assert ready["verified"] is True and REQUEST_ID.fullmatch(ready["requestId"])
    # The dashboard is visible, inside the gateway's page, inside the partner's.
    dashboard = page.frame_locator("#slot iframe").frame_locator("#dashboard")
    assert dashboard.locator("#app[data-state=ready]").get_attribute("data-subtenant") == "sales-emea"
    framed = gateway_frame(page, gateway)
    # chrome=none: the partner shows the user and sign-out; our header is not there.
    assert framed.locator("header.bar").is_hidden()
    # resize: the content's height, and autoResize sized the frame to it.
    page.wait_for_function("() => window.events.some(e => e.type === 'resize' && e.height > 100)")
    height = [e for e in page.evaluate("window.events") if e["type"] == "resize"][-1]["height"]
    page.wait_for_function("h => Math.abs(document.querySelector('#slot iframe').offsetHeight - h) <= 1", arg=height)
    axe_check(framed, f"sdk-{mode}-ready")

    # setTeam: the gateway loads the other team; the address inside names it.
    mark = len(page.evaluate("window.events"))
    page.evaluate("insights.setTeam('acme/sales-us')")
    seen = wait_event(page, "ready", mark)
    assert [e["type"] for e in seen] == ["loading", "team-changed", "ready"]
    assert seen[1]["team"]["id"] == "acme/sales-us" and seen[1]["previous"]["id"] == "acme/sales-emea"
    assert seen[2]["team"] == {"id": "acme/sales-us", "name": "Sales US"}
    dashboard.locator("#app[data-state=ready][data-subtenant=sales-us]").wait_for()
    assert "team=acme%2Fsales-us" in gateway_frame(page, gateway).url

    # Not one of the user's teams: refused in the page, and nothing is loaded.
    mark = len(page.evaluate("window.events"))
    page.evaluate("insights.setTeam('globex/ops')")
    seen = wait_event(page, "error", mark)
    assert seen == [{"type": "error", "code": "team_not_allowed", "status": 403, "requestId": seen[0]["requestId"],
                     "retryAfter": None}]

    # refresh: the dashboard loads again.
    mark = len(page.evaluate("window.events"))
    page.evaluate("insights.refresh()")
    assert [e["type"] for e in wait_event(page, "ready", mark)] == ["loading", "ready"]

    # signOut: the gateway's session ends and the partner is told.
    mark = len(page.evaluate("window.events"))
    page.evaluate("insights.signOut()")
    assert wait_event(page, "signed-out", mark)[-1]["type"] == "signed-out"
    axe_check(gateway_frame(page, gateway), f"sdk-{mode}-signed-out")
    # Nothing was posted to a listed origin that is not the parent's ('self' here), nothing refused.
    assert not [line for line in console if "postMessage" in line or "Content Security Policy" in line], console
    context.close()


def test_a_page_not_listed_is_refused_and_told_so(open_context, gateways, hosts, sim):
    context = open_context(viewport=DESKTOP)
    pages = {}
    for mode, gateway in gateways.items():  # both modes side by side
        sign_in(context, gateway, "alice@acme.example")
        pages[mode] = open_host(context, hosts["other"], gateway)
    for mode, page in pages.items():
        seen = wait_event(page, "error")
        assert seen == [{"type": "error", "code": "frame_refused", "status": None, "requestId": None,
                         "retryAfter": None}], mode
    pages["proxy"].wait_for_timeout(500)
    for page in pages.values():
        assert [e["type"] for e in events(page)] == ["error"]  # never "ready"
    context.close()


# -------------------------------------------------- a frame that cannot be shown
def test_a_dashboard_frame_the_browser_refuses_is_an_error_never_ready(open_context, gateways, hosts, sim):
    gateway = gateways["proxy"]
    context = open_context(viewport=DESKTOP)
    sign_in(context, gateway, "alice@acme.example")

    def refuse_framing(route):  # a dashboard whose own policy forbids framing narrows ours
        answer = route.fetch()
        route.fulfill(response=answer, headers={**answer.headers, "content-security-policy": "frame-ancestors 'none'"})

    context.route(f"{gateway.url}/dashboard/?*", refuse_framing)
    page = open_host(context, hosts["listed"], gateway)
    seen = wait_event(page, "error")
    assert [e["type"] for e in seen] == ["loading", "error"] and seen[1]["code"] == "frame_blocked"
    page.wait_for_timeout(300)
    assert "ready" not in [e["type"] for e in events(page)]
    framed = gateway_frame(page, gateway)
    panel = framed.get_by_test_id("failed")
    assert panel.is_visible() and "could not be shown here" in panel.inner_text()
    axe_check(framed, "sdk-proxy-frame-blocked")
    context.close()


def test_a_dashboard_frame_refused_before_the_pages_script_ran_is_still_an_error(open_context, gateways, hosts, sim):
    """On a busy machine the refused frame's only load event can come before embed.js runs."""
    gateway = gateways["proxy"]
    context = open_context(viewport=DESKTOP)
    sign_in(context, gateway, "alice@acme.example")
    refused = []

    def refuse_framing(route):
        answer = route.fetch()
        route.fulfill(response=answer, headers={**answer.headers, "content-security-policy": "frame-ancestors 'none'"})
        refused.append(True)

    def script_after_the_refusal(route):
        answer = route.fetch()
        page = route.request.frame.page
        while not refused:
            page.wait_for_timeout(50)  # gives Playwright's dispatcher the frame's request meanwhile
        page.wait_for_timeout(500)  # and the refused frame its load event
        route.fulfill(response=answer)

    context.route(f"{gateway.url}/dashboard/?*", refuse_framing)
    context.route(f"{gateway.url}/static/embed.js*", script_after_the_refusal)
    page = open_host(context, hosts["listed"], gateway)
    seen = wait_event(page, "error")
    assert [e["type"] for e in seen] == ["loading", "error"] and seen[1]["code"] == "frame_blocked"
    context.close()


@pytest.fixture
def gateway_with(sim):
    """A gateway of its own (a cold token cache, settings of the test's choosing)."""
    started = []

    def start(sim_=None, **settings):
        config = base_config(sim_ or sim, GATEWAY_COOKIE_SECURE="false", **settings)
        started.append(ServerThread(create_app(config)).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


# ------------------------------------------------- a slow first token (loading page)
def test_a_slow_first_token_shows_a_loading_page_and_the_504_path_is_unchanged(open_context, gateway_with, sim):
    context = open_context(viewport={"width": 390, "height": 844},
                                  extra_http_headers={"X-Forwarded-Email": "alice@acme.example"})
    context.clock.install()  # the page's "taking long" timer runs on a clock the test moves
    # The loading page asks for the dashboard again at once; a 204 answer to that keeps the
    # browser on the loading page (as a slow answer would) while the test looks at it.
    again = re.compile(r".*[?&]wait=1")
    context.route(again, lambda route: route.fulfill(status=204))
    slow = gateway_with()
    sim.fault(delay=1.5, count=1)
    page = context.new_page()
    page.goto(slow.url + "/", wait_until="commit")
    page.get_by_role("heading", name="Loading the Sales EMEA dashboard").wait_for()
    assert page.get_by_test_id("slow").is_hidden()
    axe_check(page, "loading-phone")
    page.clock.run_for(4500)
    assert page.get_by_test_id("slow").is_visible()  # said plainly once it takes long
    axe_check(page, "loading-slow-phone")
    # The same request, waiting this time: the dashboard, and an address that names the team.
    context.unroute(again)
    page.evaluate("location.replace(document.body.dataset.next)")
    page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]").wait_for(timeout=15000)
    assert page.url == slow.url + "/?team=acme%2Fsales-emea"
    assert sim.stats()["token_requests"] == 1
    # Zipteams slower than the timeout: the loading page, then the same 504 page as ever.
    failing = gateway_with(ZIPTEAMS_TIMEOUT="1.5", ZIPTEAMS_RETRIES="0")
    sim.fault(delay=4, count=1)
    documents = []
    page.on("response", lambda r: documents.append((r.status, r.url)) if r.request.resource_type == "document" else None)
    page.goto(failing.url + "/", wait_until="commit")
    page.locator("main[data-status='504']").wait_for(timeout=10000)
    assert documents == [(200, failing.url + "/"), (504, failing.url + "/?team=acme%2Fsales-emea&wait=1")]
    assert page.get_by_role("heading", level=1).inner_text() == "The dashboard took too long"
    context.close()


# --------------------------------------------------------- honest idle sessions
def test_an_untouched_tab_ends_at_the_idle_limit_and_a_used_one_does_not(open_context, gateway_with, sim):
    clock = FakeClock()  # the gateway's; each tab's timers run on Playwright's clock
    gateway = gateway_with(GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true", GATEWAY_SESSION_IDLE="120", CLOCK=clock)
    tabs = {}
    for name in ("untouched", "used"):
        context = open_context(viewport=DESKTOP)
        context.clock.install()
        sign_in(context, gateway, "alice@acme.example")
        page = context.new_page()
        page.goto(gateway.url + "/")
        page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]").wait_for()
        tabs[name] = page
    polls = sim.stats()["dashboard_paths"].count("/dashboard/api/summary")
    clock.advance(70)
    # A person uses one tab (in the dashboard itself); the other tab only polls, as dashboards do.
    tabs["used"].frame_locator("iframe#dashboard").locator("h1").click()
    for page in tabs.values():
        page.clock.run_for(61_000)
    for _ in range(30):  # the polls' answers (4 a tab) and the activity signal's request
        if sim.stats()["dashboard_paths"].count("/dashboard/api/summary") >= polls + 8:
            break
        tabs["used"].wait_for_timeout(100)
    else:
        raise AssertionError("the dashboards did not poll")
    clock.advance(60)  # 130 s after the untouched tab was last used by a person
    for page in tabs.values():
        page.clock.run_for(30_000)  # the page's session check
    untouched = tabs["untouched"]
    untouched.get_by_test_id("session-ended").wait_for(timeout=5000)
    assert untouched.locator("iframe#dashboard").is_hidden()
    # No stale controls: the ended session's user, team and sign-out are gone.
    assert untouched.locator(".bar .who").is_hidden() and untouched.get_by_test_id("subtenant").is_hidden()
    link = untouched.get_by_role("link", name="Sign in again").get_attribute("href")
    assert link == "/login?next=%2F%3Fteam%3Dacme%252Fsales-emea"  # back to the same team
    axe_check(untouched, "idle-session-ended-desktop")
    used = tabs["used"]
    assert used.evaluate("fetch('/session/status').then(r => r.status)") == 200
    assert used.get_by_test_id("session-ended").is_hidden() and used.locator("iframe#dashboard").is_visible()
    for page in tabs.values():
        page.context.close()


# ------------------------------------------------------ failures while it is open
def test_mid_session_failures_show_the_gateways_panel_and_recover_without_a_reload(open_context, gateway_with, sim):
    clock = FakeClock()  # the gateway's: ages the token past the proxy's 30 s before it drops a refused one
    gateway = gateway_with(CLOCK=clock, ZIPTEAMS_RETRIES="0", GATEWAY_BREAKER_FAILURES="100")
    context = open_context(viewport={"width": 390, "height": 844},
                                  extra_http_headers={"X-Forwarded-Email": "alice@acme.example"})
    context.clock.install()  # the dashboard's polling and the page's retries run on a clock the test moves
    page = context.new_page()
    page.goto(gateway.url + "/")
    page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]").wait_for()
    page.evaluate("window.stayed = true")  # gone if the page itself were reloaded
    paused = page.get_by_test_id("paused")

    # Zipteams rotates the token early: the dashboard's next poll is refused (the token is fresh,
    # so the proxy passes the refusal on). The gateway's panel, not the raw refusal.
    sim.http.post(sim.url + "/_sim/revoke", timeout=5).raise_for_status()
    page.clock.run_for(15_000)
    page.frame_locator("iframe#dashboard").locator("#app[data-state=error]").wait_for(state="attached")  # its raw error...
    page.clock.run_for(15_000)  # ...until the page's next session check hears of it from the proxy
    paused.wait_for()
    assert "refused this page's access" in paused.inner_text()
    assert page.locator("iframe#dashboard").is_hidden()
    assert REQUEST_ID.fullmatch(paused.locator("code").inner_text())
    axe_check(page, "reconnecting-refused-phone")

    # The gateway drops the refused token, and Zipteams fails to give a new one: its 502, said plainly.
    clock.advance(31)
    sim.fault(status=500, count=100)
    page.clock.run_for(1_500)
    paused.get_by_text("The dashboard is unavailable").wait_for()
    assert "Trying again in" in paused.inner_text() and paused.get_by_role("button", name="Try again now").is_visible()
    assert REQUEST_ID.fullmatch(paused.locator("code").inner_text())
    axe_check(page, "reconnecting-unavailable-phone")

    # Zipteams is back: the page notices by itself and shows the dashboard again.
    sim.http.delete(sim.url + "/_sim/faults", timeout=5).raise_for_status()
    page.clock.run_for(5_000)
    page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]").wait_for()
    assert paused.is_hidden() and page.locator("iframe#dashboard").is_visible()
    assert page.evaluate("window.stayed") is True
    context.close()


# ---------------------------------------------- iframe mode: a new token in place
@pytest.mark.token_in_browser  # iframe mode: the token is in the frame's address by design
def test_iframe_mode_renews_the_token_without_reloading_the_dashboard(open_context, gateway_with):
    clock = FakeClock()
    short = start_sim(clock=clock, token_ttl=600)  # the gateway and its stand-in share a clock the test moves
    try:
        gateway = gateway_with(short, CLOCK=clock, GATEWAY_EMBED_MODE="iframe")
        context = open_context(viewport=DESKTOP, extra_http_headers={"X-Forwarded-Email": "alice@acme.example"})
        context.clock.install()
        page = context.new_page()
        page.goto(gateway.url + "/")
        dashboard = page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]")
        dashboard.wait_for()
        frame = next(f for f in page.frames if f.url.startswith(short.dashboard_url))
        frame.evaluate("window.stayed = true")  # gone if the dashboard were reloaded
        # 405 s on, three quarters of the token's usable life: the gateway refreshes it, and the
        # page fetches the new address and hands its token to the dashboard (postMessage).
        clock.advance(406)
        page.clock.run_for(406_000)
        for _ in range(50):  # the gateway's refresh, in the background
            if short.stats()["token_requests"] >= 2:
                break
            page.wait_for_timeout(100)
        renewed = page.frame_locator("iframe#dashboard").locator("#app[data-renewed='1'][data-state=ready]")
        for _ in range(5):
            page.clock.run_for(2_500)  # the page asks again (every 2 s until the new token is there)
            if renewed.count():
                break
            page.wait_for_timeout(300)
        renewed.wait_for(timeout=3000)
        assert frame.evaluate("window.stayed") is True
        for _ in range(30):  # the dashboard's next call, with the new token
            sent = {h[1] for r in short.requests() if r["path"] == "/dashboard/api/summary"
                    for h in r["headers"] if h[0] == "Authorization"}
            if len(sent) == 2:
                break
            page.wait_for_timeout(100)
        assert len(sent) == 2  # the first token, then the new one, in the same dashboard
        assert page.get_by_test_id("paused").is_hidden()
        context.close()
    finally:
        short.server.stop()


def test_a_frame_that_asks_the_user_to_sign_in_or_choose_is_not_reported_refused(open_context, gateways, hosts):
    """The sign-in page and the team picker say what they wait for; only silence is frame_refused."""
    gateway = gateways["proxy"]
    context = open_context(viewport=DESKTOP)
    page = open_host(context, hosts["listed"], gateway)
    seen = wait_event(page, "sign-in-required")
    frame = gateway_frame(page, gateway)
    frame.get_by_role("button", name=re.compile("carol@acme.example")).click()  # two teams: the picker next
    seen = wait_event(page, "choose-team")
    page.wait_for_timeout(2000)  # past the SDK's refused-frame timer
    assert "error" not in [e["type"] for e in events(page)], events(page)
    assert [e["type"] for e in seen][:2] == ["sign-in-required", "choose-team"]
