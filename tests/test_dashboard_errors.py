"""Proxy mode: a dashboard that fails the frame's own page gets the gateway's error page and one
WARNING naming ZIPTEAMS_DASHBOARD_URL; what the dashboard's scripts ask for passes as it was sent.
(The same in Chromium: test_browser.py.)
"""
import json
import logging
import re

import pytest

from conftest import HTTP_HEAD, JWT_SHAPE, user_headers
from gateway.delivery.proxy import pages

ALICE = user_headers("alice@acme.example")
# What Chromium sends when the embed page's frame opens the dashboard, and when the dashboard's
# script calls fetch() (test_browser.py sees the same headers in a real browser).
FRAME = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "same-origin",
         "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
SCRIPT = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin", "Accept": "*/*"}
TAB = {**FRAME, "Sec-Fetch-Dest": "document"}
OLD_BROWSER = {"Accept": FRAME["Accept"]}  # no Fetch Metadata (Safari before 16.4)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def wrong_url_client(make_app, sim):
    """A gateway whose ZIPTEAMS_DASHBOARD_URL names a path the dashboard's server does not serve."""
    return make_app(ZIPTEAMS_DASHBOARD_URL=sim.url + "/insights/").test_client()


@pytest.mark.parametrize("headers", [FRAME, TAB, OLD_BROWSER], ids=["frame", "tab", "no-fetch-metadata"])
def test_a_wrong_dashboard_url_shows_the_gateways_page_and_warns_once(wrong_url_client, sim, caplog, headers):
    caplog.set_level(logging.INFO)
    response = wrong_url_client.get("/dashboard/?view=week", headers={**ALICE, **headers})
    text = response.get_data(as_text=True)
    assert response.status_code == 502
    assert response.mimetype == "text/html"
    assert response.headers["X-Gateway-Error"] == "dashboard_not_found"
    assert 'data-page="error"' in text and 'data-code="dashboard_not_found"' in text
    assert "The dashboard could not be found" in text
    assert f"<code>{response.headers['X-Request-Id']}</code>" in text  # the request id, to quote
    assert "/insights/" in sim.stats()["dashboard_paths"]  # it did ask the dashboard
    [warning] = warnings_of(caplog)
    assert "ZIPTEAMS_DASHBOARD_URL" in warning and "status=404" in warning
    assert f"{sim.url}/insights/" in warning  # the address tried, without its query
    assert "token" not in warning.replace("ZIPTEAMS", "") and not JWT_SHAPE.search(warning.encode())
    assert not any("zgtoken-" in r.getMessage() or JWT_SHAPE.search(r.getMessage().encode()) for r in caplog.records)


def test_a_wrong_dashboard_url_leaves_the_scripts_answers_as_sent(wrong_url_client, caplog):
    caplog.set_level(logging.INFO)
    for path in ("/dashboard/", "/dashboard/api/summary", "/dashboard/app.js"):
        response = wrong_url_client.get(path, headers={**ALICE, **SCRIPT})
        assert response.status_code == 404, path
        assert response.get_data() == b"not found"  # the upstream's own body
        assert "X-Gateway-Error" not in response.headers
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_failing_dashboard_page_becomes_the_gateways_502(make_app, sim, caplog, status):
    caplog.set_level(logging.INFO)
    client = make_app().test_client()
    sim.fault(dashboard_status=status, count=1)
    response = client.get("/dashboard/", headers={**ALICE, **FRAME})
    text = response.get_data(as_text=True)
    assert response.status_code == 502
    assert response.headers["X-Gateway-Error"] == "dashboard_unavailable"
    assert "The dashboard is unavailable" in text and response.headers["X-Request-Id"] in text
    assert f"<h1>Error {status}</h1>" not in text  # nothing of the upstream's page
    [warning] = warnings_of(caplog)
    assert f"status={status}" in warning and "ZIPTEAMS_DASHBOARD_URL" in warning
    assert client.get("/dashboard/", headers={**ALICE, **FRAME}).status_code == 200  # the fault is over


@pytest.mark.parametrize("status", [404, 500, 503])
def test_a_scripts_failing_call_gets_the_dashboards_own_answer(make_app, sim, caplog, status):
    caplog.set_level(logging.INFO)
    client = make_app().test_client()
    sim.fault(dashboard_status=status, path="/dashboard/api/summary", count=1)
    response = client.get("/dashboard/api/summary", headers={**ALICE, **SCRIPT})
    assert response.status_code == status
    assert response.get_data(as_text=True).endswith(f"<h1>Error {status}</h1>")
    assert "X-Gateway-Error" not in response.headers
    assert warnings_of(caplog) == []


def test_a_missing_page_inside_the_dashboard_is_a_plain_404(make_app, caplog):
    caplog.set_level(logging.INFO)
    client = make_app().test_client()
    response = client.get("/dashboard/reports/none", headers={**ALICE, **FRAME})
    assert response.status_code == 404
    assert response.headers["X-Gateway-Error"] == "not_found"
    assert "Page not found" in response.get_data(as_text=True)
    assert warnings_of(caplog) == []  # the dashboard's own business, not a setup problem
    # Its script asking for the same address gets the dashboard's JSON.
    raw = client.get("/dashboard/reports/none", headers={**ALICE, **SCRIPT})
    assert raw.status_code == 404 and raw.get_json()["error"] == "no such dashboard resource"


def test_a_working_dashboard_page_is_untouched(make_app):
    client = make_app().test_client()
    response = client.get("/dashboard/", headers={**ALICE, **FRAME})
    assert response.status_code == 200 and "Insights for" in response.get_data(as_text=True)


@pytest.mark.parametrize("headers, document", [
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}, True),
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}, True),
    ({"Sec-Fetch-Mode": "nested-navigate", "Sec-Fetch-Dest": "iframe"}, True),
    ({"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Accept": "text/html"}, False),
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"}, False),
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "image"}, False),
    ({"Accept": "text/html,*/*;q=0.8"}, True),
    ({"Accept": "*/*"}, False),
    ({"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}, False),
    ({}, False),
])
def test_what_counts_as_the_frames_own_page(headers, document):
    environ = {"REQUEST_METHOD": "GET",
               **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}}
    assert pages.is_document(environ) is document
    assert pages.is_document({**environ, "REQUEST_METHOD": "HEAD"}) is False


