"""The gateway under real gunicorn, as deployed: many users, many workers, one token each."""
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import jwt
import pytest
import requests

from conftest import API_SECRET, recording_session, user_headers

USERS = [(f"user{i}@us.acme.example", "Sales US") if i % 2 else (f"user{i}@emea.example", "Sales EMEA")
         for i in range(20)]


@pytest.mark.smoke
def test_two_workers_many_users_each_sees_only_their_subtenant(gunicorn, sim):
    server = gunicorn(workers=2, threads=8)

    def visit(n):
        email, team = USERS[n % len(USERS)]
        groups = "" if team == "Sales US" else "emea"
        with recording_session() as http:
            response = http.get(server.url + "/", headers=user_headers(email, groups), timeout=30)
        other = "Sales EMEA" if team == "Sales US" else "Sales US"
        return response.status_code, team in response.text, other in response.text

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(visit, range(200)))
    assert all(status == 200 for status, _, _ in results)
    assert all(own and not other for _, own, other in results)
    by_subtenant = sim.stats()["by_subtenant"]
    assert set(by_subtenant) == {"acme/sales-us", "acme/sales-emea"}
    assert all(count <= 2 for count in by_subtenant.values()), by_subtenant


def test_fifty_concurrent_first_requests_make_one_token_request(gunicorn, sim):
    server = gunicorn(workers=1, threads=32)
    sim.fault(delay=0.5, count=1)  # keep the first fetch in flight while the rest arrive

    def visit(n):
        with recording_session() as http:
            return http.get(server.url + "/", headers=user_headers(f"u{n}@us.acme.example"),
                            timeout=30).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(visit, range(50)))
    assert statuses == [200] * 50
    assert sim.stats()["token_requests"] == 1


def test_untrusted_peer_headers_get_401_under_gunicorn(gunicorn, http):
    server = gunicorn(workers=1, GATEWAY_TRUSTED_PROXIES="192.0.2.0/24")
    response = http.get(server.url + "/", headers=user_headers("alice@acme.example"))
    assert response.status_code == 401
    assert "You are not signed in" in response.text


def test_underscore_header_variant_is_dropped(gunicorn, http):
    # WSGI folds "X_Forwarded_Email" and "X-Forwarded-Email" into one name; gunicorn must drop it.
    server = gunicorn(workers=1)
    response = http.get(server.url + "/", headers={"X_Forwarded_Email": "alice@acme.example"})
    assert response.status_code == 401


def log_once(server, marker: str, times: int = 1, timeout: float = 10) -> str:
    """The gunicorn log once ``marker`` shows in it ``times`` times (our lines are written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log.read_text(errors="replace")
        if text.count(marker) >= times or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def raw_exchange(server, request: bytes, half_close: bool = False) -> bytes:
    """Send ``request`` byte for byte and read the answer until the server closes."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_handoff_token_naming_a_key_of_another_type_is_401_under_gunicorn(gunicorn, http, keys, tmp_path):
    server = gunicorn(workers=1, GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_JWKS_URL=keys.url,
                      GATEWAY_HANDOFF_ISSUER="https://app.example", GATEWAY_HANDOFF_AUDIENCE="gateway",
                      GATEWAY_STATE_DIR=str(tmp_path / "state"))
    now = int(time.time())
    claims = {"iss": "https://app.example", "aud": "gateway", "iat": now, "exp": now + 60,
              "jti": "j-1", "email": "alice@acme.example"}
    for signer, named in (("ec-1", "rsa-1"), ("rsa-1", "ec-1")):
        alg, private_key = keys.keys[signer]
        token = jwt.encode(claims, private_key, algorithm=alg, headers={"kid": named})
        response = http.get(server.url + "/sso/jwt", params={"jwt": token}, allow_redirects=False)
        assert response.status_code == 401, (signer, named)
    log = log_once(server, "path=/sso/jwt endpoint=auth.handoff status=401", times=2)
    assert "ES256 token names a key of another type" in log and "RS256 token names a key of another type" in log
    assert "Traceback" not in log and "unexpected error" not in log


