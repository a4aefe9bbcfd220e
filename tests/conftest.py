"""Shared fixtures: a live Zipteams stand-in, app factories, gunicorn, and the leak oracle.

Every response the tests receive (test client, requests, gunicorn, Chromium), every
request the stand-in's dashboard receives and every log line is recorded; after each
test the leak oracle fails it if a secret or a token reached any of them where it
does not belong. ``test_leaks.py`` (dispatched last) is a final net over its worker's run.
With CI=true, a skipped test fails instead (see ``pytest_runtest_makereport``).
"""
from __future__ import annotations

import json
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
from typing import NamedTuple
from urllib.parse import quote, quote_plus, unquote_plus

import pytest
import requests
from flask.testing import FlaskClient

from gateway import create_app
from gateway.config import SETTINGS
from gateway.sim import create_sim_app
from gateway.sim.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
API_KEY = "partner-test-key"
API_SECRET = "zsecret-" + secrets.token_hex(20)
SECRET_KEY = secrets.token_urlsafe(40)
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")


# ---------------------------------------------------------------- leak oracle
class Received(NamedTuple):
    """One response a client in the tests received."""

    where: str
    headers: list[tuple[str, str]]
    body: bytes

    def blob(self) -> bytes:
        return "\n".join(f"{k}: {v}" for k, v in self.headers).encode() + b"\n\n" + self.body


# A minted token is known by its header and payload (the payload holds a unique ``jti``), so
# it is found even when more base64url text follows its signature.
_TOKEN_HEAD = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.")
_JWT_TEXT = re.compile(JWT_SHAPE.pattern.decode())
MINTED = "a dashboard token the stand-in minted"
MIN_SECRET_LENGTH = 8
_SECRET_SETTINGS = tuple(s.name for s in SETTINGS if s.secret)


