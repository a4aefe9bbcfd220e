"""Shared fixtures: a live Zipteams stand-in, app factories, gunicorn, and a leak watch.

Every response the tests receive (test client, requests, gunicorn) and every
log line is recorded, so ``test_leaks.py`` (run last) can prove the partner
secret and the tokens never left the server.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from gateway import create_app
from gateway.sim import create_sim_app
from gateway.sim.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
API_KEY = "partner-test-key"
API_SECRET = "zsecret-" + secrets.token_hex(20)
SECRET_KEY = secrets.token_urlsafe(40)
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")


# ----------------------------------------------------------------- leak watch
class LeakWatch:
    """Everything that left the gateway during the run, to be scanned at the end."""

    def __init__(self):
        self.lock = threading.Lock()
        self.responses: list[tuple[str, bytes]] = []   # (where, headers + body)
        self.log_files: list[Path] = []
        self.log_lines: list[str] = []

    def record(self, where: str, headers, body: bytes) -> None:
        blob = "\n".join(f"{k}: {v}" for k, v in headers.items()).encode() + b"\n\n" + (body or b"")
        with self.lock:
            self.responses.append((where, blob))


LEAKS = LeakWatch()


class _LogRecorder(logging.Handler):
    def emit(self, record):
        try:
            LEAKS.log_lines.append(self.format(record))
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture(scope="session", autouse=True)
def record_all_logs():
    handler = _LogRecorder(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    logging.getLogger("gateway").setLevel(logging.DEBUG)
    # The tests' own HTTP client logs whole URLs at DEBUG (iframe URLs hold tokens);
    # the gateway itself keeps urllib3 at WARNING in production.
    logging.getLogger("urllib3").setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(previous)


class RecordingClient(FlaskClient):
    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        LEAKS.record("test-client", response.headers, response.get_data())
        return response


def _record_requests_response(response, *args, **kwargs):
    if not response.raw or response.headers.get("Content-Type", "").startswith("text/csv"):
        LEAKS.record(response.url, response.headers, b"")
    else:
        LEAKS.record(response.url, response.headers, response.content)


def recording_session() -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(_record_requests_response)
    return session


@pytest.fixture
def http():
    """A requests.Session whose every response is recorded for the leak scan."""
    with recording_session() as session:
        yield session


# ------------------------------------------------------------------- clocks
class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, start: float | None = None):
        self.now = float(start if start is not None else time.time())

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


# ---------------------------------------------------------------- stand-in
class Sim:
    """A live stand-in plus helpers to drive its control endpoints."""

    def __init__(self, server: ServerThread):
        self.server = server
        self.url = server.url
        self.api_url = server.url + "/api/v1"
        self.dashboard_url = server.url + "/dashboard/"
        self.http = requests.Session()

    def stats(self) -> dict:
        return self.http.get(self.url + "/_sim/stats", timeout=5).json()

    def fault(self, **spec) -> None:
        response = self.http.post(self.url + "/_sim/faults", json=spec, timeout=5)
        assert response.status_code == 200, response.text

    def reset(self) -> None:
        self.http.post(self.url + "/_sim/reset", timeout=5).raise_for_status()


def start_sim(**kwargs) -> Sim:
    app = create_sim_app({API_KEY: API_SECRET}, **kwargs)
    return Sim(ServerThread(app).start())


@pytest.fixture(scope="session")
def _shared_sim():
    sim = start_sim()
    yield sim
    sim.server.stop()


@pytest.fixture
def sim(_shared_sim):
    """The session's stand-in, with counters and faults reset for this test."""
    _shared_sim.reset()
    return _shared_sim