def test_a_missing_trailing_slash_redirects_to_a_relative_url_under_gunicorn(gunicorn, http):
    server = gunicorn(workers=1, GATEWAY_EMBED_MODE="proxy")
    response = http.get(server.url + "/dashboard", headers={"Host": "evil.test"}, allow_redirects=False)
    assert response.status_code == 308 and response.headers["Location"] == "/dashboard/"


MALFORMED_CHUNKED_BODIES = {
    "chunk size not hex": (b"zz\r\n", False),
    "NUL in a chunk extension": (b"5;\x00\r\nhello\r\n0\r\n\r\n", False),
    "chunk without its CRLF": (b"5\r\nhelloXX0\r\n\r\n", False),
    "body cut off": (b"5\r\nhel", True),
}


def test_a_malformed_chunked_body_is_a_400_under_gunicorn(gunicorn):
    server = gunicorn(workers=1)
    for case, (body, half_close) in MALFORMED_CHUNKED_BODIES.items():
        answer = raw_exchange(server, b"POST /logout HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                      b"Content-Type: application/x-www-form-urlencoded\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n" + body, half_close)
        assert answer.startswith(b"HTTP/1.1 400 "), (case, answer[:200])
        assert b'data-code="bad_request_body"' in answer, case
        assert answer.count(b"HTTP/1.1 ") == 1, case  # gunicorn adds no second answer of its own
    log = log_once(server, "path=/logout endpoint=auth.logout status=400", times=len(MALFORMED_CHUNKED_BODIES))
    assert log.count("code=bad_request_body") == len(MALFORMED_CHUNKED_BODIES)
    assert "Traceback" not in log and "unexpected error" not in log


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_newline_in_the_path_forges_no_log_line_under_gunicorn(gunicorn, http, fmt):
    server = gunicorn(workers=1, GATEWAY_LOG_FORMAT=fmt)
    assert http.get(server.url + "/x%0aFORGED%20line%0d%1b[2J").status_code == 404
    lines = log_once(server, "path=/x").splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    [line] = [line for line in lines if "path=/x" in line]
    assert "path=/x%0AFORGED%20line%0D%1B%5B2J " in (json.loads(line)["message"] if fmt == "json" else line)


def test_a_request_line_gunicorn_refuses_is_logged_without_its_query(gunicorn):
    import socket

    server = gunicorn(workers=1)
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJoYW5kLW9mZiJ9.c2VjcmV0LWhhbmQtb2Zm"
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A NUL makes an invalid request line, which gunicorn quotes in its error log.
        sock.sendall(f"GET /sso/jwt?jwt={secret}&return_to=/\x00 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    time.sleep(0.5)
    text = server.log.read_text()
    assert "Invalid request" in text and secret not in text and "[query removed]" in text


@pytest.mark.smoke
@pytest.mark.parametrize("worker", ["gevent", "gthread"])  # the default, and the one behind deploy/nginx.conf
def test_sigterm_turns_readyz_503_at_once_serves_through_the_drain_delay_then_refuses_new_connections(
        gunicorn, sim, worker):
    import signal
    import threading

    server = gunicorn(workers=2, GATEWAY_EMBED_MODE="proxy", GATEWAY_DRAIN_DELAY="2", GATEWAY_WORKER=worker)
    alice = user_headers("alice@acme.example")
    with recording_session() as http:
        assert http.get(server.url + "/readyz").status_code == 200
        assert http.get(server.url + "/dashboard/api/summary", headers=alice).status_code == 200  # warm
    in_flight = {}

    def slow_request():  # started before the stop, finishing well after the listener closed
        with recording_session() as http:
            in_flight["status"] = http.get(server.url + "/dashboard/api/slow?s=4", headers=alice, timeout=20).status_code

    worker = threading.Thread(target=slow_request)
    worker.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with recording_session() as http:
        ready = http.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and "stopping" in ready.json()["reasons"][0]
        assert http.get(server.url + "/dashboard/api/summary", headers=alice, timeout=5).status_code == 200
    time.sleep(2.5)
    # gunicorn's worker loop notices the end of the drain within a second and closes the listener:
    # from then on a new connection is refused at once instead of hanging in a backlog.
    address, deadline = (urlsplit(server.url).hostname, urlsplit(server.url).port), time.monotonic() + 3
    while True:
        started = time.monotonic()
        try:
            socket.create_connection(address, timeout=5).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the listener was never closed"
        time.sleep(0.1)
    assert time.monotonic() - started < 1.0, "a new connection hung instead of being refused"
    worker.join(timeout=20)
    assert in_flight["status"] == 200  # the request in flight was allowed to finish
    server.proc.wait(timeout=20)


def test_a_reload_drops_no_request_keeps_the_instance_ready_and_folds_dead_workers_metrics(gunicorn, tmp_path):
    import signal
    import threading

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = gunicorn(workers=2, GATEWAY_DRAIN_DELAY="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    alice = user_headers("alice@acme.example")
    stop, failures, answered, ready = threading.Event(), [], [0], []

    def load(reuse: bool):
        with recording_session() as http:
            while not stop.is_set():
                try:
                    sender = http if reuse else requests
                    status = sender.get(server.url + "/dashboard/api/summary", headers=alice, timeout=10).status_code
                    answered[0] += 1
                    if status != 200:
                        failures.append(status)
                except requests.RequestException as exc:
                    failures.append(type(exc).__name__)

    def probe():
        while not stop.is_set():
            ready.append(requests.get(server.url + "/readyz", timeout=5).status_code)
            time.sleep(0.1)

    import requests
    threads = [threading.Thread(target=load, args=(n % 2 == 0,)) for n in range(6)] + [threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    for _ in range(2):
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    assert answered[0] > 100 and not failures, failures[:10]
    assert set(ready) == {200}, ready  # the instance never looked unready to an orchestrator
    files = sorted(p.name for p in metrics_dir.iterdir())
    booted = re.findall(r"Booting worker with pid: (\d+)", server.log.read_text())
    replaced = booted[:4]  # the two HUPs replaced the first four workers
    assert not [name for name in files if name.startswith("gauge_live") and name[:-3].rsplit("_", 1)[1] in replaced]
    assert {f"counter_{pid}.db" for pid in replaced} & set(files), files  # their counters stay, and count
    text = requests.get(server.url + "/metrics", timeout=5).text
    served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith('gateway_requests_total{route="proxy.dashboard",status="200"}'))
    assert served >= answered[0]  # counts of the replaced workers were kept, not lost
    assert len(booted) == 6  # two HUPs: twice two fresh workers
    server.stop()


def test_a_start_refused_while_the_app_loads_leaves_no_metrics_directory(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "GATEWAY_STATE_DIR": str(state),
           "ZIPTEAMS_TIMEOUT": "-1"}  # and every required setting missing: refused at load, exit 3
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "wsgi:app"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert "gateway: cannot start:" in done.stderr, done.stderr
    assert not [p.name for p in state.iterdir() if p.name.startswith("metrics-")]


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_each_line_is_written_once_however_many_workers_the_master_forks(gunicorn, worker):
    """Under gevent the master's log writer is a greenlet, which lives on in every forked worker's copy
    of the hub: its lines must not be written again by each worker (as they were, once per fork)."""
    import signal

    server = gunicorn(workers=3, GATEWAY_WORKER=worker)  # as production chooses it: gevent patches the master
    server.proc.send_signal(signal.SIGHUP)  # the master logs it, then forks three fresh workers
    log_once(server, "Booting worker", times=6)
    server.proc.send_signal(signal.SIGTTIN)  # and one more
    text = log_once(server, "Booting worker", times=7)
    server.stop()
    text = server.log.read_text()
    assert text.count("Handling signal: hup") == 1 and text.count("Hang up: Master") == 1, text
    assert text.count("Handling signal: ttin") == 1 and text.count("Booting worker") == 7, text
    assert text.count("Handling signal: term") == 1 and text.count("Shutting down: Master") == 1, text


def test_an_invalid_log_setting_stops_gunicorn_with_the_apps_one_line_not_a_traceback(sim, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, base_config

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           **{k: v for k, v in base_config(sim).items() if isinstance(v, str)},
           "GATEWAY_LOG_FORMAT": "yaml", "GATEWAY_LOG_LEVEL": "loud"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                           "--bind", "127.0.0.1:0", "wsgi:app"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    [line] = [line for line in done.stderr.splitlines() if line.startswith("gateway: cannot start:")]
    assert "GATEWAY_LOG_FORMAT 'yaml' is invalid" in line and "GATEWAY_LOG_LEVEL 'loud' is invalid" in line


def test_gunicorn_started_elsewhere_with_chdir_alone_refuses_to_load_the_app_in_one_line(sim, tmp_path):
    """gunicorn reads ./gunicorn.conf.py before --chdir: from another directory it would run the app on
    one sync worker, without gevent, limits, preload or shared metrics, and say nothing."""
    import subprocess
    import sys

    from conftest import ROOT, base_config

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           **{k: v for k, v in base_config(sim).items() if isinstance(v, str)}}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--chdir", str(ROOT), "--bind", "127.0.0.1:0",
                           "--no-control-socket", "wsgi:app"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("gateway: cannot start:")]
    assert ours == [f"gateway: cannot start: gunicorn did not read {ROOT}/gunicorn.conf.py (it reads "
                    "./gunicorn.conf.py in the directory it starts in, before --chdir): start it in "
                    f"{ROOT}, or pass -c {ROOT}/gunicorn.conf.py"], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["two workers", "--check-config"])
def test_gunicorn_without_its_conf_file_stops_however_it_was_started(sim, tmp_path, how):
    """With several workers each says why before gunicorn stops (gunicorn adds lines of its own);
    gunicorn's --check-config, which starts no server, fails as the start would."""
    import subprocess
    import sys

    from conftest import ROOT, base_config

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "WEB_CONCURRENCY": "2",
           **{k: v for k, v in base_config(sim).items() if isinstance(v, str)}}
    extra = ["--check-config"] if how == "--check-config" else ["--bind", "127.0.0.1:0", "--no-control-socket"]
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--chdir", str(ROOT), *extra, "wsgi:app"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"gateway: cannot start: gunicorn did not read {ROOT}/gunicorn.conf.py" in done.stderr, done.stderr
    assert API_SECRET not in done.stderr + done.stdout