class LeakWatch:
    """The leak oracle: the run's secrets, and every channel they could escape by.

    Channels: responses any client in the tests received (test client, requests
    sessions, Chromium through ``record_browser``), requests the stand-in's
    dashboard received (its journal), and log lines (in-process logging and the
    gunicorn log files in ``log_files``). ``check()`` scans what arrived since the
    previous check; the autouse ``leak_oracle`` fixture runs it after every test.
    ``responses``, ``log_lines`` and ``log_files`` keep the whole run for the final
    net in test_leaks.py.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.responses: list[Received] = []
        self.log_files: list[Path] = []
        self.log_lines: list[str] = []
        self._session_secrets: dict[str, str] = {}  # value -> name
        self._test_secrets: dict[str, str] = {}
        self._in_test = False
        self._minted: dict[bytes, bytes] = {}  # header.payload. -> whole token
        self._sims: list = []  # (label, SimState, last journal seq drained)
        self._browser_pending: list = []
        self._browser_finished: set = set()  # Playwright Requests whose bodies have fully arrived
        self._seen_responses = 0
        self._seen_log_lines = 0
        self._file_offsets: dict[Path, int] = {}

    # ------------------------------------------------------------ secrets
    def secret(self, value: str, name: str) -> str:
        """Register a secret, by a name the failure message may print; returns ``value``.

        Registered during a test, it is watched until that test ends; registered at
        import time (a module constant), for the rest of the run.
        """
        if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
            # A short value would match by chance everywhere; tests can afford longer secrets.
            raise ValueError(f"secret {name!r} must be a string of at least {MIN_SECRET_LENGTH} characters")
        if value not in self._session_secrets:
            (self._test_secrets if self._in_test else self._session_secrets).setdefault(value, name)
        return value

    def secrets_in_config(self, config: dict) -> None:
        """Watch every secret setting an app or gunicorn is given (proxy, hand-off, OIDC client...)."""
        for name in _SECRET_SETTINGS:
            value = config.get(name)
            for part in value.split(",") if isinstance(value, str) else ():
                # Too short to tell from chance matches (an OIDC client secret "s"): not watched.
                if len(part.strip()) >= MIN_SECRET_LENGTH:
                    self.secret(part.strip(), name)

    def _needles(self) -> list[tuple[str, bytes]]:
        needles = []
        for value, name in {**self._session_secrets, **self._test_secrets}.items():
            for form in {value, quote(value, safe=""), quote_plus(value)}:
                needles.append((name, form.encode()))
        return needles

    def watch_sim(self, label: str, state) -> None:
        with self.lock:
            self._sims.append([label, state, 0])

    def _learn_minted(self) -> None:
        for _, state, _ in self._sims:
            for token in state.drain_minted():
                raw = token.encode()
                head = _TOKEN_HEAD.match(raw)
                if head:
                    self._minted[head.group(0)] = raw

    def is_minted(self, value: str) -> bool:
        raw = value.encode()
        head = _TOKEN_HEAD.match(raw)
        return bool(head) and self._minted.get(head.group(0)) == raw

    # ---------------------------------------------------------- recording
    def record(self, where: str, headers, body: bytes) -> None:
        pairs = headers.items() if hasattr(headers, "items") else headers
        self.responses.append(Received(where, [(str(k), str(v)) for k, v in pairs], body or b""))

    def record_browser_response(self, response) -> None:
        # Playwright calls made inside its event handlers can deadlock: fetch later, in flush_browser().
        self._browser_pending.append(response)

    def record_browser_finished(self, request) -> None:
        self._browser_finished.add(request)

    def flush_browser(self) -> None:
        pending, self._browser_pending = self._browser_pending, []
        finished, self._browser_finished = self._browser_finished, set()
        for response in pending:
            if response.request not in finished:
                # body() and even the raw headers wait for the load to end, which a response
                # nobody reads (a fetch() whose body is ignored) never does.
                self.record("Chromium " + response.url, response.headers, b"")
                continue
            try:
                headers = [(h["name"], h["value"]) for h in response.headers_array()]
            except Exception:  # noqa: BLE001 - closed page: the cheap headers are still there
                headers = list(response.headers.items())
            try:
                body = response.body()
            except Exception:  # noqa: BLE001 - redirects and aborted loads have no body
                body = b""
            self.record("Chromium " + response.url, headers, body)

    # ------------------------------------------------------------ scanning
    def _found(self, data: bytes, needles, tokens: bool) -> set[str]:
        names = {name for name, needle in needles if needle in data}
        if tokens and self._minted:
            at = data.find(b"eyJ")
            while at != -1:
                head = _TOKEN_HEAD.match(data, at)
                if head:
                    token = self._minted.get(head.group(0))
                    if token and data.startswith(token, at):
                        names.add(MINTED)
                        break
                at = data.find(b"eyJ", at + 3)
        return names

    def check(self, token_in_browser: bool = False) -> list[str]:
        """What leaked since the previous check, as messages that name secrets but never show them.

        ``token_in_browser`` (iframe mode): minted tokens may reach responses, and the Referer
        the browser sends back to the dashboard, since the frame's own URL holds the token.
        """
        self.flush_browser()
        self._learn_minted()
        needles = self._needles()
        findings: list[str] = []

        def scan(data, channel: str, where: str, tokens: bool = True) -> None:
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogateescape")
            for name in sorted(self._found(data, needles, tokens)):
                findings.append(f"{name} reached {channel} ({where})")

        # Other threads keep appending: slice up to a length read once, or an item could be skipped.
        end = len(self.responses)
        responses, self._seen_responses = self.responses[self._seen_responses:end], end
        for received in responses:
            channel = f"response from {received.where}"
            for header, value in received.headers:
                scan(value, channel, f"header {header}", not token_in_browser)
            scan(received.body, channel, "body", not token_in_browser)

        for entry in self._drain_dashboard_requests():
            if "dropped" in entry:
                findings.append(f"{entry['dropped']} requests to the stand-in at {entry['sim']} went unseen "
                                "(its journal's cap was reached)")
            else:
                self._scan_dashboard_request(entry, scan, token_in_browser)

        end = len(self.log_lines)
        lines, self._seen_log_lines = self.log_lines[self._seen_log_lines:end], end
        for line in lines:
            logger_name, _, rest = line.partition(" ")
            scan(line, "a log line", f"logger {logger_name}, {rest.partition(' ')[0]}")
        for path in list(self.log_files):
            scan(self._new_log_bytes(path), "a log file", path.name)
        return list(dict.fromkeys(_redact(f, needles) for f in findings))

    def _drain_dashboard_requests(self) -> list[dict]:
        entries = []
        for watched in self._sims:
            label, state, last = watched
            drained, seen = state.drain_requests()
            if seen - last > len(drained):
                entries.append({"dropped": seen - last - len(drained), "sim": label})
            watched[2] = seen
            entries.extend(dict(e, sim=label) for e in drained)
        return entries

    def _scan_dashboard_request(self, entry: dict, scan, token_in_browser: bool) -> None:
        channel = f"the stand-in's dashboard at {entry['sim']}: {entry['method']} {entry['path']}"
        scan(entry["path"], channel, "path")
        # The designated places for a token: the whole ``token`` parameter, or a Bearer header.
        for piece in entry["query"].split("&") if entry["query"] else []:
            name, _, value = piece.partition("=")
            designated = name == "token" and self.is_minted(unquote_plus(value))
            scan(piece, channel, f"query parameter {unquote_plus(name)}", tokens=not designated)
        for header, value in entry["headers"]:
            designated = (header.lower() == "authorization" and value.startswith("Bearer ")
                          and self.is_minted(value[7:])) or (token_in_browser and header.lower() == "referer")
            scan(value, channel, f"header {header}", tokens=not designated)
        for cookie, value in entry["cookies"]:
            scan(value, channel, f"cookie {cookie}")

    def _new_log_bytes(self, path: Path) -> bytes:
        offset = self._file_offsets.get(path, 0)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return b""
        # A line still being written is scanned whole next time, not cut across a secret.
        end = data.rfind(b"\n") + 1
        self._file_offsets[path] = offset + end
        return data[:end]

    def begin_test(self) -> None:
        self._in_test = True

    def end_test(self) -> None:
        self._in_test = False
        self._test_secrets.clear()


def _redact(text: str, needles) -> str:
    for name, needle in needles:
        text = text.replace(needle.decode(), f"<{name}>")
    return _JWT_TEXT.sub("<token>", text)


LEAKS = LeakWatch()
LEAKS.secret(API_KEY, "API key")
LEAKS.secret(API_SECRET, "API secret")
LEAKS.secret(SECRET_KEY, "GATEWAY_SECRET_KEY")


@pytest.fixture
def leaks():
    """The leak oracle: ``leaks.secret(value, "name")`` watches a secret for this test."""
    return LEAKS


@pytest.fixture(autouse=True)
def leak_oracle(request):
    """Fails the test that lets any secret reach a response, the stand-in's dashboard, or a log.

    ``@pytest.mark.token_in_browser`` lets minted dashboard tokens (only those) reach
    responses, for iframe mode, which puts the token in the iframe URL by design; and so
    the Referer Chromium sends from that frame to the dashboard's own files.
    """
    # What arrived between tests (a straggling thread, a wider fixture) is reported with
    # this test, marked as such, rather than lost.
    leftovers = LEAKS.check()
    LEAKS.begin_test()
    yield
    try:
        found = LEAKS.check(token_in_browser=request.node.get_closest_marker("token_in_browser") is not None)
    finally:
        LEAKS.end_test()
    if leftovers:
        found = [f + " [between tests, before this one began]" for f in leftovers] + found
    if found:
        pytest.fail("leak oracle: a secret left the server:\n  " + "\n  ".join(found), pytrace=False)


def record_browser(target):
    """Record every response Chromium receives through ``target`` for the leak oracle.

    ``target`` is a Playwright Browser (every context and page it opens from now on),
    a BrowserContext, or a Page. Bodies are fetched when the context or page closes,
    or at the end of the test, whichever comes first.
    """
    if getattr(target, "_leak_recorded", False):
        return target
    target._leak_recorded = True
    if hasattr(target, "new_context"):  # a Browser
        new_context, new_page = target.new_context, target.new_page

        def recorded_context(*args, **kwargs):
            return record_browser(new_context(*args, **kwargs))

        def recorded_page(*args, **kwargs):
            page = new_page(*args, **kwargs)
            record_browser(page.context)
            return page

        target.new_context, target.new_page = recorded_context, recorded_page
        return target
    target.on("response", LEAKS.record_browser_response)
    target.on("requestfinished", LEAKS.record_browser_finished)
    close = target.close

    def flush_then_close(*args, **kwargs):
        LEAKS.flush_browser()
        return close(*args, **kwargs)

    target.close = flush_then_close
    return target


# ------------------------------------------------------------ accessibility
ARTIFACTS = ROOT / "test-artifacts"
AXE_JS = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"  # pinned in package.json
_AXE_RUN = """(exclude) => axe.run(exclude.length ? {exclude: exclude.map(s => [s])} : document,
                                 {iframes: false, resultTypes: ["violations"]})
    .then(r => r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, url: v.helpUrl,
        nodes: v.nodes.map(n => ({target: n.target.join(" "), summary: n.failureSummary}))})))"""


def axe_check(page, name: str, *, exclude: tuple[str, ...] = ()) -> None:
    """Run axe-core on ``page`` as it is now and fail listing every violation.

    Every rule axe runs by default (WCAG 2.x A/AA and best practices). The dashboard's
    frame is not entered (``iframes: false``): it is the vendor's page, not ours; the
    iframe element itself is still checked (its title). A screenshot of the state checked
    is kept as ``test-artifacts/<name>.png``, and the violations beside it as JSON.
    ``page`` may be a Frame (our page framed by a partner's): the screenshot is then its
    whole tab's.
    """
    if not AXE_JS.exists():
        from certified_idp import _install_once  # the suite's one `npm ci --prefix tests`, where npm is there

        _install_once()
    if not AXE_JS.exists():
        pytest.skip("tests/node_modules/axe-core missing: run `npm ci --prefix tests`")
    ARTIFACTS.mkdir(exist_ok=True)
    (page if hasattr(page, "screenshot") else page.page).screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Evaluated through Playwright rather than added as a <script> tag (add_script_tag),
        # which our CSP (script-src 'self') refuses: this way the CSP stays enforced, with no
        # bypass_csp, and the tests that watch for CSP violations still mean what they say.
        page.evaluate(AXE_JS.read_text(encoding="utf-8") + "\n;0")
    violations = page.evaluate(_AXE_RUN, list(exclude))
    report = ARTIFACTS / f"{name}.axe.json"
    if not violations:
        report.unlink(missing_ok=True)
        return
    report.write_text(json.dumps(violations, indent=2))
    lines = [f"axe-core: {len(violations)} violation(s) on {name} (screenshot test-artifacts/{name}.png):"]
    for v in violations:
        lines.append(f"  {v['id']} ({v['impact']}): {v['help']} <{v['url']}>")
        for node in v["nodes"][:5]:
            lines.append(f"    at {node['target']}: {' '.join(node['summary'].split())[:300]}")
    raise AssertionError("\n".join(lines))


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
        # With follow_redirects, the first hop is only in the history.
        for hop in (*getattr(response, "history", ()), response):
            sent = getattr(hop, "request", None)
            where = f"the test client: {sent.method} {sent.full_path.rstrip('?')}" if sent else "the test client"
            LEAKS.record(where, hop.headers, hop.get_data())
        return response


def _record_requests_response(response, *args, **kwargs):
    # The raw headers keep repeated ones (Set-Cookie) apart; each redirect hop runs this hook too.
    raw = getattr(response.raw, "headers", None)
    headers = list(raw.items()) if raw is not None else response.headers
    where = f"{response.request.method} {response.url}"
    if not response.raw or response.headers.get("Content-Type", "").startswith("text/csv"):
        LEAKS.record(where, headers, b"")
    else:
        LEAKS.record(where, headers, response.content)


def recording_session() -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(_record_requests_response)
    return session


@pytest.fixture
def http():
    """A requests.Session whose every response is recorded for the leak scan."""
    with recording_session() as session:
        yield session


# ----------------------------------------------------------- no silent skips
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip is a failure: a missing Chromium or redis-server must not pass unseen."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI=true forbids skips: {_skip_reason(report.longrepr)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (importorskip) is a collection error under CI=true."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI=true forbids skips: {_skip_reason(report.longrepr)}"
    return report


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


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

    def requests(self, since: int = 0) -> list[dict]:
        """The dashboard requests the oracle has not drained yet (method, path, query, headers, cookies)."""
        return self.http.get(self.url + "/_sim/requests", params={"since": since}, timeout=5).json()["requests"]


def start_sim(**kwargs) -> Sim:
    app = create_sim_app({API_KEY: API_SECRET}, **kwargs)
    sim = Sim(ServerThread(app).start())
    # Its minted tokens become secrets, and its dashboard requests a channel, for the oracle.
    LEAKS.watch_sim(sim.url, app.extensions["sim"])
    return sim


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
STATE_DIRS: list[Path] = []  # [the run's GATEWAY_STATE_DIR], set by _private_state_dir


@pytest.fixture(scope="session", autouse=True)
def _private_state_dir(tmp_path_factory):
    """Without Redis, the run's apps keep their marks under pytest's private temp directory,
    never in the repository's instance/ (the default); a test that needs its own passes one."""
    STATE_DIRS[:] = [tmp_path_factory.mktemp("gateway-state") / "state"]


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
        "GATEWAY_STATE_DIR": str(STATE_DIRS[0]),
        # GATEWAY_EMBED_MODE: the production default (proxy); tests about iframe mode say so.
        "TESTING": True,
        # An opened breaker's background probe would hit the shared stand-in during a later
        # test; tests about the probe pass a scheduler of their own.
        "BREAKER_SCHEDULE": lambda delay, job: None,
    }
    config.update(overrides)
    LEAKS.secrets_in_config(config)
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


