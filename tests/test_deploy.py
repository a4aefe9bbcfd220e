"""deploy/ as a deployer uses it: the systemd unit's ExecStart run with deploy/gateway.env.example
(values substituted for this test's stand-in, keys and ports), nginx from deploy/nginx.conf in
front, a user signed in through them, and `gateway check` passing with the same environment."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bench.common import start_nginx
from conftest import API_KEY, API_SECRET, DATA, LEAKS, ROOT, SECRET_KEY, free_port

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "zipteams-gateway.service"
ENV_EXAMPLE = DEPLOY / "gateway.env.example"
INSTALL_DIR = "/opt/zipteams-gateway"  # where the unit expects the code (and .venv)
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
AUD, ISS = "deploy-test-aud", "https://sso.partner.test"


def unit_directives(text: str) -> dict[str, str]:
    """[Service] NAME=value lines of a unit (each name once in ours)."""
    section, found = None, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            found.setdefault(name, value)
    return found


def environment_file(text: str) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: NAME=value, comments on lines of their own."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"line {number} is not NAME=value: {line}"
        assert " #" not in value, f"line {number}: systemd would keep this comment in the value"
        found[name] = value.strip("'\"")
    return found


def test_the_environment_example_is_a_systemd_environment_file_with_only_known_settings():
    from gateway.config import BY_NAME

    values = environment_file(ENV_EXAMPLE.read_text())
    known = set(BY_NAME) | {f"{name}_FILE" for name in BY_NAME}
    assert set(values) <= known, set(values) - known
    # The required settings are there (as files for the secrets).
    assert {"ZIPTEAMS_API_KEY_FILE", "ZIPTEAMS_API_SECRET_FILE", "GATEWAY_SECRET_KEY_FILE",
            "GATEWAY_TENANTS_FILE"} <= set(values)
    assert unit_directives(UNIT.read_text())["EnvironmentFile"] == "/etc/zipteams-gateway/gateway.env"


def test_a_comment_after_a_value_is_caught():
    with pytest.raises(AssertionError, match="keep this comment"):
        environment_file("PORT=8000   # the port\n")


def installed_unit(tmp_path: Path, env_file: Path) -> Path:
    """The unit with the install paths of this checkout (code here, virtualenv sys.prefix)."""
    text = UNIT.read_text().replace(INSTALL_DIR + "/.venv", sys.prefix).replace(INSTALL_DIR, str(ROOT))
    text = text.replace("/etc/zipteams-gateway/gateway.env", str(env_file))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


@pytest.mark.skipif(not SYSTEMD_ANALYZE and os.environ.get("CI") != "true", reason="systemd-analyze not installed")
def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path):
    assert SYSTEMD_ANALYZE, "systemd-analyze is missing (apt-get install systemd)"
    unit = installed_unit(tmp_path, ENV_EXAMPLE)
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # And it can fail: a directive systemd ignores is reported.
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "sometimes" in done.stderr


def deployed_environment(tmp_path: Path, sim, keys, port: int, public_url: str) -> dict[str, str]:
    """The example's values, each replaced by this test's own: nothing added but the stand-in's URLs."""
    secrets_dir = tmp_path / "credentials"
    secrets_dir.mkdir(mode=0o700)
    files = {"ZIPTEAMS_API_KEY_FILE": API_KEY, "ZIPTEAMS_API_SECRET_FILE": API_SECRET,
             "GATEWAY_SECRET_KEY_FILE": SECRET_KEY}
    values = environment_file(ENV_EXAMPLE.read_text())
    ours = {
        "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml"),
        "GATEWAY_PUBLIC_URL": public_url,
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "GATEWAY_ASSERTION_JWKS_URL": keys.url,
        "GATEWAY_ASSERTION_AUDIENCE": AUD,
        "GATEWAY_ASSERTION_ISSUER": ISS,
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
    }
    for name, secret in files.items():
        path = secrets_dir / name.lower()
        path.write_text(secret)
        path.chmod(0o600)
        ours[name] = str(path)
    for name in values:
        values[name] = ours.get(name, values[name])
    assert not [v for v in values.values() if "<" in v or "/etc/" in v or "partner.example" in v], values
    # Production talks to Zipteams' own URLs (the defaults); this test to its stand-in.
    values.update(ZIPTEAMS_API_URL=sim.api_url, ZIPTEAMS_DASHBOARD_URL=sim.dashboard_url)
    return values


def exec_start(directives: dict[str, str], env: dict[str, str]) -> list[str]:
    """The unit's ExecStart as systemd runs it: ${NAME} from the environment, the install path ours."""
    line = directives["ExecStart"].replace(INSTALL_DIR + "/.venv", sys.prefix)
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line)
    return line.split()


@pytest.mark.skipif(not NGINX and os.environ.get("CI") != "true", reason="nginx is not installed")
def test_the_unit_and_env_file_behind_the_shipped_nginx_sign_a_user_in(sim, keys, tmp_path):
    directives = unit_directives(UNIT.read_text())
    assert directives["WorkingDirectory"] == INSTALL_DIR
    port = free_port()
    workdir = tmp_path / "nginx"
    workdir.mkdir(mode=0o700)
    front, url = start_nginx(f"http://127.0.0.1:{port}", workdir)
    try:
        run_unit(directives, deployed_environment(tmp_path, sim, keys, port, url), keys, port, url, tmp_path)
    finally:
        front.terminate()
        front.wait(timeout=10)


def run_unit(directives, env, keys, port, url, tmp_path):
    run_dir = tmp_path / "run"  # RuntimeDirectory= (%t/zipteams-gateway)
    run_dir.mkdir(mode=0o700)
    unit_env = dict(item.split("=", 1) for item in [directives["Environment"]])
    unit_env = {k: v.replace("%t/zipteams-gateway", str(run_dir)) for k, v in unit_env.items()}
    log = tmp_path / "gunicorn.log"
    LEAKS.log_files.append(log)
    with open(log, "wb") as out:
        gateway = subprocess.Popen(
            exec_start(directives, env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            # Only what systemd gives: its PATH, the unit's and the file's variables (no drain in a test).
            env={"PATH": os.environ.get("PATH", ""), **unit_env, **env, "GATEWAY_DRAIN_DELAY": "0"})
    try:
        wait_until_ready(url, gateway, log)
        now = int(time.time())
        assertion = keys.sign({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "email": "alice@acme.example"})
        with requests.Session() as browser:
            page = browser.get(url + "/", headers={"Cf-Access-Jwt-Assertion": assertion}, timeout=10)
            assert page.status_code == 200 and "alice@acme.example" in page.text and "Sales EMEA" in page.text
            dashboard = browser.get(url + "/dashboard/", headers={"Cf-Access-Jwt-Assertion": assertion}, timeout=10)
            assert dashboard.status_code == 200
            # Only the signed assertion counts: none, or a plain header, is refused.
            assert browser.get(url + "/", timeout=10).status_code == 401
        assert requests.get(url + "/", headers={"X-Forwarded-Email": "alice@acme.example"},
                            timeout=10).status_code == 401
        # Loopback only, as the unit binds it.
        assert re.search(rf"Listening at: http://127\.0\.0\.1:{port}\b", log.read_text())
        # Where `gateway check` fits: the same environment, before users arrive.
        check = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "gateway", "check"], cwd=ROOT,
                               env={"PATH": os.environ.get("PATH", ""), **env}, capture_output=True, text=True,
                               timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()


def wait_until_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until nginx gets an answer from the gateway (its /healthz), or the gateway exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not answer through nginx:\n" + log.read_text(errors="replace"))
