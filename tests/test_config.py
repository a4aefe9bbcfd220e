"""Settings: defaults, validation, *_FILE secrets and fail-fast start-up."""
import logging
import subprocess
import sys

import pytest

from conftest import API_SECRET, DATA, ROOT, SECRET_KEY, free_port, user_headers
from gateway import config
from gateway.config import ConfigError

REQUIRED = {
    "ZIPTEAMS_API_KEY": "key",
    "ZIPTEAMS_API_SECRET": API_SECRET,
    "GATEWAY_SECRET_KEY": SECRET_KEY,
    "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml"),
}


def test_defaults():
    cfg = config.load(REQUIRED)
    assert cfg["ZIPTEAMS_API_URL"] == "https://api.zipteams.com/api/v1"
    assert cfg["ZIPTEAMS_TIMEOUT"] == 10.0
    assert cfg["GATEWAY_AUTH_MODE"] == "header"
    assert cfg["GATEWAY_EMBED_MODE"] == "proxy"
    assert cfg["GATEWAY_FRAME_ANCESTORS"] == "'self'"
    assert [str(n) for n in cfg["GATEWAY_TRUSTED_PROXIES"]] == ["127.0.0.1/32", "::1/128"]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_missing_required_setting_is_one_clear_line(name):
    source = {k: v for k, v in REQUIRED.items() if k != name}
    with pytest.raises(ConfigError) as info:
        config.load(source)
    message = str(info.value)
    assert message.startswith(name) and "is required" in message and "\n" not in message


@pytest.mark.parametrize("name, value, expected", [
    ("ZIPTEAMS_TIMEOUT", "0", "must be a number greater than 0"),
    ("ZIPTEAMS_API_URL", "ftp://x", "must be an http:// or https:// URL"),
    ("ZIPTEAMS_API_URL", "https://u:p@x", "must not carry credentials"),
    ("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8,nonsense", "'nonsense' is not an IP address"),
    ("GATEWAY_AUTH_MODE", "magic", "must be one of header, oidc, jwt, demo"),
    ("GATEWAY_EMBED_MODE", "popup", "must be one of proxy, iframe"),
    ("GATEWAY_FRAME_ANCESTORS", "'self'; script-src *", "space-separated list"),
    ("GATEWAY_FRAME_ANCESTORS", "*", "exact origins"),
    ("GATEWAY_FRAME_ANCESTORS", "'self' https:", "exact origins"),
    ("GATEWAY_FRAME_ANCESTORS", "https://*", "exact origins"),
    ("GATEWAY_FRAME_ANCESTORS", "data: 'self'", "exact origins"),
    ("GATEWAY_USER_HEADER", "X Email", "must be an HTTP header name"),
    ("GATEWAY_COOKIE_SECURE", "maybe", "expected true or false"),
    ("GATEWAY_PROXY_TOKEN_IN", "cookie:x", "query:token or header:Authorization"),
])
def test_invalid_setting_is_named(name, value, expected):
    with pytest.raises(ConfigError) as info:
        config.load({**REQUIRED, name: value})
    assert str(info.value).startswith(name) and expected in str(info.value)


def test_short_secret_key_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as info:
        config.load({**REQUIRED, "GATEWAY_SECRET_KEY": "short-but-secret"})
    assert "at least 32 characters" in str(info.value)
    assert "short-but-secret" not in str(info.value)


PASSWORD = "Pa55word-never-shown"
URL_SETTINGS = sorted(s.name for s in config.SETTINGS if s.name.endswith("_URL") or s.name == "OIDC_ISSUER")
# Each is invalid for every URL setting, for a different reason, and carries the password.
BAD_URLS_WITH_PASSWORDS = [
    f"ftp://user:{PASSWORD}@files.example/",            # no setting takes ftp://
    f"https://user:{PASSWORD}@host.example/",           # credentials (for GATEWAY_CACHE_URL: the scheme)
    f"redis://:{PASSWORD}@host.example:badport/0",      # the port (for http settings: the scheme)
    f"https://user:{PASSWORD}\u2100@host.example/",     # urlsplit's own error quotes the netloc
    f"user:{PASSWORD}@host.example",                    # no scheme at all
]


def test_every_url_setting_is_covered():
    assert {"ZIPTEAMS_API_URL", "ZIPTEAMS_DASHBOARD_URL", "GATEWAY_ASSERTION_JWKS_URL", "GATEWAY_HANDOFF_JWKS_URL",
            "GATEWAY_PUBLIC_URL", "OIDC_ISSUER", "GATEWAY_LOGOUT_URL", "GATEWAY_BRAND_LOGO_URL",
            "GATEWAY_CACHE_URL"} <= set(URL_SETTINGS)


