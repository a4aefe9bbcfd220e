"""``gateway check`` as a preflight of the whole path, the CLI without settings, and the start-up check."""
import json
import logging
import re
import socket
import subprocess
import sys

import pytest
from werkzeug.wrappers import Request, Response

from conftest import HTTP_HEAD, REDIS_BULK, API_KEY, API_SECRET, JWT_SHAPE, ROOT, SECRET_KEY, DATA, free_port
from gateway import config
from gateway.admin import sanity
from gateway.sim import create_sim_app
from gateway.sim.server import ServerThread
from test_ops import flask_cli

PASSWORD = "Redis-Pa55word-never-shown"


def failures(result, what: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(what + ":") and "FAILED" in line]


# ------------------------------------------------------------ the CLI without settings
def bare_flask(*args, env=None):
    """The command as a new user types it: no environment at all beyond ``env``."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "gateway", *args], cwd=ROOT,
                          env=env or {}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [[], ["check"], ["explain"], ["tenants"]])
def test_help_works_with_no_environment_at_all(command):
    result = bare_flask(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and not result.stderr


def test_one_check_run_lists_every_missing_and_invalid_setting_without_echoing_secrets():
    result = bare_flask("check", env={"ZIPTEAMS_API_SECRET": API_SECRET, "GATEWAY_SECRET_KEY": "short-but-secret",
                                      "ZIPTEAMS_TIMEOUT": "-1", "GATEWAY_COOKIE_SAMESITE": "None",
                                      "GATEWAY_COOKIE_SECURE": "false"})
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert lines[0] == "settings: 5 problems, to fix before anything else can be checked:"
    for name in ("ZIPTEAMS_API_KEY (or ZIPTEAMS_API_KEY_FILE) is required", "ZIPTEAMS_TIMEOUT '-1' is invalid",
                 "GATEWAY_SECRET_KEY is invalid", "GATEWAY_TENANTS_FILE is required",
                 "GATEWAY_COOKIE_SAMESITE=None needs GATEWAY_COOKIE_SECURE=true"):
        assert any(line.strip().startswith(name) for line in lines[1:]), name
    assert "short-but-secret" not in result.stderr + result.stdout and API_SECRET not in result.stderr


def test_an_invalid_setting_does_not_hide_what_the_sign_in_mode_still_needs():
    result = bare_flask("check", env={"GATEWAY_AUTH_MODE": "oidc", "GATEWAY_PUBLIC_URL": "http://u:p@x/"})
    assert result.returncode == 3
    for name in ("GATEWAY_PUBLIC_URL", "OIDC_ISSUER is required", "OIDC_CLIENT_ID is required",
                 "OIDC_CLIENT_SECRET is required"):
        assert name in result.stderr, (name, result.stderr)


def test_the_tenants_file_is_checked_in_the_same_run_as_the_settings(tmp_path):
    bad = tmp_path / "tenants.toml"
    bad.write_text('[[subtenant]]\ntenant = "t"\nid = "s"\nname = "n"\nemails = ["nope"]\n')
    result = bare_flask("check", env={"GATEWAY_TENANTS_FILE": str(bad)})
    assert result.returncode == 3
    assert result.stderr.startswith("settings: 3 problems")
    assert result.stderr.splitlines()[-1].startswith("tenants file: ") and "'emails' entry 'nope'" in result.stderr


def test_every_command_refuses_with_exit_3_and_the_problems_when_settings_are_missing():
    for command in (["tenants"], ["explain", "a@b.example"]):
        result = bare_flask(*command)
        assert result.returncode == 3 and "GATEWAY_TENANTS_FILE is required" in result.stderr


def test_an_invalid_tenants_file_is_exit_3_naming_it(sim, tmp_path):
    bad = tmp_path / "tenants.toml"
    bad.write_text('[[subtenant]]\ntenant = "t"\nid = "s"\nname = "n"\nemails = ["nope"]\n')
    result = flask_cli(sim, "check", GATEWAY_TENANTS_FILE=str(bad))
    assert result.returncode == 3
    assert result.stderr.startswith("tenants file: 1 problem") and "'emails' entry 'nope'" in result.stderr


# --------------------------------------------------------------------- the whole path
def test_a_good_configuration_passes_every_hop(sim):
    result = flask_cli(sim, "check")
    assert result.returncode == 0, result.stderr
    assert "token request for acme/sales-emea: ok" in result.stdout
    assert f"dashboard: ok (200 text/html from {sim.dashboard_url} with a token for acme/sales-emea)" in result.stdout
    assert "public URL" not in result.stdout  # not set, nothing to say
    assert "frame ancestors: ok ('self')" in result.stdout
    assert not JWT_SHAPE.search((result.stdout + result.stderr).encode())


@pytest.fixture
def unwatched_sim():
    """A stand-in of its own, unseen by the leak oracle: with a wrong ZIPTEAMS_API_URL the partner
    key goes to whatever path was configured, which is the very mistake reproduced here."""
    server = ServerThread(create_sim_app({API_KEY: API_SECRET})).start()
    yield server
    server.stop()


def test_an_api_url_without_api_v1_names_the_setting_the_url_tried_and_the_fix(sim, unwatched_sim):
    result = flask_cli(sim, "check", ZIPTEAMS_API_URL=unwatched_sim.url)
    assert result.returncode == 1
    [line] = failures(result, "token request for acme/sales-emea")
    assert "FAILED (zipteams_unexpected_status): ZIPTEAMS_API_URL:" in line
    assert "answered with undocumented status 404" in line
    assert f"(tried {unwatched_sim.url}/partner/dashboard/auth/token)" in line
    assert "fix: ZIPTEAMS_API_URL is the API's base URL, ending in /api/v1" in line
    assert f"try {unwatched_sim.url}/api/v1" in line
    assert API_SECRET not in result.stderr + result.stdout and API_KEY not in result.stderr


def test_a_wrong_api_host_names_the_setting_the_url_tried_and_the_fix(sim):
    wrong = f"http://127.0.0.1:{free_port()}/api/v1"
    result = flask_cli(sim, "check", ZIPTEAMS_API_URL=wrong)
    assert result.returncode == 1
    [line] = failures(result, "token request for acme/sales-emea")
    assert "FAILED (zipteams_unreachable): ZIPTEAMS_API_URL: connection to" in line
    assert f"(tried {wrong}/partner/dashboard/auth/token)" in line
    assert "fix: check the host and port in ZIPTEAMS_API_URL" in line


def test_a_wrong_dashboard_url_fails_the_check_naming_it(sim):
    wrong = sim.url + "/insights/"
    result = flask_cli(sim, "check", ZIPTEAMS_DASHBOARD_URL=wrong)
    assert result.returncode == 1
    assert "token request for acme/sales-emea: ok" in result.stdout  # the token itself was fine
    [line] = failures(result, "dashboard")
    assert line.startswith("dashboard: FAILED: ZIPTEAMS_DASHBOARD_URL: answered 404")
    assert f"(tried {wrong})" in line and "fix: check the path in ZIPTEAMS_DASHBOARD_URL" in line
    assert not JWT_SHAPE.search((result.stdout + result.stderr).encode())


def test_the_dashboard_is_fetched_through_the_gateways_own_proxy_code(sim):
    """The proxy's own request: the token in its designated place and the proxy's forwarding headers."""
    result = flask_cli(sim, "check", GATEWAY_PROXY_TOKEN_IN="header:Authorization")
    assert result.returncode == 0, result.stderr
    [seen] = [r for r in sim.requests() if r["path"] == "/dashboard/"]
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["authorization"].startswith("Bearer ") and "token" not in seen["query"]
    assert headers["accept-encoding"] == "identity" and headers["x-forwarded-for"] == "127.0.0.1"


@pytest.fixture
def odd_dashboard():
    """A dashboard that answers JSON at its entry page, or redirects echoing the token in the Location."""
    @Request.application
    def serve(request):
        if request.path == "/json/":
            return Response('{"ok": true}', mimetype="application/json")
        if request.path == "/in-path/":
            return Response("", 302, headers={"Location": f"https://login.example/login/{request.args['token']}/start"})
        return Response("", 302, headers={"Location": "https://login.example/start?token=" + request.args["token"]})

    server = ServerThread(serve).start()
    yield server
    server.stop()


def test_a_dashboard_answer_that_is_not_an_html_page_fails(sim, odd_dashboard):
    result = flask_cli(sim, "check", ZIPTEAMS_DASHBOARD_URL=odd_dashboard.url + "/json/")
    assert result.returncode == 1
    [line] = failures(result, "dashboard")
    assert "ZIPTEAMS_DASHBOARD_URL: answered 200 with application/json, not an HTML page" in line


@pytest.mark.parametrize("where", ["moved", "in-path"])
def test_a_dashboard_redirect_is_named_without_the_token_it_echoes(sim, odd_dashboard, where):
    # In its query or in its path: only the redirect's scheme and host are shown.
    result = flask_cli(sim, "check", ZIPTEAMS_DASHBOARD_URL=f"{odd_dashboard.url}/{where}/")
    assert result.returncode == 1
    [line] = failures(result, "dashboard")
    assert "answered 302, a redirect to https://login.example/… (tried" in line
    assert not JWT_SHAPE.search((result.stdout + result.stderr).encode()) and "token=" not in result.stderr


# -------------------------------------------------------------------------- Redis
def test_redis_is_checked_with_a_round_trip_in_the_gateways_namespace(sim, redis_server):
    import redis

    result = flask_cli(sim, "check", GATEWAY_CACHE_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    assert (f"shared cache (Redis): ok (plain Redis at {redis_server.url}, round trip " in result.stdout
            and "a probe key written, read back and deleted)" in result.stdout)
    assert not redis.Redis.from_url(redis_server.url).keys("zg:*")  # cleaned up


def test_gateway_check_probes_redis_once(sim, redis_server):
    """Loading the app probes the shared tier; the check reports that probe instead of a second."""
    import redis

    server = redis.Redis.from_url(redis_server.url)
    server.config_resetstat()
    result = flask_cli(sim, "check", GATEWAY_CACHE_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    assert "shared cache (Redis): ok" in result.stdout
    assert server.info("commandstats")["cmdstat_set"]["calls"] == 1  # the probe key, written once


def test_a_cache_url_that_is_not_redis_fails_the_check_naming_it(sim):
    from conftest import NotRedis

    other = NotRedis()
    try:
        result = flask_cli(sim, "check", GATEWAY_CACHE_URL=other.url)
    finally:
        other.close()
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = failures(result, "shared cache (Redis)")
    assert "does not answer as Redis does" in line and "GATEWAY_CACHE_URL" in line, line
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unreachable_redis_fails_the_check_without_showing_its_password(sim):
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    result = flask_cli(sim, "check", GATEWAY_CACHE_URL=url)
    assert result.returncode == 1
    [line] = failures(result, "shared cache (Redis)")
    assert "GATEWAY_CACHE_URL=redis://***@127.0.0.1" in line and "(plain)" in line, line
    assert PASSWORD not in result.stdout + result.stderr


# --------------------------------------------------------------------- JWKS and IdP
def published(url: str) -> int:
    """How many keys the shared test JWKS holds now (other tests of this worker rotate it)."""
    import requests

    return len(requests.get(url, timeout=5).json()["keys"])


def fake_idp_keys_url(idp) -> str:
    import requests

    return requests.get(idp.url + "/.well-known/openid-configuration", timeout=5).json()["jwks_uri"]


def assertion_env(url):
    return dict(GATEWAY_ASSERTION_HEADER="X-Pomerium-Jwt-Assertion", GATEWAY_ASSERTION_JWKS_URL=url,
                GATEWAY_ASSERTION_AUDIENCE="gateway", GATEWAY_ASSERTION_ISSUER="proxy")


def test_the_assertion_jwks_is_fetched_and_must_hold_keys(sim, keys):
    good = flask_cli(sim, "check", **assertion_env(keys.url))
    assert good.returncode == 0, good.stderr
    assert f"assertion JWKS: ok ({published(keys.url)} keys at {keys.url})" in good.stdout
    wrong = f"http://127.0.0.1:{free_port()}/jwks.json"
    bad = flask_cli(sim, "check", **assertion_env(wrong))
    assert bad.returncode == 1
    [line] = failures(bad, "assertion JWKS")
    assert f"GATEWAY_ASSERTION_JWKS_URL: connection failed (ConnectionError) (tried {wrong})" in line


def test_the_hand_off_jwks_is_fetched_in_jwt_mode(sim, keys):
    env = dict(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_AUDIENCE="gateway", GATEWAY_HANDOFF_ISSUER="app")
    good = flask_cli(sim, "check", GATEWAY_HANDOFF_JWKS_URL=keys.url, **env)
    assert good.returncode == 0, good.stderr
    assert f"hand-off JWKS: ok ({published(keys.url)} keys at {keys.url})" in good.stdout
    wrong = f"http://127.0.0.1:{free_port()}/jwks.json"
    bad = flask_cli(sim, "check", GATEWAY_HANDOFF_JWKS_URL=wrong, **env)
    assert bad.returncode == 1 and failures(bad, "hand-off JWKS")[0].startswith(
        "hand-off JWKS: FAILED: GATEWAY_HANDOFF_JWKS_URL: connection failed")


def test_an_assertion_and_a_hand_off_jwks_are_each_checked_at_their_own_url(sim, keys):
    """Both set at once: each check reads its own setting's URL (they run side by side)."""
    wrong = f"http://127.0.0.1:{free_port()}/jwks.json"
    result = flask_cli(sim, "check", GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_AUDIENCE="gateway",
                       GATEWAY_HANDOFF_ISSUER="app", GATEWAY_HANDOFF_JWKS_URL=wrong, **assertion_env(keys.url))
    assert f"assertion JWKS: ok ({published(keys.url)} keys at {keys.url})" in result.stdout, result.stdout
    [line] = failures(result, "hand-off JWKS")
    assert f"GATEWAY_HANDOFF_JWKS_URL: connection failed (ConnectionError) (tried {wrong})" in line


