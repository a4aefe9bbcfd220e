"""Deliberately leaking (and skipping) tests that prove the leak oracle and the CI skip rule can fail.

Not collected in normal runs (the name does not match test_*.py); tests/test_leak_oracle.py
runs this file in a subprocess and checks that each canary is reported as it should be.
"""
import logging
import os
from pathlib import Path

import pytest
import requests
from flask import Flask

from conftest import API_KEY, API_SECRET, LEAKS, RecordingClient, record_browser
from gateway.sim.server import ServerThread

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")

CANARY_SECRET = "canary-registered-secret-0123456789"


def leaky_client(**headers):
    app = Flask(__name__)

    @app.get("/leak")
    def leak():
        return "fine", 200, headers

    app.test_client_class = RecordingClient
    return app.test_client()


def mint(sim) -> str:
    answer = requests.get(sim.api_url + "/partner/dashboard/auth/token", timeout=5, headers={
        "x-api-key": API_KEY, "x-api-secret": API_SECRET, "x-tenant-id": "acme", "x-sub-tenant-id": "sales-emea"})
    answer.raise_for_status()
    return answer.json()["data"]["token"]


def test_canary_response_header_carries_the_api_secret():
    assert leaky_client(**{"X-Canary": API_SECRET}).get("/leak").status_code == 200


def test_canary_dashboard_request_carries_the_api_secret_in_a_custom_header(sim):
    requests.get(sim.dashboard_url, headers={"X-Canary": API_SECRET}, timeout=5)


def test_canary_dashboard_request_carries_a_token_in_another_query_parameter(sim):
    token = mint(sim)
    requests.get(sim.dashboard_url, params={"token": token, "canary": token}, timeout=5)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}")
def test_canary_browser_receives_the_api_secret():
    playwright_api = pytest.importorskip("playwright.sync_api")
    app = Flask(__name__)
    app.get("/")(lambda: f"<!doctype html><title>canary</title><p>{API_SECRET}</p>")
    with ServerThread(app) as server, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        record_browser(browser)
        context = browser.new_context()
        context.new_page().goto(server.url + "/")
        context.close()
        browser.close()


def test_canary_log_line_carries_a_registered_secret(leaks):
    leaks.secret(CANARY_SECRET, "canary secret")
    logging.getLogger("canary").warning("about to say it: %s", CANARY_SECRET)


def test_canary_audit_event_field_carries_a_registered_secret(leaks):
    """An event's field rides on its request's line (gateway.ops.audit): the oracle reads it there."""
    from gateway.ops import audit, logs

    leaks.secret(CANARY_SECRET, "canary secret")
    app = Flask(__name__)
    app.config.update(TESTING=True, GATEWAY_TRUSTED_PROXIES=())
    logs.init_app(app)

    @app.get("/event")
    def event():
        audit.event("canary", note=f"about to say it: {CANARY_SECRET}")
        return "fine"

    assert app.test_client().get("/event").status_code == 200


def test_canary_log_file_carries_the_api_secret(tmp_path):
    log = tmp_path / "canary.log"
    LEAKS.log_files.append(log)
    log.write_text(f"[INFO] config loaded secret={API_SECRET}\n")


@pytest.mark.token_in_browser
def test_canary_marker_does_not_excuse_the_api_secret(sim):
    token = mint(sim)
    leaky_client(**{"X-Token": token, "X-Canary": API_SECRET}).get("/leak")


@pytest.mark.token_in_browser
def test_control_marker_lets_a_minted_token_reach_a_response(sim):
    leaky_client(**{"X-Token": mint(sim)}).get("/leak")


def test_control_token_in_its_designated_places_is_clean(sim, leaks):
    leaks.secret(CANARY_SECRET, "canary secret")
    token = mint(sim)
    assert requests.get(sim.dashboard_url, params={"token": token}, timeout=5).status_code == 200
    bearer = requests.get(sim.dashboard_url + "api/summary", timeout=5, headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 200
    logging.getLogger("canary").warning("nothing secret here")
    assert leaky_client(**{"X-Fine": "nothing to see"}).get("/leak").status_code == 200


def test_canary_skips():
    pytest.skip("canary: a missing tool")


@pytest.mark.xfail(reason="canary: an expected failure is not a skip", strict=True)
def test_canary_xfails():
    raise AssertionError("expected")