def test_the_address_in_the_log_has_no_user_info_or_query():
    assert pages.where("https://user:pw@dash.example:8443/embed/?token=x", "a/b") == \
        "https://dash.example:8443/embed/a/b"
    assert re.fullmatch(r"http://\[::1\]/d/", pages.where("http://[::1]/d/", ""))


def test_under_gunicorn_one_warning_line_names_the_setting_and_never_the_token(gunicorn, http, sim):
    # The production defaults (gunicorn.conf.py, its worker and log format), a wrong dashboard path.
    from test_gunicorn import log_once

    server = gunicorn(workers=1, ZIPTEAMS_DASHBOARD_URL=sim.url + "/insights/")
    page = http.get(server.url + "/", headers=ALICE, timeout=30)
    placeholder = re.search(r'src="/dashboard/\?token=(zgtoken-[0-9a-f]{32})"', page.text).group(1)
    frame = http.get(server.url + "/dashboard/?token=" + placeholder, headers={**ALICE, **FRAME}, timeout=30)
    assert frame.status_code == 502 and frame.headers["X-Request-Id"] in frame.text
    script = http.get(server.url + "/dashboard/api/summary", headers={**ALICE, **SCRIPT}, timeout=30)
    assert script.status_code == 404 and script.text == "not found"
    text = log_once(server, "ZIPTEAMS_DASHBOARD_URL")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    [warning] = [line for line in lines if line["level"] == "warning"]
    assert warning["request_id"] == frame.headers["X-Request-Id"]
    assert "ZIPTEAMS_DASHBOARD_URL" in warning["message"] and "status=404" in warning["message"]
    assert f"{sim.url}/insights/ " in warning["message"]  # the address tried; its query (the token's place) left out
    assert placeholder not in text and not JWT_SHAPE.search(text.encode())


# ------------------------------------------------------- a dashboard that trickles its answer
SLICE = b"HTTP/1.1 206 Partial Content\r\nContent-Type: text/html\r\nContent-Range: bytes 0-999/5000\r\n"


@pytest.mark.parametrize("at_once, prefix, status, code", [
    (b"", HTTP_HEAD, 504, "dashboard_timeout"),  # a head that never ends
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b"{",
     504, "dashboard_timeout"),  # a short body, read whole
    # A slice of text is read off and asked for whole, twice here (the trickler sends slices only):
    # each slice's body gets ZIPTEAMS_TIMEOUT, then the connection is closed, not waited on.
    (SLICE + b"Content-Length: 1000\r\n\r\n", b"<", 502, "dashboard_unavailable"),
], ids=["head", "short-body", "slice-of-text"])
def test_under_gunicorn_a_trickling_dashboard_gets_a_proxied_call_an_error_within_its_limit(
        gunicorn, trickler, at_once, prefix, status, code):
    # The production start (gevent worker): each byte restarts urllib3's per-read time-out, so only
    # a limit in all (twice ZIPTEAMS_TIMEOUT for the head, once more for a body read whole) ends it.
    import time

    import requests

    dashboard = f"http://127.0.0.1:{trickler(prefix, at_once)}/dashboard/"
    server = gunicorn(workers=1, ZIPTEAMS_DASHBOARD_URL=dashboard, ZIPTEAMS_TIMEOUT="1", GATEWAY_LOG_FORMAT="text")
    with requests.Session() as browser:
        assert browser.get(server.url + "/", headers=ALICE, timeout=10).status_code == 200
        started = time.monotonic()
        answer = browser.get(server.url + "/dashboard/api/summary", headers={
            **ALICE, **SCRIPT, "Accept": "application/json", "Range": "bytes=0-999"}, timeout=15)
        took = time.monotonic() - started
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert 0.9 <= took < 5, took
    from test_gunicorn import log_once

    log = log_once(server, f"status={status}", timeout=5)  # the access line is written after the answer
    assert f"status={status}" in log and "Traceback" not in log, log
