"""The dashboard's own document: when its failure becomes the gateway's page instead.

When the dashboard answers the frame's document (a browser navigation into
``/dashboard/``) with a 404 or a 5xx, the user would be left with the raw upstream
error inside the embed page. Those answers are replaced by the gateway's error page
(``gateway.errors``) with the request id, and the operator gets one WARNING that
names ``ZIPTEAMS_DASHBOARD_URL`` and the status. Everything the dashboard's scripts
ask for (fetch, XHR, images, styles) still gets the dashboard's answer as sent: a
script reads its own errors, and this gateway does not second-guess them.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from gateway.errors import NotFound, UpstreamFailure

# Fetch Metadata (sent by Chromium since 76, Firefox since 90, Safari since 16.4): a document
# the browser navigates to, in a tab or a frame. "nested-navigate" is what Chromium 76-79 sent
# for frames. fetch() and XHR are "cors"/"same-origin"/"no-cors" with dest "empty", whatever
# headers the script sets, and a script cannot forge these headers: browsers own them.
_NAVIGATE = frozenset({"navigate", "nested-navigate"})
_DOCUMENT = frozenset({"document", "iframe", "frame"})


def is_document(environ) -> bool:
    """Whether the browser is loading this answer as a page (the frame's document), not for a script.

    Without Fetch Metadata (older browsers), a navigation is told by its Accept header:
    every browser asks for ``text/html`` first when it opens a page, while fetch() and XHR
    send ``*/*`` unless their script chose otherwise. A script of such a browser that asks
    for HTML itself would get the gateway's page for a 404 or 5xx: the price of not
    leaving a raw error on screen for everyone else.
    """
    method = environ.get("REQUEST_METHOD")
    if method not in ("GET", "POST"):  # a navigation is a link (GET) or a form (POST)
        return False
    mode = environ.get("HTTP_SEC_FETCH_MODE")
    if mode is not None:
        return mode in _NAVIGATE and environ.get("HTTP_SEC_FETCH_DEST", "document") in _DOCUMENT
    accept = environ.get("HTTP_ACCEPT", "")
    return accept.lstrip().lower().startswith("text/html") and "HTTP_X_REQUESTED_WITH" not in environ


class DashboardNotFound(UpstreamFailure):
    """The dashboard's entry page is not where ``ZIPTEAMS_DASHBOARD_URL`` says: a setup problem."""

    code = "dashboard_not_found"
    title = "The dashboard could not be found"
    message = "The dashboard service has no page at the address this site is set up to use."
    hint = "This needs fixing on our side, not yours: contact support and quote the request id."


def where(base_url: str, rest: str) -> str:
    """The address tried, for the log: scheme, host, port and path only (no user-info, no query)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{rest}"


def failed_document(status: int, environ) -> bool:
    """A 404 or 5xx answer to a page the browser opens: the gateway shows its own page instead."""
    return (status == 404 or status >= 500) and is_document(environ)


def refusal(status: int, base_url: str, rest: str) -> NotFound | UpstreamFailure:
    """The gateway's error for a document the dashboard failed with (``failed_document``).

    404 on the entry page (what the frame opens first): the setting points at the wrong
    place, so the page says so and stays (no retrying by itself; 502, as for any unusable
    answer from the server behind a gateway). 404 further in: the dashboard has no such
    page of its own, a plain 404 "Page not found" (INFO in the log: not a setup problem).
    5xx: the dashboard is failing, or the setting names the wrong service; 502
    "unavailable", which the embed page retries by itself. Both 502s log one WARNING
    (``errors.handle_gateway_error``) naming the setting, the status and the address tried.
    """
    tried = where(base_url, rest)
    if status == 404 and rest:
        return NotFound(f"the dashboard has no page at {tried} (upstream status=404)")
    if status == 404:
        return DashboardNotFound(f"the dashboard answered its entry page {tried} with upstream status=404: "
                                 "ZIPTEAMS_DASHBOARD_URL does not point at the dashboard")
    return UpstreamFailure(f"the dashboard answered the page {tried} with upstream status={status}: the "
                           "dashboard is failing, or ZIPTEAMS_DASHBOARD_URL points at the wrong service")