def test_iframe_mode_checks_the_dashboard_page_the_browser_would_load(sim):
    result = flask_cli(sim, "check", GATEWAY_EMBED_MODE="iframe", GATEWAY_PROXY_TOKEN_IN="header:Authorization")
    assert result.returncode == 0, result.stderr
    [seen] = [r for r in sim.requests() if r["path"] == "/dashboard/"]
    assert seen["query"].startswith("token=")  # as the iframe's src carries it


@pytest.fixture
def fake_idp(keys):
    """Discovery and JWKS only: what the check reads (sign-ins are test_oidc_interop's)."""
    state = {"methods": ["client_secret_basic"], "issuer": None}

    @Request.application
    def serve(request):
        if request.path == "/.well-known/openid-configuration":
            return Response(json.dumps({
                "issuer": state["issuer"] or server.url, "authorization_endpoint": server.url + "/auth",
                "token_endpoint": server.url + "/token", "jwks_uri": keys.url,
                "token_endpoint_auth_methods_supported": state["methods"]}), mimetype="application/json")
        return Response("not found", 404)

    server = ServerThread(serve).start()
    server.state = state
    yield server
    server.stop()


def oidc_env(issuer, **extra):
    return dict(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=issuer, OIDC_CLIENT_ID="gateway",
                OIDC_CLIENT_SECRET="client-secret-never-shown", GATEWAY_PUBLIC_URL="http://127.0.0.1:8000", **extra)


