"""A loading page while a team's first token is fetched, instead of a blank browser.

``GET /`` fetches the team's token before it answers, so that a failure upstream
becomes the gateway's full error page rather than a broken frame. When Zipteams is
slow, that used to mean many seconds of a blank page. Now a browser's navigation
waits for the token at most ``LOADING_PAGE_AFTER`` seconds; if it has not come by
then, the browser gets a small loading page at once, which asks for the same
address again with ``wait=1``. That request waits for the same fetch (the token
cache lets one fetch per team run at a time, and the others wait for it) and
answers as before: the embed page, or the same error page after the same time
(a 504 after ``ZIPTEAMS_TIMEOUT``). Browsers keep showing the loading page, whose
timers keep running, until that answer arrives, so it can say when it takes long.

Only browser navigations get the loading page (``Sec-Fetch-Mode: navigate``): a
script, a monitor or a benchmark cannot follow it, and gets the answer as before.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlencode

from flask import render_template

from gateway.tenancy.rules import Match
from gateway.tokens.cache import TokenCache
from gateway.tokens.client import DashboardToken

LOADING_PAGE_AFTER = 1.0  # seconds a navigation waits for a first token before the loading page


def is_navigation(request) -> bool:
    """A browser opening the page, in a tab or a frame (Fetch Metadata; not a script)."""
    environ = request.environ  # directly: a missing header costs werkzeug an exception object
    return environ.get("HTTP_SEC_FETCH_MODE") == "navigate" and \
        environ.get("HTTP_SEC_FETCH_DEST") in ("document", "iframe")


def token_within(cache: TokenCache, tenant: str, subtenant: str, seconds: float) -> DashboardToken | None:
    """The team's token if it arrives within ``seconds``, else None while the fetch goes on.

    A cached token returns at once. Otherwise the fetch runs in a thread of its own (it
    holds the cache's fetch slot, exactly as a request would), so the request can answer
    with the loading page and leave it running; its failure, if it comes in time, is
    raised here as from ``cache.get``.
    """
    if cache.peek(tenant, subtenant) is not None:
        return cache.get(tenant, subtenant)
    done: Future = Future()

    def fetch() -> None:
        try:
            done.set_result(cache.get(tenant, subtenant))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits, as cache.get would raise it
            done.set_exception(exc)

    threading.Thread(target=fetch, name="first-token", daemon=True).start()
    try:
        return done.result(timeout=seconds)
    except FutureTimeout:
        return None


def page(match: Match, chrome: str):
    """The loading page; it opens the same address again with ``wait=1`` at once."""
    params = {"team": match.key, **({"chrome": "none"} if chrome == "none" else {}), "wait": "1"}
    return render_template("loading.html", subtenant=match.subtenant, subtenant_key=match.key,
                           next_url="/?" + urlencode(params), hide_bar=chrome == "none")
