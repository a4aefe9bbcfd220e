"""The leak oracle and the CI skip rule can fail: the canaries in leak_canary.py, run in a subprocess."""
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

pytestmark = pytest.mark.smoke  # the oracle must be proven on every supported Python

LEAKING = {
    "test_canary_response_header_carries_the_api_secret":
        "API secret reached response from the test client: GET /leak (header X-Canary)",
    "test_canary_dashboard_request_carries_the_api_secret_in_a_custom_header":
        "API secret reached the stand-in's dashboard at http://127.0.0.1:",
    "test_canary_dashboard_request_carries_a_token_in_another_query_parameter":
        "a dashboard token the stand-in minted reached the stand-in's dashboard",
    "test_canary_log_line_carries_a_registered_secret": "canary secret reached a log line (logger canary, WARNING)",
    # On the request line, not a line of its own: one line per request (tests/test_audit.py).
    "test_canary_audit_event_field_carries_a_registered_secret":
        "canary secret reached a log line (logger gateway.ops.logs, INFO)",
    "test_canary_log_file_carries_the_api_secret": "API secret reached a log file (canary.log)",
    "test_canary_marker_does_not_excuse_the_api_secret": "API secret reached response from the test client",
}
BROWSER = ("test_canary_browser_receives_the_api_secret", "API secret reached response from Chromium http://127.0.0.1:")
CLEAN = ["test_control_marker_lets_a_minted_token_reach_a_response",
         "test_control_token_in_its_designated_places_is_clean"]


def run_canaries(workdir, *args, ci: bool) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """Each canary's outcomes as (junit element, its text), and pytest's output."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci:
        env["CI"] = "true"
    report = workdir / f"canary-{'ci' if ci else 'local'}.xml"
    # --show-capture=no: pytest's replay of the captured logs would show the logged canary
    # secret, and what is under test here is what the oracle itself prints.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/leak_canary.py", "-p", "no:cacheprovider", "-q",
         "--show-capture=no", f"--junitxml={report}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    outcomes: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(report).iter("testcase"):
        outcomes[case.get("name")] = [(child.tag, (child.get("message") or "") + "\n" + (child.text or ""))
                                      for child in case if child.tag in ("failure", "error", "skipped")]
    return outcomes, done.stdout + done.stderr


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return run_canaries(tmp_path_factory.mktemp("canary"), ci=False)


def test_every_leaking_canary_errors_with_the_oracles_message_and_the_controls_pass(local_run):
    outcomes, output = local_run
    for name, message in LEAKING.items():
        assert [tag for tag, _ in outcomes[name]] == ["error"], f"{name}: {outcomes[name]}\n{output[-3000:]}"
        assert "leak oracle: a secret left the server" in outcomes[name][0][1]
        assert message in outcomes[name][0][1], outcomes[name]
    for name in CLEAN:
        assert outcomes[name] == [], f"{name}: {outcomes[name]}"


def test_the_browser_canary_errors_where_chromium_runs(local_run):
    outcomes, _ = local_run
    name, message = BROWSER
    [(tag, text)] = outcomes[name]
    if tag == "skipped":  # no Chromium or Playwright here; with CI=true this run would have failed
        assert os.environ.get("CI") != "true", text
    else:
        assert tag == "error" and message in text, outcomes[name]


def test_oracle_messages_name_secrets_but_never_show_them(local_run):
    _, output = local_run
    assert "leak oracle" in output and "canary secret reached" in output
    assert "canary-registered-secret" not in output
    # The subprocess draws its own API secret and key; whatever they were, neither is printed.
    assert not re.search(r"zsecret-[0-9a-f]{40}", output)
    assert not re.search(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ", output)


def test_a_skip_stays_a_skip_without_ci(local_run):
    outcomes, output = local_run
    [(tag, text)] = outcomes["test_canary_skips"]
    assert tag == "skipped" and "canary: a missing tool" in text
    assert "1 skipped" in output


def test_a_skip_fails_under_ci_but_an_xfail_does_not(tmp_path):
    outcomes, output = run_canaries(tmp_path, "-k", "skips or xfails", ci=True)
    [(tag, text)] = outcomes["test_canary_skips"]
    assert tag == "failure", output[-2000:]
    assert "CI=true forbids skips: canary: a missing tool" in text
    [(tag, _)] = outcomes["test_canary_xfails"]
    assert tag == "skipped"  # junit's word for an xfail; the terminal says XFAIL
    assert "1 failed" in output and "1 xfailed" in output