def test_oidc_discovery_jwks_and_client_method_are_checked(sim, fake_idp):
    ok = flask_cli(sim, "check", **oidc_env(fake_idp.url))
    assert ok.returncode == 0, ok.stderr
    assert f"IdP: ok ({fake_idp.url}, client authentication client_secret_basic" in ok.stdout
    assert f"IdP JWKS: ok ({published(fake_idp_keys_url(fake_idp))} keys" in ok.stdout
    assert "public URL: ok (http://127.0.0.1:8000)" in ok.stdout  # loopback: plain HTTP is fine
    fake_idp.state["methods"] = ["private_key_jwt"]
    mismatch = flask_cli(sim, "check", **oidc_env(fake_idp.url))
    assert mismatch.returncode == 1
    assert ("IdP client authentication: MISMATCH: OIDC_CLIENT_AUTH_METHOD=client_secret_basic is not in the IdP's "
            f"token_endpoint_auth_methods_supported (private_key_jwt) (tried {fake_idp.url}/.well-known/"
            "openid-configuration); fix: set OIDC_CLIENT_AUTH_METHOD") in mismatch.stderr
    assert "client-secret-never-shown" not in mismatch.stdout + mismatch.stderr


def test_a_wrong_oidc_issuer_is_named(sim, fake_idp):
    wrong = fake_idp.url + "/realms/nope"
    result = flask_cli(sim, "check", **oidc_env(wrong))
    assert result.returncode == 1
    [line] = failures(result, "IdP discovery")
    assert f"OIDC_ISSUER: answered 404 (tried {wrong}/.well-known/openid-configuration)" in line
    fake_idp.state["issuer"] = "https://elsewhere.example"
    other = flask_cli(sim, "check", **oidc_env(fake_idp.url))
    [line] = failures(other, "IdP discovery")
    assert "not this IdP's discovery document: it names the issuer 'https://elsewhere.example'" in line


