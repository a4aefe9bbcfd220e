"""The demo teaches the next step: the environment that points the admin CLI at its stand-in, and a
partner's page on another site framing the gateway (Chromium, Secure + SameSite=None cookies)."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from test_browser import CHROMIUM, browser  # noqa: F401  (the module-scoped Chromium fixture)

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ZIPTEAMS_", "OIDC_"))}


class Demo:
    """``python -m gateway demo`` as a person starts it; its banner read up to the CLI lines."""

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", "0", "--sim-port", "0", *args],
                                     cwd=ROOT, env={**CLEAN_ENV, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "flask --app wsgi gateway check":
                return
        self.stop()
        raise AssertionError("the demo did not print its CLI lines:\n" + "\n".join(self.lines))

    def url(self, pattern: str) -> str:
        return next(m.group(1) for line in self.lines if (m := re.search(pattern, line)))

    def env_file(self) -> Path:
        """The file the ``. FILE`` line names: the CLI's environment, credentials included."""
        return Path(next(words[1] for line in self.lines if (words := shlex.split(line))[:1] == ["."]))

    def exports(self) -> dict[str, str]:
        """The ``export NAME=value`` lines of that file, read as a shell would."""
        found = {}
        for line in self.env_file().read_text().splitlines():
            words = shlex.split(line)
            if words[:1] == ["export"]:
                name, _, value = words[1].partition("=")
                found[name] = value
        return found

    def stop(self, how: int = signal.SIGTERM) -> None:
        if self.proc.stdout.closed:
            return
        self.proc.send_signal(how)
        self.rest = self.proc.communicate(timeout=10)[0]  # what it wrote after the CLI lines, to its end


@pytest.fixture
def demos():
    started = []

    def start(*args, env=None):
        started.append(Demo(*args, env=env))
        return started[-1]

    yield start
    for demo in started:
        demo.stop()


def gateway_check(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "gateway", "check"], cwd=ROOT,
                          env={**CLEAN_ENV, **env}, capture_output=True, text=True, timeout=60)


def test_the_environment_the_demo_prints_makes_gateway_check_pass_against_its_stand_in(demos):
    demo = demos()
    exports = demo.exports()
    assert {"ZIPTEAMS_API_URL", "ZIPTEAMS_DASHBOARD_URL", "ZIPTEAMS_API_KEY", "ZIPTEAMS_API_SECRET",
            "GATEWAY_SECRET_KEY", "GATEWAY_TENANTS_FILE"} <= set(exports)
    stand_in = demo.url(r"Stand-in Zipteams at (http://\S+)\.")
    assert exports["ZIPTEAMS_API_URL"] == stand_in + "/api/v1"
    done = gateway_check(exports)
    assert done.returncode == 0, done.stdout + done.stderr
    # The printed secret is what makes it pass: another one is refused by the stand-in.
    refused = gateway_check({**exports, "ZIPTEAMS_API_SECRET": "not-the-demo-" + "x" * 20})
    assert refused.returncode != 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["term", "hangup", "ctrl-c"])
def test_the_demo_keeps_its_credentials_off_standard_output_in_a_file_only_its_user_reads(demos, how):
    import requests

    demo = demos()
    env_file = demo.env_file()
    exports = demo.exports()
    secrets_ = [exports["ZIPTEAMS_API_KEY"], exports["ZIPTEAMS_API_SECRET"], exports["GATEWAY_SECRET_KEY"]]
    assert os.stat(env_file).st_mode & 0o777 == 0o600
    assert os.stat(env_file.parent).st_mode & 0o777 == 0o700
    # A request, so its log lines come too: a supervisor keeps all of standard output.
    requests.get(demo.url(r"open (http://\S+)/ in your browser") + "/healthz", timeout=10).raise_for_status()
    demo.stop(how)  # stopped, its terminal closed (hang-up), or Ctrl+C
    assert demo.proc.returncode == 0
    output = "\n".join(demo.lines) + demo.rest
    assert "request method=GET path=/healthz" in output  # the log lines were read
    for value in secrets_:
        assert value not in output
    assert not env_file.exists()  # removed with the demo's directory


def test_the_demo_honours_secure_and_samesite_none_from_the_environment(demos):
    import requests

    demo = demos(env={"GATEWAY_COOKIE_SAMESITE": "None", "GATEWAY_COOKIE_SECURE": "true"})
    login = requests.get(demo.url(r"open (http://\S+)/ in your browser") + "/login", timeout=10)
    cookie = login.headers["Set-Cookie"]
    assert cookie.startswith("__Host-zg_session=")
    assert {"Secure", "SameSite=None", "Partitioned"} <= {part.strip() for part in cookie.split(";")}


# ---------------------------------------------------------------- cross-site, in Chromium
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}")
def test_a_user_signs_in_and_sees_the_dashboard_inside_a_partner_page_on_another_site(demos, browser):  # noqa: F811
    demo = demos("--partner-port", "0")
    gateway = demo.url(r"open (http://\S+)/ in your browser")
    partner = demo.url(r"from another site: open (http://\S+)/")
    assert gateway.startswith("http://localhost:") and partner.startswith("http://127.0.0.1:")  # two sites
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(partner + "/")
        framed = page.frame_locator("#insights iframe")
        framed.get_by_role("button", name="alice@acme.example").click()  # the demo sign-in, inside the frame
        framed.frame_locator("#dashboard").locator("#app[data-state=ready][data-subtenant=sales-emea]").wait_for()
        page.wait_for_function("document.querySelector('#team').options.length === 1")
        assert page.locator("#team option").inner_text() == "Sales EMEA"
        session = [c for c in context.cookies() if c["name"] == "__Host-zg_session"]
        assert session and session[0]["secure"] and session[0]["sameSite"] == "None"
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}")
def test_with_samesite_lax_the_framed_sign_in_cannot_hold_a_session(demos, browser):  # noqa: F811
    """What the settings above are for: Lax cookies are not kept in another site's frame."""
    demo = demos("--partner-port", "0", env={"GATEWAY_COOKIE_SAMESITE": "Lax"})
    partner = demo.url(r"from another site: open (http://\S+)/")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(partner + "/")
        framed = page.frame_locator("#insights iframe")
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/login")) as posted:
            framed.get_by_role("button", name="alice@acme.example").click()
        assert posted.value.status == 403  # the form's CSRF token is in a session the browser never kept
        assert framed.locator("#dashboard").count() == 0
        assert not [c for c in context.cookies() if "zg_session" in c["name"]]
    finally:
        context.close()