# -------------------------------------------------------------------- apps
def base_config(sim: Sim, **overrides) -> dict:
    config = {
        "ZIPTEAMS_API_KEY": API_KEY,
        "ZIPTEAMS_API_SECRET": API_SECRET,
        "ZIPTEAMS_API_URL": sim.api_url,
        "ZIPTEAMS_DASHBOARD_URL": sim.dashboard_url,
        "ZIPTEAMS_TIMEOUT": "5",
        "GATEWAY_SECRET_KEY": SECRET_KEY,
        "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml"),
        "GATEWAY_AUTH_MODE": "header",
        "GATEWAY_EMBED_MODE": "iframe",
        "TESTING": True,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(sim):
    """Build an app against the live stand-in; keyword arguments override settings."""

    def factory(**overrides):
        app = create_app(base_config(sim, **overrides))
        app.test_client_class = RecordingClient
        return app

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def user_headers(email: str, groups: str | None = None, **extra) -> dict:
    headers = {"X-Forwarded-Email": email}
    if groups is not None:
        headers["X-Forwarded-Groups"] = groups
    headers.update(extra)
    return headers


# ---------------------------------------------------------------- gunicorn
class Gunicorn:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, out):
        self.proc, self.url, self.log, self._out = proc, url, log, out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def start_gunicorn(env: dict, log: Path, *, workers: int = 2, threads: int = 8,
                   app: str = "wsgi:app", timeout: float = 30) -> Gunicorn:
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
                "PYTHONPATH": str(ROOT), **env}
    out = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
         "--bind", "127.0.0.1:0", "--workers", str(workers), "--threads", str(threads), app],
        cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    LEAKS.log_files.append(log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", text)
        if match and text.count("Booting worker") >= workers:
            url = match.group(1)
            try:
                requests.get(url + "/healthz", timeout=2)
                return Gunicorn(proc, url, log, out)
            except requests.ConnectionError:
                pass
        if proc.poll() is not None:
            out.close()
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{text}")
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    out.close()
    raise RuntimeError("gunicorn did not start:\n" + log.read_text(errors="replace"))


@pytest.fixture
def gunicorn(sim, tmp_path):
    """Start the gateway under real gunicorn: ``gunicorn(workers=2, **settings)``."""
    started: list[Gunicorn] = []

    def factory(*, workers: int = 2, threads: int = 8, **settings):
        env = {k: v for k, v in base_config(sim, **settings).items() if isinstance(v, str)}
        server = start_gunicorn(env, tmp_path / f"gunicorn-{len(started)}.log",
                                workers=workers, threads=threads)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- redis
REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A real redis-server on a free loopback port that a test may stop and start again."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


@pytest.fixture(scope="session")
def _redis_session(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(_redis_session):
    """The session's redis-server, empty and running at the start of the test."""
    if _redis_session.proc.poll() is not None:
        _redis_session.start()
    _redis_session.flush()
    yield _redis_session
    if _redis_session.proc.poll() is not None:
        _redis_session.start()


# -------------------------------------------------------------- signing keys
class KeyServer:
    """Signing keys and a live JWKS endpoint serving their public halves (rotation-ready)."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from werkzeug.wrappers import Request, Response

        self.keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.add("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))

        @Request.application
        def serve(request):
            import json as _json

            return Response(_json.dumps({"keys": [self.jwk(kid) for kid in self.published]}),
                            mimetype="application/json")

        self.server = ServerThread(serve).start()
        self.url = self.server.url + "/jwks.json"

    def add(self, kid, alg, private_key, publish=True):
        self.keys[kid] = (alg, private_key)
        if publish:
            self.published.append(kid)

    def jwk(self, kid):
        import json as _json

        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        alg, key = self.keys[kid]
        algo = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
        jwk = _json.loads(algo.to_jwk(key.public_key()))
        jwk.update(kid=kid, alg=alg, use="sig")
        return jwk

    def sign(self, claims: dict, kid: str = "rsa-1", **headers) -> str:
        import jwt as _jwt

        alg, key = self.keys[kid]
        return _jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, **headers})

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.keys[kid][1].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="session")
def keys():
    server = KeyServer()
    yield server
    server.server.stop()


# ---------------------------------------------------------------- ordering
def pytest_collection_modifyitems(items):
    """The leak scan runs last, after every other test has produced output."""
    last = [i for i in items if i.get_closest_marker("leak_scan")]
    items[:] = [i for i in items if not i.get_closest_marker("leak_scan")] + last