# ------------------------------------------------------------------ settings sanity
REQUIRED = {"ZIPTEAMS_API_KEY": "k", "ZIPTEAMS_API_SECRET": "s", "GATEWAY_SECRET_KEY": SECRET_KEY,
            "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml")}


def sane(**settings):
    return {f.line() for f in sanity.findings(config.load({**REQUIRED, **settings})) if not f.ok}


@pytest.mark.parametrize("settings, expected", [
    ({"GATEWAY_PUBLIC_URL": "http://insights.partner.example"}, "GATEWAY_PUBLIC_URL: plain http://"),
    ({"GATEWAY_PUBLIC_URL": "https://partner.example/insights"}, "GATEWAY_PUBLIC_URL: has a path (/insights)"),
    ({"GATEWAY_FRAME_ANCESTORS": "'none' https://app.partner.example"}, "lists 'none' together with other"),
    ({"GATEWAY_FRAME_ANCESTORS": "'self' http://app.partner.example"}, "http://app.partner.example is a plain-HTTP"),
])
def test_a_public_url_or_frame_ancestors_that_would_fail_users_is_named(settings, expected):
    [line] = sane(**settings)
    assert expected in line and "fix:" in line


@pytest.mark.parametrize("settings", [
    {}, {"GATEWAY_PUBLIC_URL": "https://insights.partner.example"},
    {"GATEWAY_PUBLIC_URL": "http://localhost:8000"}, {"GATEWAY_PUBLIC_URL": "http://[::1]:8000"},
    {"GATEWAY_PUBLIC_URL": "http://insights.test", "GATEWAY_COOKIE_SECURE": "false"},
    {"GATEWAY_FRAME_ANCESTORS": "'self' https://app.partner.example http://localhost:3000"},
    {"GATEWAY_FRAME_ANCESTORS": "'none'"},
])
def test_sound_public_url_and_frame_ancestors_pass(settings):
    assert sane(**settings) == set()


