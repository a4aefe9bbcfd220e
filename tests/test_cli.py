"""The command line: the stand-in and the demo start as real servers a person can use."""
import argparse
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import API_SECRET, ROOT, free_port, recording_session
from gateway import create_app
from gateway.__main__ import demo_config


def run(args, pattern, timeout=30, env=None):
    # Only what a shell would pass, plus ``env``: the demo reads the environment's settings.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ZIPTEAMS_"))}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT, env={**base, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return proc, match
    proc.kill()
    raise AssertionError("no match in output:\n" + "".join(lines))


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_sim_command_serves_the_token_api(processes):
    port = free_port()
    proc, _ = run(["sim", "--port", str(port), "--partner", f"k:{API_SECRET}", "--rate-limit", "1"],
                  r"listening on (http://\S+)")
    processes.append(proc)
    with recording_session() as http:
        url = f"http://127.0.0.1:{port}/api/v1/partner/dashboard/auth/token"
        ok = http.get(url, headers={"x-api-key": "k", "x-api-secret": API_SECRET,
                                    "x-tenant-id": "t", "x-sub-tenant-id": "s"})
        assert ok.status_code == 200 and ok.json()["code"] == "RESPONSE_SUCCESS"
        limited = http.get(url, headers={"x-api-key": "k", "x-api-secret": API_SECRET,
                                         "x-tenant-id": "t", "x-sub-tenant-id": "s"})
        assert limited.status_code == 429
        assert limited.json() == {"success": False,
                                  "message": limited.json()["message"]}
        assert re.fullmatch(r"Rate limit exceeded\. Try again in \d+ seconds\.", limited.json()["message"])
        forbidden = http.get(url, headers={"x-api-key": "k", "x-api-secret": "nope"})
        assert forbidden.status_code == 403 and forbidden.json() == {"success": False, "message": "Forbidden"}


def test_sim_checks_run_in_the_spec_order(sim, http):
    url = sim.api_url + "/partner/dashboard/auth/token"
    from conftest import API_KEY
    good = {"x-api-key": API_KEY, "x-api-secret": API_SECRET}
    cases = [({}, 403, "Forbidden"),
             ({**good}, 400, "Tenant ID is required"),
             ({**good, "x-sub-tenant-id": "s"}, 400, "Tenant ID is required"),
             ({**good, "x-tenant-id": "t"}, 400, "Subtenant ID is required")]
    for headers, status, message in cases:
        response = http.get(url, headers=headers)
        assert (response.status_code, response.json()) == (status, {"success": False, "message": message})