def test_gunicorn_given_the_conf_file_from_another_directory_starts_as_in_production(gunicorn, tmp_path):
    # What the refusal above tells the operator to do works as it says: no --chdir, no PYTHONPATH.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = gunicorn(elsewhere=elsewhere)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    log = server.log.read_text()
    assert "Using worker: gevent" in log and "Traceback" not in log


def test_the_metrics_directory_gunicorn_conf_made_is_removed_on_exit_even_after_a_reload(gunicorn, tmp_path):
    import signal
    import stat

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "metrics-999999999").mkdir(mode=0o700)  # a master killed before its exit handler: no such pid
    alive = state / f"metrics-{os.getpid()}"  # another gateway's, still running (this process)
    alive.mkdir(mode=0o700)
    server = gunicorn(workers=1, GATEWAY_STATE_DIR=str(state))
    made = re.search(r"metrics directory (\S+) \(removed on exit\)", server.log.read_text()).group(1)
    # In the gateway's private state directory, never the shared temporary one.
    assert os.path.dirname(made) == str(state)
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("metrics-")) == sorted(
        [os.path.basename(made), alive.name])
    server.proc.send_signal(signal.SIGHUP)  # gunicorn.conf.py is read again: no second directory
    deadline = time.monotonic() + 10
    while server.log.read_text().count("Booting worker") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.path.isdir(made)
    server.stop()
    assert not os.path.exists(made)
    assert server.log.read_text().count("metrics directory") == 1


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_a_stop_right_after_a_reload_still_drains(gunicorn, worker):
    """Only the workers a reload replaces skip the drain; the instance's own stop right after does not."""
    import signal

    server = gunicorn(workers=1, GATEWAY_DRAIN_DELAY="2", GATEWAY_WORKER=worker)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while server.log.read_text().count("Booting worker") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    assert requests_get(server.url + "/readyz").status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    ready = requests_get(server.url + "/readyz")
    assert ready.status_code == 503 and "stopping" in ready.json()["reasons"][0]
    server.proc.wait(timeout=20)