def test_a_failed_sanity_check_fails_gateway_check(sim):
    result = flask_cli(sim, "check", GATEWAY_FRAME_ANCESTORS="'none' https://app.partner.example")
    assert result.returncode == 1 and failures(result, "frame ancestors")


# ---------------------------------------------------------------------- start-up
def test_start_up_logs_a_warning_naming_a_wrong_dashboard_url_and_still_serves(gunicorn, sim):
    import requests

    server = gunicorn(workers=1, ZIPTEAMS_DASHBOARD_URL=sim.url + "/insights/", GATEWAY_LOG_FORMAT="text",
                      GATEWAY_STARTUP_CHECK="true")
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    log = server.log.read_text()
    [line] = [x for x in log.splitlines() if "start-up check: dashboard: FAILED" in x]
    assert "WARNING" in line and "ZIPTEAMS_DASHBOARD_URL: answered 404" in line and sim.url + "/insights/" in line
    assert re.search(r"start-up check: \d+ of \d+ passed in [\d.]+ s \(details: flask --app wsgi gateway check\)", log)
    # Before the workers: the check's lines come before the first worker boots.
    assert log.index("start-up check: dashboard") < log.index("Booting worker")


def test_a_good_start_up_check_is_one_info_line(gunicorn, sim):
    server = gunicorn(workers=1, GATEWAY_LOG_FORMAT="text", GATEWAY_STARTUP_CHECK="true")
    log = server.log.read_text()
    assert "FAILED" not in log and re.search(r"start-up check: (\d+) of \1 passed", log)
    assert sim.stats()["token_requests"] == 1  # the check's one, in the master before the fork