@pytest.mark.parametrize("value", BAD_URLS_WITH_PASSWORDS)
@pytest.mark.parametrize("name", URL_SETTINGS)
def test_a_refused_url_setting_is_shown_without_its_password(name, value):
    with pytest.raises(ConfigError) as info:
        config.load({**REQUIRED, name: value})
    message = str(info.value)
    assert message.startswith(name) and "is invalid" in message
    assert PASSWORD not in message and "***@" in message


@pytest.mark.parametrize("value, shown", [
    ("https://user:password@host/", "https://***@host/"),
    ("redis://:password@host:6379/0", "redis://***@host:6379/0"),
    ("rediss://u:p/a?ss@word@host/0", "rediss://***@host/0"),  # unescaped characters in the password
    ("https://host.example/path", "https://host.example/path"),
    ("memory://", "memory://"),
    ("rediss://host:6380/0?password=secret", "rediss://host:6380/0?***"),  # redis-py reads a query too
    ("https://jwks.example/keys?sig=secret#x", "https://jwks.example/keys?***"),
])
def test_redact_url_hides_user_info_and_the_query(value, shown):
    assert config.redact_url(value) == shown


@pytest.mark.parametrize("query", ["password=RPW-secret-777", "ssl_cert_reqs=none", "ssl_check_hostname=false"])
def test_a_cache_url_with_a_query_is_refused_without_showing_it(query):
    # redis-py would read a password from it (shown wherever the URL is) or turn TLS checks off.
    with pytest.raises(ConfigError) as info:
        config.load({**REQUIRED, "GATEWAY_CACHE_URL": f"rediss://127.0.0.1:6380/0?{query}"})
    assert "GATEWAY_CACHE_URL" in str(info.value) and query not in str(info.value)
    assert config.load({**REQUIRED, "GATEWAY_CACHE_URL": "unix:///run/redis.sock?db=2"})["GATEWAY_CACHE_URL"]


def test_logout_url_takes_a_path_or_an_http_url_only():
    for good in ("", "/oauth2/sign_out", "https://idp.example/logout?rd=https%3A%2F%2Fapp.example"):
        assert config.load({**REQUIRED, "GATEWAY_LOGOUT_URL": good})["GATEWAY_LOGOUT_URL"] == good
    for bad in ("javascript:alert(1)", "//evil.example/", "https://evil.example/\r\nX: y", "sign-out"):
        with pytest.raises(ConfigError, match="GATEWAY_LOGOUT_URL"):
            config.load({**REQUIRED, "GATEWAY_LOGOUT_URL": bad})


def test_an_unreachable_redis_url_never_shows_its_password(make_app, caplog):
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    app = make_app(GATEWAY_CACHE_URL=url, ZIPTEAMS_RETRIES="0")
    with caplog.at_level(logging.DEBUG):
        response = app.test_client().get("/", headers=user_headers("alice@acme.example"))
    assert "redis unavailable at redis://***@127.0.0.1" in caplog.text  # the fail-soft warning was written
    shared = app.extensions["shared"]
    assert app.extensions["state"].backend is shared  # one Redis client for tokens and revocations
    for shown in (caplog.text, response.get_data(as_text=True), repr(shared), repr(app.extensions["state"]),
                  repr(shared._redis), *(repr(r.args) for r in caplog.records)):
        assert PASSWORD not in shown
    assert "***@" in repr(shared)


def test_oidc_requires_a_verified_email_by_default():
    assert config.load(REQUIRED)["OIDC_REQUIRE_VERIFIED_EMAIL"] is True
    assert "otherwise anyone who can register" in config.BY_NAME["OIDC_REQUIRE_VERIFIED_EMAIL"].help


def test_secret_from_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("from-a-file\n")
    source = {k: v for k, v in REQUIRED.items() if k != "ZIPTEAMS_API_SECRET"}
    cfg = config.load({**source, "ZIPTEAMS_API_SECRET_FILE": str(path)})
    assert cfg["ZIPTEAMS_API_SECRET"] == "from-a-file"


def test_secret_and_file_together_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="both set"):
        config.load({**REQUIRED, "ZIPTEAMS_API_SECRET_FILE": str(tmp_path / "x")})


def test_unreadable_secret_file(tmp_path):
    source = {k: v for k, v in REQUIRED.items() if k != "GATEWAY_SECRET_KEY"}
    with pytest.raises(ConfigError, match="GATEWAY_SECRET_KEY_FILE: cannot read"):
        config.load({**source, "GATEWAY_SECRET_KEY_FILE": str(tmp_path / "missing")})


def test_readme_settings_table_is_the_generated_one():
    # Regenerate with: python -m gateway settings (the table lives in docs/settings.md, linked from the README)
    assert config.markdown_table() in (ROOT / "docs" / "settings.md").read_text()


def _start(env):
    return subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env={"PATH": "", **env},
                          capture_output=True, text=True, timeout=60)


