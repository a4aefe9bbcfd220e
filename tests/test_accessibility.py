"""Accessibility in a real Chromium: axe-core on every page in the dark scheme and at 400 %
zoom, the focus ring's contrast on every background, one h1 per page, our own favicon, and
proof that the axe check fails when it should. (Light-scheme pages are checked with axe
where test_experience.py and test_browser.py visit them.)
"""
import re
from pathlib import Path

import pytest

from conftest import axe_check
from test_browser import CHROMIUM, browser  # noqa: F401  (the module-scoped Chromium fixture)
from test_experience import WIDTHS, identity, servers, signed_in_page, wait_ready  # noqa: F401  (servers: a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}"),
]
ZOOMED = {"width": 320, "height": 256}  # 1280 x 1024 at 400 % zoom (WCAG 1.4.10's reflow width)
ZOOMED_SHORT = {"width": 320, "height": 200}  # 1280 x 800 at 400 %
BOB = identity("bob@acme.example", "emea")  # two teams: the picker, and a switcher in the header


def visit(page, server, state: str, sim=None) -> None:
    """Bring ``page`` to one of the states the gateway shows a person."""
    url = server.url
    if state == "busy":  # the dashboard service's rate limit: a countdown, "Try again" waiting for it
        sim.fault(status=429, message="Rate limit exceeded. Try again in 60 seconds.", count=1)
        page.goto(url + "/?team=acme%2Fsales-emea")
        page.locator("main .actions .button[aria-disabled=true]").wait_for()
    elif state == "embed":
        page.goto(url + "/select")
        page.get_by_role("button", name="Sales EMEA").click()
        wait_ready(page)
    elif state == "picker":
        page.goto(url + "/select")
    elif state == "error-404":
        page.goto(url + "/no-such-page")
    elif state == "error-403":
        page.context.set_extra_http_headers(identity("mallory@evil.example"))
        page.goto(url + "/")
    elif state == "signed-out":
        page.goto(url + "/select")
        page.get_by_role("button", name="Sales EMEA").click()
        wait_ready(page)
        if page.get_by_role("button", name="Menu").is_visible():
            page.get_by_role("button", name="Menu").click()
        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("heading", name="You are signed out").wait_for()
    else:
        raise AssertionError(state)


STATES = ["embed", "picker", "error-404", "error-403", "busy", "signed-out"]


# --------------------------------------------------------- the checker
def test_the_axe_check_reports_a_known_violation(browser, servers):  # noqa: F811
    server = servers()
    with signed_in_page(browser, server.url + "/no-such-page", width="desktop") as page:
        axe_check(page, "axe-self-test-clean")  # the page as served passes
        # An image without a text alternative (img-src allows data: URLs, so the CSP lets it load).
        page.evaluate("""() => { const img = document.createElement('img');
            img.src = 'data:image/gif;base64,R0lGODlhAQABAAAAACw='; img.width = 40; img.height = 40;
            document.querySelector('main').appendChild(img); }""")
        with pytest.raises(AssertionError, match=r"image-alt \(critical\)[^\n]*\n\s+at img:"):
            axe_check(page, "axe-self-test-violation")


# ------------------------------------------------------- the dark scheme
@pytest.mark.parametrize("width", sorted(WIDTHS))
@pytest.mark.parametrize("state", STATES)
def test_every_page_in_the_dark_scheme(browser, servers, sim, state, width):  # noqa: F811
    server = servers(ZIPTEAMS_RETRIES="0")
    context = browser.new_context(viewport=WIDTHS[width], color_scheme="dark", extra_http_headers=BOB)
    page = context.new_page()
    visit(page, server, state, sim)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 20, 24)"
    assert page.locator("h1").count() == 1  # one h1 on every page (the embed page's is for screen readers)
    axe_check(page, f"dark-{state}-{width}")
    context.close()


# ---------------------------------------------------------- 400 % zoom
@pytest.mark.parametrize("viewport", [ZOOMED, ZOOMED_SHORT], ids=["320x256", "320x200"])
def test_the_dashboard_keeps_three_quarters_of_the_screen_at_400_percent_zoom(browser, servers, viewport):  # noqa: F811
    server = servers()
    context = browser.new_context(viewport=viewport, extra_http_headers=BOB)
    page = context.new_page()
    visit(page, server, "embed")
    frame = page.locator("iframe#dashboard").bounding_box()
    assert frame["height"] >= 0.75 * viewport["height"], frame
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # The header's actions are a menu away, and the menu fits the screen.
    page.get_by_role("button", name="Menu").click()
    menu = page.locator("#user-menu").bounding_box()
    assert menu["x"] >= 0 and menu["x"] + menu["width"] <= viewport["width"]
    axe_check(page, f"zoom400-embed-menu-{viewport['width']}x{viewport['height']}")
    context.close()