def test_the_start_up_check_leaves_redis_to_the_shared_tiers_own_start_up_line(gunicorn, sim):
    """Making the app probes the shared tier (one line, its fix named); the start-up check asks no
    second time, and its summary counts that probe's failure."""
    server = gunicorn(workers=1, GATEWAY_LOG_FORMAT="text", GATEWAY_STARTUP_CHECK="true",
                      GATEWAY_CACHE_URL=f"redis://127.0.0.1:{free_port()}/0")
    log = server.log.read_text()
    assert len([x for x in log.splitlines() if "GATEWAY_CACHE_URL" in x]) == 1, log
    assert "start-up check: shared cache" not in log, log
    summary = re.search(r"start-up check: (\d+) of (\d+) passed", log)
    assert summary and int(summary[1]) == int(summary[2]) - 1, log  # not "all passed" with Redis down


def test_the_start_up_check_can_be_turned_off(gunicorn, sim):
    server = gunicorn(workers=1, GATEWAY_LOG_FORMAT="text", GATEWAY_STARTUP_CHECK="false")
    assert "start-up check" not in server.log.read_text() and sim.stats()["token_requests"] == 0


def test_the_start_up_check_is_on_by_default():
    assert config.load(REQUIRED)["GATEWAY_STARTUP_CHECK"] is True


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_silent_zipteams_delays_start_up_by_its_timeout_only(gunicorn, sim, silent_port):
    url = f"http://127.0.0.1:{silent_port}/api/v1"
    server = gunicorn(workers=1, ZIPTEAMS_API_URL=url, ZIPTEAMS_TIMEOUT="1", GATEWAY_LOG_FORMAT="text",
                      GATEWAY_STARTUP_CHECK="true")
    log = server.log.read_text()
    [line] = [x for x in log.splitlines() if "start-up check: token request" in x]
    assert (f"FAILED (zipteams_timeout): ZIPTEAMS_API_URL: no answer from {url}/partner/dashboard/auth/token "
            "within 1s") in line and "WARNING" in line
    took = float(re.search(r"start-up check: \d+ of \d+ passed in ([\d.]+) s", log).group(1))
    assert 1 <= took < 2.5