def requests_get(url):
    with recording_session() as http:
        return http.get(url, timeout=5)


def test_a_reload_under_gthread_keeps_the_instance_ready_and_drops_no_request(gunicorn, tmp_path):
    """The worker behind deploy/nginx.conf: a HUP's replaced workers are marked and stop without the drain.

    Probed through that nginx, as deployed: a replaced worker closes its idle kept-alive
    connections as it stops, and a request sent on one at that instant meets a closed
    connection. HTTP/1.1 clients retry an idempotent request on a new connection then (RFC 9112,
    9.3.1), and nginx does on its upstream keep-alive connections; a client of gunicorn itself
    that does not saw one such error in about ten reloads at gunicorn 27.0.0.
    """
    import signal
    import threading

    from bench.common import start_nginx

    server = gunicorn(workers=2, GATEWAY_DRAIN_DELAY="2", GATEWAY_WORKER="gthread")
    workdir = tmp_path / "nginx"
    workdir.mkdir(mode=0o700)
    front, url = start_nginx(server.url, workdir)
    stop, statuses = threading.Event(), []

    def probe():
        with recording_session() as http:
            while not stop.is_set():
                try:
                    statuses.append(http.get(url + "/readyz", timeout=10).status_code)
                except OSError as exc:
                    statuses.append(type(exc).__name__)

    prober = threading.Thread(target=probe)
    try:
        prober.start()
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while server.log.read_text().count("Booting worker") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the replaced workers have stopped by now (no drain delay for them)
        stop.set()
        prober.join()
    finally:
        stop.set()
        front.terminate()
        front.wait(timeout=10)
    assert server.log.read_text().count("Booting worker") == 4
    assert len(statuses) > 20 and set(statuses) == {200}, statuses


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_a_stop_after_serving_leaves_no_traceback_and_no_ignored_exception(gunicorn, worker):
    # What a platform engineer reads at every deploy: the workers' exit must be as quiet as their start.
    # (gevent before 26.5 with greenlet 3.4 or later printed "Exception ignored in _removeHandlerRef
    # ... RuntimeError: greenlet is being finalized" once per worker as the interpreter shut down.)
    import requests

    server = gunicorn(workers=2, GATEWAY_WORKER=worker)
    with requests.Session() as browser:
        assert browser.get(server.url + "/", headers=user_headers("alice@acme.example"), timeout=10).status_code == 200
        assert browser.get(server.url + "/dashboard/api/summary", headers=user_headers("alice@acme.example"),
                           timeout=10).status_code == 200
    server.stop()
    log = server.log.read_text()
    assert "Shutting down: Master" in log and log.count("Worker exiting") == 2, log
    assert "Traceback" not in log and "Exception ignored" not in log, log


