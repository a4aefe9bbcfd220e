"""The command line: the stand-in and the demo start as real servers a person can use."""
import re
import subprocess
import sys
import time

import pytest

from conftest import API_SECRET, ROOT, free_port, recording_session


def run(args, pattern, timeout=30):
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT,
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


def test_demo_command_serves_a_working_login(processes):
    port = free_port()
    proc, match = run(["demo", "--port", str(port)], r"open (http://\S+/) in your browser")
    processes.append(proc)
    with recording_session() as http:
        page = http.get(match.group(1))
        assert page.status_code == 200 and "Demo sign-in" in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        done = http.post(match.group(1) + "login", data={"email": "alice@acme.example", "csrf_token": csrf})
        assert done.status_code == 200 and "Sales EMEA" in done.text