def test_a_trickling_zipteams_fails_the_check_within_its_deadline_in_all(sim, trickler):
    import time as clock

    url = f"http://127.0.0.1:{trickler(HTTP_HEAD)}/api/v1"
    started = clock.monotonic()
    result = flask_cli(sim, "check", ZIPTEAMS_API_URL=url, ZIPTEAMS_TIMEOUT="1")
    took = clock.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    # The token request's own limit in all (connect and answer: 2 s) ends it before the check's 3 s.
    assert (f"FAILED (zipteams_timeout): ZIPTEAMS_API_URL: no complete answer from {url}/partner/dashboard/auth/"
            "token within 2 s in all") in result.stdout + result.stderr
    assert took < 10, took  # 2 s and the CLI's own start, not for ever


def test_a_trickling_redis_fails_the_check_within_five_seconds_in_all(sim, trickler):
    import time as clock

    started = clock.monotonic()
    result = flask_cli(sim, "check", GATEWAY_CACHE_URL=f"redis://127.0.0.1:{trickler(REDIS_BULK)}/0")
    took = clock.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = failures(result, "shared cache (Redis)")
    assert "no complete answer within 5 s in all" in line, line
    assert took < 12, took  # 5 s and the CLI's own start, not for ever


def test_a_trickling_dashboard_or_redis_does_not_hold_up_the_start(gunicorn, sim, trickler):
    import time as clock

    started = clock.monotonic()
    server = gunicorn(workers=1, ZIPTEAMS_DASHBOARD_URL=f"http://127.0.0.1:{trickler(HTTP_HEAD)}/dashboard/",
                      GATEWAY_CACHE_URL=f"redis://127.0.0.1:{trickler(REDIS_BULK)}/0", ZIPTEAMS_TIMEOUT="1",
                      GATEWAY_LOG_FORMAT="text", GATEWAY_STARTUP_CHECK="true")
    assert clock.monotonic() - started < 15
    log = server.log.read_text()
    assert "no complete answer within 5 s in all" in log, log  # the shared tier's start-up line
    # The proxy's own limit under gevent (twice ZIPTEAMS_TIMEOUT for the head) before the check's 3 s.
    assert ("dashboard: FAILED: ZIPTEAMS_DASHBOARD_URL: dashboard's answer head not complete within 2 s in all"
            in log), log
    assert requests_get(server.url + "/healthz").status_code == 200


def requests_get(url):
    import requests

    return requests.get(url, timeout=5)


def test_a_start_up_check_that_breaks_is_one_warning_and_nothing_more(make_app, caplog):
    from gateway.admin.preflight import check_at_start

    class Broken:
        def current(self):
            raise RuntimeError("rules unreadable")

    app = make_app()
    app.extensions["rules"] = Broken()
    with caplog.at_level(logging.INFO, logger="gateway.admin.preflight"):
        check_at_start(app)
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.admin.preflight"] == [
        "start-up check could not run (RuntimeError): run flask --app wsgi gateway check"]


def test_the_start_up_check_in_process_logs_one_info_line_when_all_pass(make_app, sim, caplog):
    from gateway.admin.preflight import check_at_start

    app = make_app()
    with caplog.at_level(logging.INFO, logger="gateway.admin.preflight"):
        check_at_start(app)
    [line] = [r for r in caplog.records if r.name == "gateway.admin.preflight"]
    assert line.levelname == "INFO" and re.fullmatch(r"start-up check: 3 of 3 passed in [\d.]+ s", line.getMessage())
    assert sim.stats()["token_requests"] == 1


def test_create_app_for_tests_makes_no_start_up_requests(make_app, sim):
    make_app()
    assert sim.stats()["token_requests"] == 0


# --------------------------------------------------------------- the client's messages
def test_zipteams_client_errors_name_the_url_but_never_the_credentials():
    from gateway.tokens.client import ZipteamsClient, ZipteamsUnreachable

    url = f"http://127.0.0.1:{free_port()}/api/v1"
    client = ZipteamsClient(url, API_KEY, API_SECRET, timeout=2)
    with pytest.raises(ZipteamsUnreachable) as info:
        client.fetch_token("acme", "sales-emea")
    shown = str(info.value) + repr(info.value) + info.value.detail
    assert f"connection to {url}/partner/dashboard/auth/token failed" in shown
    assert API_SECRET not in shown and API_KEY not in shown
    client.session.close()