@pytest.mark.smoke  # gc.freeze and gunicorn's hooks, on every Python we declare
@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_workers_inherit_the_preloaded_app_frozen_and_reloads_freeze_no_garbage(sim, tmp_path, worker):
    """A full collection stops a worker's every request: it must not walk the whole preloaded app (tens
    of ms against under one, bench/gc_pauses.py). And what a reload leaves behind (gunicorn's replaced
    settings) must not be frozen with it, kept for good in the master and every worker."""
    import signal

    from conftest import ROOT, base_config, start_gunicorn

    env = {k: v for k, v in base_config(sim).items() if isinstance(v, str)}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", GATEWAY_WORKER=worker)
    server = start_gunicorn(env, tmp_path / "gunicorn.log", workers=2, app="frozen_probe:app")

    def frozen() -> set[int]:
        return {int(requests.get(server.url + "/test-frozen-objects", timeout=10).text) for _ in range(6)}

    def reload(times: int) -> None:
        for _ in range(times):
            booted = server.log.read_text(errors="replace").count("Booting worker")
            server.proc.send_signal(signal.SIGHUP)
            log_once(server, "Booting worker", times=booted + 2)
        log_once(server, "Worker exiting", times=booted)  # only the new workers answer now

    try:
        assert min(frozen()) > 10_000  # the loaded gateway is some 45,000 objects
        reload(1)  # a first reload imports a few things for good
        before = frozen()
        reload(5)
        after = frozen()
        # Each reload froze some 260 objects of garbage for good; now some 20 of its own.
        assert max(after) - max(before) < 5 * 50, (before, after)
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        server.stop()