def _demo_login(http, base: str, email: str):
    page = http.get(base + "login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return http.post(base + "login", data={"email": email, "csrf_token": csrf})


@pytest.mark.smoke
def test_demo_command_serves_a_working_login(processes):
    port = free_port()
    proc, match = run(["demo", "--port", str(port), "--sim-port", "0"], r"open (http://\S+/) in your browser")
    processes.append(proc)
    with recording_session() as http:
        page = http.get(match.group(1))
        assert page.status_code == 200 and "Demo sign-in" in page.text
        done = _demo_login(http, match.group(1), "alice@acme.example")
        assert done.status_code == 200 and "Sales EMEA" in done.text


def test_a_demo_stopped_with_sigterm_removes_its_state_directory(processes, tmp_path):
    """Its state directory holds signed-in users' session ids: inside the gateway's private state
    directory (never the shared temporary one), and not left behind."""
    state, temp = tmp_path / "state", tmp_path / "temp"
    temp.mkdir(mode=0o700)
    proc, _ = run(["demo", "--port", str(free_port()), "--sim-port", "0"], r"in your browser",
                  env={"TMPDIR": str(temp), "GATEWAY_STATE_DIR": str(state)})
    processes.append(proc)
    assert [p.name for p in state.iterdir() if p.name.startswith("demo-")]
    assert list(temp.iterdir()) == []
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert not [p.name for p in state.iterdir() if p.name.startswith("demo-")]


def test_demo_honours_the_environment_and_has_users_for_every_case(processes):
    port, sim_port = free_port(), free_port()
    env = {"GATEWAY_BRAND_NAME": "Acme Portal", "GATEWAY_BRAND_COLOR": "#0b5d3b", "GATEWAY_EMBED_MODE": "iframe",
           "GATEWAY_HELP_URL": "https://help.acme.example/", "WEB_CONCURRENCY": "4"}
    proc, match = run(["demo", "--port", str(port), "--sim-port", str(sim_port)],
                      r"\((\w+) mode\): open (http://\S+/) in your browser.*", env=env)
    processes.append(proc)
    assert match.group(1) == "iframe"
    assert f"Stand-in Zipteams at http://127.0.0.1:{sim_port}." in proc.stdout.readline()
    base = match.group(2)
    with recording_session() as http:
        login = http.get(base + "login")
        assert "Acme Portal" in login.text and "#0b5d3b" in http.get(base + "brand.css").text
        # A user in several teams, and one in none.
        assert re.search(r'value="carol@acme.example">carol@acme.example\s*<span class="teams">2 teams', login.text)
        assert re.search(r'value="no-team@demo.example">no-team@demo.example\s*<span class="teams">no team', login.text)
        refused = _demo_login(http, base, "no-team@demo.example")
        assert refused.status_code == 403 and "not linked to a team" in refused.text
        assert "https://help.acme.example/" in refused.text and "Sign out and use another account" in refused.text
    with recording_session() as http:
        chooser = _demo_login(http, base, "carol@acme.example")
        assert chooser.url.endswith("/select") and "Sales US" in chooser.text


def test_the_demo_is_one_process_whatever_web_concurrency_says(tmp_path):
    # The rate budget toward the stand-in is computed per worker from WEB_CONCURRENCY:
    # the demo's single process must have all of it.
    args = argparse.Namespace(mode=None, tenants=None)
    environment = {"WEB_CONCURRENCY": "4", "ZIPTEAMS_MAX_RPM": "12", "GATEWAY_SESSION_IDLE": "120",
                   "ZIPTEAMS_API_SECRET_FILE": str(tmp_path / "not-used"), "GATEWAY_AUTH_MODE": "oidc"}
    config = demo_config(environment, args, "http://127.0.0.1:9", "demo-key", "demo-secret-" + "x" * 20,
                         str(tmp_path / "state"))
    app = create_app(config)
    assert app.config["WEB_CONCURRENCY"] == 1 and app.config["ZIPTEAMS_MAX_RPM"] == 12
    assert app.config["GATEWAY_SESSION_IDLE"] == 120 and app.config["GATEWAY_AUTH_MODE"] == "demo"
    assert app.config["ZIPTEAMS_API_SECRET"].startswith("demo-secret-")  # the stand-in's, not the file's


def _help_options(text: str) -> dict[str, str]:
    """``--option METAVAR`` -> its help text, from argparse's --help output."""
    options, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        found = re.match(r"  (--[a-z-]+(?: \S+)?)(?:\s{2,}(\S.*))?$", line)
        if found:
            current = found.group(1)
            options[current] = found.group(2) or ""
        elif current and line.startswith(" " * 8) and line.strip():
            options[current] = (options[current] + " " + line.strip()).strip()
        else:
            current = None
    return options


def test_the_readme_documents_the_demo_options_as_help_prints_them():
    shown = subprocess.run([sys.executable, "-m", "gateway", "demo", "--help"], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    from_help = _help_options(shown)
    assert {"--port PORT", "--sim-port PORT", "--mode {proxy,iframe}", "--token-ttl SECONDS"} <= set(from_help)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Its options, as `python -m gateway demo --help` prints them:", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    from_readme = dict(re.findall(r"^\| `([^`]+)` \| (.+?) \|$", section, flags=re.MULTILINE))
    assert from_readme == from_help


def test_check_shows_a_tokens_claims_cut_to_a_readable_length(capsys):
    """A token's claims are the vendor's: a 20 MB token must not print 20 MB (review of #24)."""
    import base64
    import json

    from gateway.admin.cli import CLAIMS_SHOWN, _describe
    from gateway.tokens.client import parse_token

    def segment(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"tenantId": "acme", "subTenantId": "t1", "iat": 1700000000, "exp": 1700086400, "pad": "x" * 100000}
    token = parse_token(f"{segment({'alg': 'HS256'})}.{segment(claims)}.c2ln", "acme", "t1", now=1700000001)
    _describe(token)
    shown = capsys.readouterr().out
    claims_line = next(line for line in shown.splitlines() if line.strip().startswith("claims:"))
    assert len(claims_line) < CLAIMS_SHOWN + 100 and "characters)" in claims_line
    assert "expires: 2023-11-15" in shown