def test_wsgi_refuses_to_start_with_one_line_when_a_setting_is_missing():
    env = {k: v for k, v in REQUIRED.items() if k != "ZIPTEAMS_API_KEY"}
    result = _start(env)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "gateway: cannot start: ZIPTEAMS_API_KEY (or ZIPTEAMS_API_KEY_FILE) is required: "
        "Partner API key from Zipteams onboarding."]


def test_wsgi_refuses_with_one_line_that_lists_every_problem():
    env = {k: v for k, v in REQUIRED.items() if k not in ("ZIPTEAMS_API_KEY", "GATEWAY_TENANTS_FILE")}
    result = _start({**env, "ZIPTEAMS_TIMEOUT": "soon", "GATEWAY_SECRET_KEY": "short-but-secret",
                     "GATEWAY_SESSION_IDLE": "99999"})
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "gateway: cannot start: ZIPTEAMS_API_KEY (or ZIPTEAMS_API_KEY_FILE) is required: Partner API key from "
        "Zipteams onboarding; ZIPTEAMS_TIMEOUT 'soon' is invalid: could not convert string to float: 'soon'; "
        "GATEWAY_SECRET_KEY is invalid: must be at least 32 characters long; GATEWAY_TENANTS_FILE is required: "
        "Path of the TOML file with the subtenant rules; GATEWAY_SESSION_IDLE must not be longer than "
        "GATEWAY_SESSION_MAX"]
    assert "short-but-secret" not in result.stderr


def test_every_problem_is_collected_and_a_combination_check_waits_for_its_own_settings():
    with pytest.raises(config.ConfigProblems) as info:
        config.load({"GATEWAY_AUTH_MODE": "oidc", "GATEWAY_BODY_BUFFER": "x", "GATEWAY_STATE_DB": "/x"})
    problems = info.value.problems
    assert problems[0].startswith("GATEWAY_STATE_DB is no longer read")
    assert [p.split()[0] for p in problems[1:5]] == ["ZIPTEAMS_API_KEY", "ZIPTEAMS_API_SECRET",
                                                     "GATEWAY_SECRET_KEY", "GATEWAY_TENANTS_FILE"]
    assert any(p.startswith("GATEWAY_BODY_BUFFER 'x' is invalid") for p in problems)
    # The buffer's own comparison is not made with an invalid buffer; oidc's needs are all named.
    assert not any("must be at least GATEWAY_PROXY_MAX_BODY" in p for p in problems)
    for name in ("OIDC_ISSUER", "OIDC_CLIENT_ID", "GATEWAY_PUBLIC_URL", "OIDC_CLIENT_SECRET"):
        assert any(p.startswith(f"{name} is required when GATEWAY_AUTH_MODE=oidc") for p in problems), name
    assert str(info.value) == "; ".join(p.rstrip(".") for p in problems) and "\n" not in str(info.value)


def test_wsgi_names_the_bad_table_of_an_invalid_tenants_file(tmp_path):
    bad = tmp_path / "tenants.toml"
    bad.write_text('[[subtenant]]\ntenant = "t"\nid = "s"\nname = "n"\nemails = ["nope"]\n')
    result = _start({**REQUIRED, "GATEWAY_TENANTS_FILE": str(bad)})
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[[subtenant]] #1 (t/s): 'emails' entry 'nope'" in lines[0]
    assert API_SECRET not in result.stderr


def test_demo_login_is_refused_in_production():
    env = {**REQUIRED, "GATEWAY_AUTH_MODE": "demo"}
    result = _start(env)
    assert result.returncode == 3 and "only for `python -m gateway demo`" in result.stderr


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = lines[lines.index("# The README's test command, exactly:") + 1]
    assert "pytest" in command
    assert f"\n{command}\n" in readme


def test_help_url_takes_a_path_an_http_url_or_a_mailto_address():
    for good in ("", "/help", "https://help.partner.example/access?app=insights#team", "mailto:it@partner.example",
                 "mailto:it@partner.example?subject=Dashboard%20access"):
        assert config.load({**REQUIRED, "GATEWAY_HELP_URL": good})["GATEWAY_HELP_URL"] == good
    for bad in ("javascript:alert(1)", "//evil.example/", "https://evil.example/\r\nX: y", "help", "mailto:nobody",
                "data:text/html,hi"):
        with pytest.raises(ConfigError, match="GATEWAY_HELP_URL"):
            config.load({**REQUIRED, "GATEWAY_HELP_URL": bad})


def test_a_setting_an_earlier_release_read_is_refused_with_what_replaced_it():
    with pytest.raises(ConfigError, match=r"^GATEWAY_STATE_DB is no longer read: set GATEWAY_STATE_DIR"):
        config.load({**REQUIRED, "GATEWAY_STATE_DB": "/var/lib/gateway/state.sqlite3"})
    assert config.load({**REQUIRED, "GATEWAY_STATE_DB": ""})  # empty: as if unset