def start_gunicorn(env: dict, log: Path, *, workers: int = 2, threads: int = 8, app: str = "wsgi:app",
                   timeout: float = 30, worker_class: str | None = None, elsewhere: Path | None = None) -> Gunicorn:
    """gunicorn started in the checkout, or (``elsewhere``) in another directory with nothing but
    ``-c /path/to/gunicorn.conf.py`` pointing at the checkout."""
    # No drain delay unless a test asks for one: every test's server stops at its end. No start-up
    # check either (test_preflight.py asks for it): its token request would count in every test's numbers.
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
                **({} if elsewhere else {"PYTHONPATH": str(ROOT)}),
                "GATEWAY_DRAIN_DELAY": "0", "GATEWAY_STARTUP_CHECK": "false", **env,
                # The app sizes per-worker shares from these, as in production.
                "WEB_CONCURRENCY": str(workers), "GATEWAY_THREADS": str(threads)}
    out = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
         "--bind", "127.0.0.1:0", "--workers", str(workers), "--threads", str(threads),
         *(["--worker-class", worker_class] if worker_class else []), app],
        cwd=elsewhere or ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
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

    def factory(*, workers: int = 2, threads: int = 8, worker_class: str | None = None,
                elsewhere: Path | None = None, **settings):
        env = {k: v for k, v in base_config(sim, **settings).items() if isinstance(v, str)}
        server = start_gunicorn(env, tmp_path / f"gunicorn-{len(started)}.log",
                                workers=workers, threads=threads, worker_class=worker_class, elsewhere=elsewhere)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- servers that trickle
