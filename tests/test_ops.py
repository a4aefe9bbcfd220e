"""Operations: health, readiness, metrics access, rules reload, JSON logs and audit, admin CLI."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from conftest import API_KEY, API_SECRET, DATA, JWT_SHAPE, ROOT, SECRET_KEY, user_headers
from gateway.ops.logformat import JsonFormatter
from gateway.ops.requestid import RequestIdFilter


class Ticks:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_healthz_and_readyz(client, sim):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "rules": 3, "zipteams": {"breaker": "closed"}}
    assert sim.stats()["token_requests"] == 0


def test_metrics_only_for_allowed_peers(client):
    assert client.get("/metrics").status_code == 200
    outsider = client.get("/metrics", environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert outsider.status_code == 404


def test_metrics_count_cache_hits_and_zipteams_calls(client):
    from prometheus_client import REGISTRY

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0

    before = (value("gateway_token_cache_total", result="hit"), value("gateway_zipteams_requests_total", outcome="ok"))
    for _ in range(3):
        client.get("/", headers=user_headers("alice@acme.example"))
    assert value("gateway_zipteams_requests_total", outcome="ok") - before[1] == 1
    assert value("gateway_token_cache_total", result="hit") - before[0] == 2
    assert "gateway_request_seconds_bucket" in client.get("/metrics").get_data(as_text=True)


def test_an_exited_workers_counters_still_count_and_its_live_gauges_go(tmp_path):
    """What gunicorn.conf.py's child_exit does with a dead worker's samples (multiprocess mode)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from gateway.ops.metrics import retire_process

    worker = ("from gateway.ops import metrics\n"
              "for _ in range(3): metrics.count_request('proxy.dashboard', 200, 0.01)\n"
              "metrics.CLIENTS_READING.inc()\nimport os; print(os.getpid())\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = [subprocess.run([sys.executable, "-c", worker], env=env, cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]

    def scrape():
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))
        return registry

    assert scrape().get_sample_value("gateway_clients_reading") == 2
    for pid in pids:
        retire_process(int(pid), str(tmp_path))
    registry = scrape()
    assert registry.get_sample_value("gateway_requests_total", {"route": "proxy.dashboard", "status": "200"}) == 6
    assert registry.get_sample_value("gateway_request_seconds_count", {"route": "proxy.dashboard"}) == 6
    assert not registry.get_sample_value("gateway_clients_reading")
    files = {p.name for p in tmp_path.iterdir()}
    assert {f"counter_{pid}.db" for pid in pids} <= files  # kept: totals never go backwards
    assert not any(name.startswith("gauge_live") for name in files)


# ------------------------------------------------------------- rules reload
@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "tenants.toml"
    shutil.copy(DATA / "tenants.toml", path)
    return path


def rewrite(path, text):
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a visibly newer mtime


def test_a_valid_change_takes_effect_without_restart(make_app, rules_file):
    ticks = Ticks()
    client = make_app(GATEWAY_TENANTS_FILE=str(rules_file), MONOTONIC=ticks).test_client()
    zed = user_headers("zed@newcorp.example")
    assert client.get("/", headers=zed).status_code == 403
    rewrite(rules_file, rules_file.read_text() + '\n[[subtenant]]\ntenant = "new"\nid = "corp"\n'
                                                  'name = "New Corp"\nemail_domains = ["newcorp.example"]\n')
    assert client.get("/", headers=zed).status_code == 403  # not checked again yet
    ticks.now += 5
    response = client.get("/", headers=zed)
    assert response.status_code == 200 and "New Corp" in response.get_data(as_text=True)


def test_an_invalid_change_is_refused_and_the_old_rules_stay(make_app, rules_file, caplog):
    ticks = Ticks()
    client = make_app(GATEWAY_TENANTS_FILE=str(rules_file), MONOTONIC=ticks).test_client()
    rewrite(rules_file, '[[subtenant]]\ntenant = "x"\nid = "y"\nname = "n"\nemail = ["typo@x.example"]\n')
    ticks.now += 5
    assert client.get("/", headers=user_headers("alice@acme.example")).status_code == 200
    [record] = [r for r in caplog.records if "tenants file change refused" in r.getMessage()]
    assert "unknown key(s) email" in record.getMessage()


def test_a_removed_subtenant_is_lost_at_the_next_request(make_app, rules_file):
    ticks = Ticks()
    client = make_app(GATEWAY_TENANTS_FILE=str(rules_file), MONOTONIC=ticks).test_client()
    alice = user_headers("alice@acme.example")
    assert "Sales EMEA" in client.get("/", headers=alice).get_data(as_text=True)
    rewrite(rules_file, rules_file.read_text().replace('emails = ["alice@acme.example"]\n', ""))
    ticks.now += 5
    assert client.get("/", headers=alice).status_code == 403


# ------------------------------------------------------------- logs, audit
def test_json_log_lines_carry_request_id_and_audit_fields(client):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        response = client.get("/", headers=user_headers("alice@acme.example"))
    finally:
        logging.getLogger().removeHandler(handler)
    entries = [json.loads(line) for line in records]
    # One line per request: its audit events are on it (tests/test_audit.py has every field).
    [line] = [e for e in entries if "events" in e]
    assert line["logger"] == "gateway.ops.logs" and line["message"].startswith("request method=GET path=/ ")
    events = {e["event"]: e for e in line["events"]}
    assert list(events) == ["login", "token_fetched", "embed_viewed"]
    assert events["embed_viewed"]["rule"] == "email alice@acme.example"
    assert len(events["token_fetched"]["fingerprint"]) == 12
    ours = [e for e in entries if not e["logger"].startswith(("gateway.sim", "urllib3"))]
    assert ours and all(e["request_id"] == response.headers["X-Request-Id"] for e in ours)
    assert not any(JWT_SHAPE.search(line.encode()) or API_SECRET in line for line in records)