@pytest.mark.parametrize("state", ["picker", "error-404", "error-403", "busy", "signed-out"])
def test_pages_reflow_at_400_percent_zoom(browser, servers, sim, state):  # noqa: F811
    server = servers(ZIPTEAMS_RETRIES="0")
    context = browser.new_context(viewport=ZOOMED, extra_http_headers=BOB)
    page = context.new_page()
    visit(page, server, state, sim)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    account = page.locator("header .account")
    if state != "signed-out":  # who is signed in, and the way out, fit the screen
        for part in (account.locator(".user"), account.get_by_role("button", name="Sign out")):
            box = part.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= ZOOMED["width"], box
    if state.startswith("error"):
        assert page.locator("main code").evaluate("e => e.getClientRects().length") == 1  # the request id, whole
    axe_check(page, f"zoom400-{state}")
    context.close()


# ------------------------------------------------------------ focus ring
_RING = """() => {
  const el = document.activeElement;
  const rgb = c => { const n = (c.match(/[\\d.]+/g) || []).map(Number); return n.length >= 3 ? n : null; };
  const opaque = c => c && (c.length === 3 || c[3] > 0.99);
  // What is drawn around the element, where the ring goes: the first opaque background
  // under a point just outside it (the skip link floats over the header, not its parent).
  const box = el.getBoundingClientRect();
  let behind = null;
  for (const node of document.elementsFromPoint(Math.max(box.left - 4, 0), box.top + box.height / 2)) {
    if (node === el || el.contains(node)) continue;
    const bg = rgb(getComputedStyle(node).backgroundColor);
    if (opaque(bg)) { behind = bg; break; }
  }
  const style = getComputedStyle(el);
  return {what: el.tagName + ' ' + (el.textContent || el.className).trim().slice(0, 30),
          iframe: el.tagName === 'IFRAME', body: el === document.body,
          outline: rgb(style.outlineColor), width: parseFloat(style.outlineWidth), styleName: style.outlineStyle,
          gap: rgb(style.boxShadow), behind: behind || [255, 255, 255]};
}"""


def _luminance(rgb):
    def channel(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width, state", [("desktop", "embed"), ("phone", "embed"), ("desktop", "picker"),
                                          ("phone", "picker"), ("phone", "error-403"), ("desktop", "signed-out")])
def test_the_focus_ring_stands_out_on_every_background(browser, servers, scheme, width, state):  # noqa: F811
    # A light brand colour (4.6:1 with white, just inside what config.py accepts) is the hardest case.
    server = servers(GATEWAY_HELP_URL="/help", GATEWAY_BRAND_COLOR="#757575")
    context = browser.new_context(viewport=WIDTHS[width], color_scheme=scheme, extra_http_headers=BOB)
    page = context.new_page()
    visit(page, server, state)
    if width == "phone" and state == "embed":
        page.get_by_role("button", name="Menu").click()  # its items are on the menu's own background
        page.evaluate("document.activeElement.blur()")
    seen = []
    for _ in range(12):
        page.keyboard.press("Tab")
        ring = page.evaluate(_RING)
        if ring["iframe"] or ring["body"] or ring["what"] in {s["what"] for s in seen}:
            break  # into the dashboard's frame, or round again
        seen.append(ring)
        assert ring["styleName"] == "solid" and ring["width"] >= 2, ring
        assert ring["gap"] and contrast(ring["outline"], ring["gap"]) >= 3, ring
        best = max(contrast(ring["outline"], ring["behind"]), contrast(ring["gap"], ring["behind"]))
        assert best >= 3, f"{ring['what']}: focus ring {best:.2f}:1 against {ring['behind']}"
    assert len(seen) >= 2, seen  # the skip link and at least one control were checked
    context.close()


# --------------------------------------------------------------- favicon
def test_the_favicon_is_ours_and_nothing_is_missing_on_first_load(browser, servers):  # noqa: F811
    server = servers()
    with signed_in_page(browser, width="desktop") as page:
        failed = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(server.url + "/")
        wait_ready(page)
        assert failed == []
        icon = page.locator("link[rel=icon]").get_attribute("href")
        answer = page.request.get(server.url + icon)
        assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml")
        assert 'fill="#0b5d3b"' in answer.text()  # the partner's colour
        legacy = page.request.get(server.url + "/favicon.ico")  # for browsers that ask without reading the link
        assert legacy.status == 200 and legacy.url.endswith(icon)


def test_the_embed_page_names_itself_for_screen_readers(browser, servers):  # noqa: F811
    server = servers()
    with signed_in_page(browser, server.url + "/") as page:
        wait_ready(page)
        heading = page.get_by_role("heading", level=1)
        assert heading.inner_text() == "Sales EMEA dashboard"
        assert re.search(r"visually-hidden", heading.get_attribute("class"))