def test_a_finding_never_shows_user_info():
    from gateway.admin.findings import Finding

    line = Finding("x", False, "broke", setting="S", url=f"https://u:{PASSWORD}@h.example/p", fix="f").line()
    assert PASSWORD not in line and "(tried https://***@h.example/p)" in line


@pytest.mark.parametrize("password", [PASSWORD, "abcdefgh@ijklmnopqrs", "abcdefgh?ijklmnop#qrs"])
@pytest.mark.parametrize("reply", [b"-ERR unknown command '%s', with args beginning with: '%s'\r\n",
                                   b"-WRONGPASS %s %s\r\n", b"-LOADING %s %s\r\n"], ids=["unknown", "wrongpass", "loading"])
def test_a_reply_that_repeats_the_password_never_shows_it(sim, password, reply):
    """A server that does not know AUTH repeats its arguments in its error: the password, whatever
    characters it has (redact_url alone would cut one with "@", "?" or "#" into pieces)."""
    from urllib.parse import quote

    from conftest import NotRedis

    def answer(args):
        if args and args[0].upper() in (b"AUTH", b"HELLO"):
            return reply % (args[0], b" ".join(args[1:]))
        return b"+PONG\r\n"

    other = NotRedis(answer=answer)
    try:
        url = other.url.replace("redis://", f"redis://:{quote(password, safe='')}@")
        result = flask_cli(sim, "check", GATEWAY_CACHE_URL=url)
    finally:
        other.close()
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert failures(result, "shared cache (Redis)"), out
    pieces = {password[i:i + 8] for i in range(len(password) - 7)} | {password[-8:]}
    assert not [piece for piece in pieces if piece in out], out


def sentinel_port(args):
    """A Sentinel given as a Redis: it knows PING, not SET."""
    if args and args[0].upper() == b"PING":
        return b"+PONG\r\n"
    return b"-ERR unknown command '" + (args[0] if args else b"") + b"', with args beginning with: \r\n"


@pytest.mark.parametrize("password", ["", "Pw-x1-long-enough"], ids=["no-password", "password"])
@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"ERROR\r\n",
                                   b"+OK\r\n", b"+PONG\r\n", sentinel_port],
                         ids=["http", "memcached", "ok", "pong", "sentinel-port"])
def test_a_server_that_is_not_redis_is_not_used_whatever_it_answers(make_app, reply, password):
    from conftest import NotRedis

    other = NotRedis(answer=reply) if callable(reply) else NotRedis(reply)
    try:
        app = make_app(GATEWAY_CACHE_URL=other.url, GATEWAY_REDIS_PASSWORD=password)
    finally:
        other.close()
    check = app.extensions["shared_tier_check"]
    assert check.not_redis and "does not answer as Redis does" in check.line, check.line
    assert app.extensions["shared"] is None  # the host's store and each process's cache instead


def test_a_redis_that_evicted_the_probe_key_at_once_is_still_redis(make_app):
    # A full cache may evict a key between its SET and the GET: that Redis works, and is used.
    from conftest import NotRedis

    replies = {b"PING": b"+PONG\r\n", b"SET": b"+OK\r\n", b"GET": b"$-1\r\n", b"DEL": b":0\r\n",
               b"INFO": b"$0\r\n\r\n"}
    other = NotRedis(answer=lambda args: replies.get(args[0].upper() if args else b"", b"+OK\r\n")
                     if args and args[0].upper() != b"HELLO" else b"-ERR unknown command 'HELLO'\r\n")
    try:
        app = make_app(GATEWAY_CACHE_URL=other.url)
    finally:
        other.close()
    check = app.extensions["shared_tier_check"]
    assert check.ok and not check.not_redis, check.line
    assert app.extensions["shared"] is not None