# --------------------------------------------------------------------- CLI
def flask_cli(sim, *args, **env):
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(ROOT),
            "ZIPTEAMS_API_KEY": API_KEY, "ZIPTEAMS_API_SECRET": API_SECRET,
            "ZIPTEAMS_API_URL": sim.api_url, "ZIPTEAMS_DASHBOARD_URL": sim.dashboard_url,
            "GATEWAY_SECRET_KEY": SECRET_KEY, "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml"),
            "GATEWAY_LOG_LEVEL": "WARNING", **env}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "gateway", *args],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_cli_check_makes_one_token_request_and_never_prints_the_token(sim):
    result = flask_cli(sim, "check", "--subtenant", "acme/sales-us")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "token request for acme/sales-us: ok" in out and "'subTenantId': 'sales-us'" in out
    assert "expires:" in out and "fingerprint:" in out
    assert not JWT_SHAPE.search((out + result.stderr).encode()) and API_SECRET not in out + result.stderr
    assert sim.stats()["token_requests"] == 1


def test_cli_check_prints_the_warm_up_time_the_rate_budget_implies(sim):
    result = flask_cli(sim, "check")
    assert result.returncode == 0, result.stderr
    # 3 teams fetched by each of 2 workers; auto: (2 x 3 + 20 probes) x 2 = 52, 26 for each worker's
    # own window, a fifth of that kept for refreshes.
    assert ("warm-up: 3 teams need 6 first-token requests (2 workers, each fetching every team for itself); "
            "ZIPTEAMS_MAX_RPM=52 (auto, from the rules) gives each worker 26 a minute of its own, "
            "20 of them for first tokens") in result.stdout
    assert "within about 1 minute of a cold start" in result.stdout
    split = flask_cli(sim, "check", ZIPTEAMS_MAX_RPM="5")
    assert ("ZIPTEAMS_MAX_RPM=5 (set) gives each worker 2 a minute of its own, 1 of them for first tokens, "
            "the rest is kept for refreshes: every team served within about 3 minutes") in split.stdout
    shared = flask_cli(sim, "check", GATEWAY_CACHE_URL="redis://127.0.0.1:1/0", ZIPTEAMS_MAX_RPM="2")
    assert ("warm-up: 3 teams need 3 first-token requests (one fetch per team for every worker and instance, "
            "through Redis); ZIPTEAMS_MAX_RPM=2 (set) lets 1 a minute go to first tokens") in shared.stdout
    assert "within about 3 minutes" in shared.stdout


def test_cli_check_all_names_each_misconfigured_subtenant_with_what_to_fix(sim):
    sim.fault(status=400, count=1, message="Subtenant ID is invalid")  # the first rule's subtenant
    result = flask_cli(sim, "check", "--all")
    assert result.returncode == 1
    assert ("token request for acme/sales-emea: FAILED (zipteams_bad_request): Zipteams refused the tenant "
            "or subtenant id: check the tenants file") in result.stderr
    assert "token request for acme/sales-us: ok" in result.stdout and "2 of 3 subtenants got a token" in result.stdout
    assert sim.stats()["token_requests"] == 3


def test_cli_check_fails_with_exit_1_when_zipteams_refuses(sim):
    result = flask_cli(sim, "check", ZIPTEAMS_API_SECRET="wrong-secret")
    assert result.returncode == 1 and "FAILED (zipteams_forbidden)" in result.stderr
    assert "wrong-secret" not in result.stdout + result.stderr


def test_cli_check_exit_3_on_invalid_settings(sim):
    result = flask_cli(sim, "check", ZIPTEAMS_TIMEOUT="-1")
    assert result.returncode == 3
    # The CLI lists the problems one per line (test_preflight.py: all of them in one run).
    assert result.stderr.strip().splitlines() == [
        "settings: 1 problem, to fix before anything else can be checked:",
        "  ZIPTEAMS_TIMEOUT '-1' is invalid: must be a number greater than 0"]
    assert sim.stats()["token_requests"] == 0


def test_cli_check_unknown_subtenant_is_usage_error(sim):
    assert flask_cli(sim, "check", "--subtenant", "nope/nope").returncode == 2


def test_cli_explain(sim):
    many = flask_cli(sim, "explain", "Bob@ACME.example", "--groups", "emea")
    assert many.returncode == 0
    assert "matches acme/sales-emea (Sales EMEA) by group emea" in many.stdout
    assert "matches acme/sales-us (Sales US) by email bob@acme.example" in many.stdout
    assert "a choice between 2 teams" in many.stdout
    none = flask_cli(sim, "explain", "mallory@evil.example")
    assert none.returncode == 1 and "not linked to a team" in none.stdout


def test_cli_tenants_lists_the_rules(sim):
    result = flask_cli(sim, "tenants")
    assert result.returncode == 0
    assert "3 subtenant rules" in result.stdout and "globex/ops  Globex Operations" in result.stdout
    assert "email_domains: globex.example" in result.stdout