@pytest.fixture
def trickler():
    """Servers that answer every connection with ``at_once``, then a byte at a time, one every
    0.2 s, for ever (``prefix``, then "a"s): each read's time-out starts again at every byte, so
    only a deadline in all ends a call to one."""
    stop, listeners = threading.Event(), []

    def start(prefix: bytes, at_once: bytes = b"") -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listeners.append(listener)

        def serve(conn):
            with conn:
                conn.settimeout(0.2)
                try:
                    conn.recv(65536)
                except OSError:
                    pass
                try:
                    conn.sendall(at_once)
                except OSError:
                    return
                for n in range(10 ** 6):
                    if stop.wait(0.2):
                        return
                    try:
                        conn.sendall(prefix[n:n + 1] or b"a")
                    except OSError:
                        return

        def accept():
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


HTTP_HEAD = b"HTTP/1.1 200 OK\r\nX-Slow: "  # a head that never ends
REDIS_BULK = b"$100000000\r\n"  # a bulk string of 100 MB, to come a byte at a time


# ------------------------------------------------------------------- redis
class SilentRedis:
    """Accepts connections and never answers: the worst kind of Redis outage."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.held, self.accepted = [], 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)
            self._accepted(conn)

    def _accepted(self, conn):
        pass  # held, never answered

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


class NotRedis(SilentRedis):
    """Something other than Redis at GATEWAY_CACHE_URL (by default: ``+PONG`` to every command, which
    redis-py 8's handshake meets with AttributeError), or, given ``answer``, a server that answers each
    command (its arguments, as bytes) with what ``answer`` returns."""

    def __init__(self, reply: bytes = b"+PONG\r\n", answer=None):
        self.answer = answer or (lambda args: reply)
        super().__init__()

    def _accepted(self, conn):
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        """RESP arrays of bulk strings (what redis-py sends), read one command at a time."""
        stream = conn.makefile("rb")
        try:
            while line := stream.readline():
                args = [line.strip()]
                if line.startswith(b"*"):
                    args = []
                    for _ in range(int(line[1:])):
                        size = int(stream.readline()[1:])
                        args.append(stream.read(size + 2)[:-2])
                conn.sendall(self.answer(args))
        except (OSError, ValueError):
            pass


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

    def pause(self) -> None:
        """Silent: connections are still accepted (by the kernel), nothing is ever answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

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
    else:
        _redis_session.resume()  # a test that failed while Redis was silent


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
    """The leak scan is collected last: pytest-xdist hands its file out after every other file,
    so it runs after everything its worker did (the whole run without xdist)."""
    last = [i for i in items if i.get_closest_marker("leak_scan")]
    items[:] = [i for i in items if not i.get_closest_marker("leak_scan")] + last
