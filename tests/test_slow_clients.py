"""Slow and stalled clients cannot starve everyone else: gunicorn as deployed, reached directly,
and behind the shipped nginx front (deploy/nginx.conf).

The attack (bench/slow_clients.py's, all at once): 40 slowloris connections, 24 signed-in users
who open a large export and stop reading, and 24 connections for each request shape today's
old worker handed to a thread (a CRLF before the request line, ``Transfer-Encoding: identity,
chunked``, a 17+ hex digit chunk size, a chunk-size line over 1 KB, a body over 1 MB, a plain
body), each trickling its body a byte every 4 s. A normal user must still be answered at once.
The same attack against stock gthread reached directly shows the test can fail.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from bench.common import start_nginx
from gateway.serving.admission import Admission, Places
from bench.slow_clients import Attack
from conftest import ROOT, base_config, free_port, recording_session, user_headers

NORMAL_USER = user_headers("alice@acme.example", "emea")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
needs_nginx = pytest.mark.skipif(not NGINX and os.environ.get("CI") != "true",
                                 reason="nginx is not installed (apt-get install nginx)")


def _connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: a small window
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    return sock


def _head_lines(headers: dict) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


def _served_at_once(url: str) -> None:
    """A normal request, answered in under a second whatever the test holds open."""
    started = time.monotonic()
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def _log_once(server, marker: str, timeout: float = 10) -> str:
    """The gunicorn log once ``marker`` shows in it (log lines are written in batches)."""
    deadline = time.monotonic() + timeout
    while marker not in (text := server.log.read_text(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


def _whole_attack(url: str) -> Attack:
    return Attack(url, reader=lambda n: f"reader{n}@us.acme.example", export_mb=300)


def _normal_user_timings(url: str, rounds: int = 15) -> list[float]:
    timings = []
    with recording_session() as http:
        for _ in range(rounds):
            for path in ("/", "/dashboard/api/summary"):
                started = time.monotonic()
                response = http.get(url + path, headers=NORMAL_USER, timeout=5)
                timings.append(time.monotonic() - started)
                assert response.status_code == 200, (path, response.status_code)
    return timings


def _assert_fast(timings: list[float]) -> None:
    # Loopback answers take milliseconds; a second leaves room for a busy CI machine, while a
    # starved server makes the user wait for a thread for as long as the attack lasts.
    assert max(timings) < 1.0, f"slowest {max(timings):.2f}s, median {statistics.median(timings):.3f}s"


@pytest.mark.smoke
def test_the_whole_attack_leaves_a_normal_user_served_at_once_under_the_default_start(gunicorn):
    server = gunicorn(workers=2, threads=8)
    requests.get(server.url + "/", headers=NORMAL_USER, timeout=10)  # the team's token, fetched once
    attack = _whole_attack(server.url)
    try:
        time.sleep(1)  # the exports fill their socket buffers
        timings = _normal_user_timings(server.url)
    finally:
        attack.close()
    # Each worker streams at most half of GATEWAY_THREADS' worth of exports; the rest were told to retry.
    heads = attack.export_heads
    assert heads["started"] + heads["refused"] == 24 and 1 <= heads["started"] <= 8 and heads["refused"], heads
    _assert_fast(timings)
    assert "Traceback" not in server.log.read_text()


def test_the_same_trickled_bodies_starve_stock_gthread_reached_directly(gunicorn):
    """The oracle can fail: stock gthread gives each trickled body a thread until it is complete."""
    server = gunicorn(workers=1, threads=8, GATEWAY_WORKER="gthread")
    requests.get(server.url + "/healthz", timeout=10)
    attack = Attack(server.url, slowloris=0, stalled=0, per_shape=2)  # 12 bodies for 8 threads
    try:
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(server.url + "/healthz", timeout=1.5)
    finally:
        attack.close()


@needs_nginx
def test_behind_the_shipped_nginx_front_the_whole_attack_leaves_gthread_serving(gunicorn, tmp_path):
    """The buffering front (deploy/nginx.conf as shipped, addresses replaced) holds the attack for gthread."""
    server = gunicorn(workers=2, threads=8, GATEWAY_WORKER="gthread")
    workdir = tmp_path / "nginx"
    workdir.mkdir(mode=0o700)
    # Identity headers passed on, as deploy/nginx.conf says to when an SSO proxy in front sets them.
    front, url = start_nginx(server.url, workdir, keep_identity=True)
    try:
        requests.get(url + "/", headers=NORMAL_USER, timeout=10)
        attack = _whole_attack(url)
        try:
            time.sleep(1)
            timings = _normal_user_timings(url)
        finally:
            attack.close()
        _assert_fast(timings)
    finally:
        front.terminate()
        front.wait(timeout=10)


@needs_nginx
def test_the_shipped_nginx_front_lets_no_browser_send_an_identity_header(gunicorn, tmp_path):
    server = gunicorn(workers=1)
    workdir = tmp_path / "nginx"
    workdir.mkdir(mode=0o700)
    front, url = start_nginx(server.url, workdir)
    try:
        for name in ("X-Forwarded-Email", "X_Forwarded_Email"):
            response = requests.get(url + "/", headers={name: "alice@acme.example"}, timeout=10)
            assert response.status_code == 401, name
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        front.terminate()
        front.wait(timeout=10)


def test_a_body_trickled_steadily_gets_408_at_the_body_deadline(gunicorn):
    """A byte every 0.3 s would reset any per-read timeout forever; the body deadline is in all."""
    server = gunicorn(workers=1, threads=2, GATEWAY_BODY_TIMEOUT="1.5")
    sock = _connect(server.url)
    sock.sendall(b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    started, answer = time.monotonic(), b""
    sock.settimeout(0.3)
    while time.monotonic() - started < 6 and not answer:
        try:
            answer = sock.recv(200)
        except TimeoutError:
            sock.send(b"a")
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 1.4 < time.monotonic() - started < 4
    assert "request body not complete within 1.5s" in _log_once(server, "request body not complete")


def test_a_head_that_never_completes_is_closed_at_the_header_timeout(gunicorn):
    server = gunicorn(workers=1, threads=2, GATEWAY_HEADER_TIMEOUT="1")
    idle, partial = _connect(server.url), _connect(server.url)
    partial.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = time.monotonic()
    partial.settimeout(0.3)
    closed = False
    while time.monotonic() - started < 5 and not closed:
        try:
            closed = partial.recv(4096) == b""
        except TimeoutError:
            partial.send(b"a")  # a byte at a time: never the end of the head
        except ConnectionResetError:
            closed = True
    assert closed and time.monotonic() - started < 4
    idle.settimeout(5)
    assert idle.recv(10) == b""  # an idle connection is closed without an answer
    idle.close()
    partial.close()
    assert "Traceback" not in server.log.read_text()


def test_stalled_uploads_and_100_continue_hold_no_place(gunicorn):
    # One place, four uploads stalled mid-body (one after a 100 Continue): a normal request is answered at once.
    server = gunicorn(workers=1, threads=1)
    stalled = []
    try:
        for n in range(4):
            sock = _connect(server.url)
            stalled.append(sock)
            expect = b"Expect: 100-continue\r\n" if n == 0 else b""
            sock.sendall(b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 1000\r\n" + expect + b"\r\n")
            if expect:
                assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(b"next=")
        _served_at_once(server.url)
    finally:
        for sock in stalled:
            sock.close()


def test_bodies_held_at_once_are_bounded_per_worker_and_the_next_gets_a_503_page_to_retry(gunicorn):
    """A reviewer's attack: connections that each send all but the last byte of a maximal body made
    a worker hold 10 MB apiece, with no bound on the total. GATEWAY_BODY_BUFFER bounds it."""
    server = gunicorn(workers=1, threads=2, GATEWAY_PROXY_MAX_BODY="100000", GATEWAY_BODY_BUFFER="250000")
    head = (b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Accept: application/json\r\nContent-Length: 100000\r\n\r\n")
    held = []
    try:
        for _ in range(2):  # room for two in 250,000 bytes
            sock = _connect(server.url)
            sock.sendall(head + b"a" * 99999)
            held.append(sock)
        time.sleep(0.3)  # both reserved
        third = _connect(server.url)
        held.append(third)
        third.sendall(head + b"a" * 10)
        head_end, answer = -1, b""
        while head_end < 0 or len(answer) < head_end + int(re.search(rb"Content-Length: (\d+)", answer)[1]):
            answer += third.recv(65536)  # the head and the page may come in separate packets
            head_end = answer.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in answer else -1
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Retry-After: 5\r\n" in answer and b'"uploads_busy"' in answer
        assert "GATEWAY_BODY_BUFFER 250000" in _log_once(server, "request body refused")
        _served_at_once(server.url)
        for sock in held[:2]:
            sock.close()  # their share is given back: the next body is read again
        time.sleep(0.3)
        sock = _connect(server.url)
        held.append(sock)
        sock.sendall(head + b"a" * 100000)
        assert not sock.recv(4096).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in held:
            sock.close()


def test_gateway_threads_bounds_the_requests_running_at_once(gunicorn):
    server = gunicorn(workers=1, threads=1)
    headers = _head_lines(NORMAL_USER)
    requests.get(server.url + "/dashboard/api/summary", headers=NORMAL_USER, timeout=10)  # token cached
    socks = [_connect(server.url) for _ in range(2)]
    started = time.monotonic()
    for sock in socks:
        sock.sendall(f"GET /dashboard/api/slow?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
    answers = [_read_all(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert time.monotonic() - started >= 1.9  # one after the other: one place


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_a_client_that_stops_reading_is_cut_off_and_gives_its_download_back(gunicorn, worker):
    server = gunicorn(workers=1, threads=2, GATEWAY_CLIENT_TIMEOUT="1", GATEWAY_DOWNLOADS_PER_USER="1",
                      GATEWAY_WORKER=worker)
    sock = _connect(server.url, rcvbuf=4096)
    headers = _head_lines(NORMAL_USER)
    sock.sendall(f"GET /dashboard/export.csv?mb=200 HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # Stalled past the client timeout (counted from the last write that moved anything, and the
    # kernel's buffers take a few seconds to fill): the gateway gives up on us.
    time.sleep(7)
    sock.settimeout(10)
    received = len(_read_all(sock))
    sock.close()
    assert received < 200 * 1024 * 1024  # cut off, not delivered
    with recording_session() as http:  # the one download this user may have is free again
        assert http.get(server.url + "/dashboard/export.csv?mb=1", headers=NORMAL_USER, timeout=30).status_code == 200
    # One line about it, the setting named, and no traceback of the server's frames.
    log = server.log.read_text()
    assert log.count("a client stopped reading its answer for GATEWAY_CLIENT_TIMEOUT: connection closed") == 1, log
    assert '"level": "warning", "logger": "gunicorn.error"' in log and "Traceback" not in log, log


def test_one_user_may_stream_two_downloads_at_once_per_worker(gunicorn):
    server = gunicorn(workers=1, threads=8)
    headers = _head_lines(NORMAL_USER)
    opened, sockets = [], []
    try:
        for _ in range(3):
            sock = _connect(server.url, rcvbuf=4096)
            sockets.append(sock)
            sock.sendall(f"GET /dashboard/export.csv?mb=100 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Accept: application/json\r\n{headers}\r\n".encode())
            opened.append(sock.recv(4096))
        statuses = [head.split(b" ", 2)[1] for head in opened]
        assert statuses == [b"200", b"200", b"503"], statuses
        refused = opened[2]
        while b"}" not in refused.partition(b"\r\n\r\n")[2]:
            refused += sockets[2].recv(4096)
        assert b"Retry-After: 5" in refused and b'"code":"downloads_busy"' in refused.replace(b" ", b"")
    finally:
        for sock in sockets:
            sock.close()


def test_downloads_give_their_slot_back_when_they_end(gunicorn):
    server = gunicorn(workers=1, threads=8, GATEWAY_DOWNLOADS_PER_WORKER="2")
    with recording_session() as http:
        statuses = [http.get(server.url + "/dashboard/export.csv?mb=2", headers=NORMAL_USER, timeout=30).status_code
                    for _ in range(5)]
    assert statuses == [200] * 5  # one at a time: each gave its slot back


@pytest.mark.parametrize("size", [b"-6", b"+5", b"0x5", b"1_0"])
def test_a_chunk_size_that_is_not_plain_hex_is_a_quick_400_and_hangs_nothing(gunicorn, size):
    server = gunicorn(workers=1, threads=2)
    sock = _connect(server.url)
    sock.sendall(b"POST /logout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 4")  # refused at once
    sock.close()
    _served_at_once(server.url)


def test_a_head_past_gunicorns_limit_is_refused_not_held(gunicorn):
    server = gunicorn(workers=1, threads=2)
    sock = _connect(server.url)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 70000)
        answer = _read_all(sock)  # gunicorn's 4xx, or the connection closed: either way at once
    finally:
        sock.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]


def test_places_are_handed_to_waiters_in_arrival_order_never_to_a_newcomer():
    places, order, threads = Places(1), [], []

    def enter(name: str) -> None:
        with places:
            order.append(name)

    def queue(name: str) -> None:
        before = places.waiting
        threads.append(threading.Thread(target=enter, args=(name,)))
        threads[-1].start()
        arrived = threading.Event()
        while places.waiting == before and not arrived.wait(0.001):
            pass  # until it is in line: the order of arrival is the test's to set

    places.__enter__()
    for name in ("a", "b", "c"):
        queue(name)
    places.__exit__(None, None, None)  # handed to "a", never left free for the newcomer below
    threads.append(threading.Thread(target=enter, args=("newcomer",)))
    threads[-1].start()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["a", "b", "c", "newcomer"]


def test_each_request_gives_way_to_the_workers_other_connections_before_it_runs():
    # gunicorn's gevent worker reads a kept-alive connection's next request without yielding:
    # without this turn one connection kept the worker while the others waited.
    events = []

    def app(environ, start_response):
        events.append("app")
        return [b""]

    admission = Admission(app, places=1, body_timeout=1, client_timeout=0, max_body=10, body_buffer=10,
                          give_way=lambda: lambda: events.append("gave way"))
    for _ in range(2):
        admission({"wsgi.input": io.BytesIO()}, lambda *args: None)
    assert events == ["gave way", "app", "gave way", "app"]
    # Real threads (this process is not gevent-patched) take turns without it.
    assert Admission(app, places=1, body_timeout=1, client_timeout=0, max_body=10, body_buffer=10).give_way is None


GIVE_WAY_UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import socket, gevent
from gateway.serving.admission import Admission
order = []
admission = Admission(lambda environ, start_response: order.append("busy connection's request") or [b""],
                      places=1, body_timeout=1, client_timeout=0, max_body=10, body_buffer=10)
a, b = socket.socketpair()
def other_connection():  # its request arrives while the busy connection is being served
    a.recv(1)
    order.append("other connection read")
reader = gevent.spawn(other_connection)
gevent.sleep(0)  # the reader runs until it waits on its socket
b.send(b"x")
for _ in range(100):  # a kept-alive connection whose next request has always arrived already
    admission({"wsgi.input": None}, lambda *args: None)
reader.join()
print(order.index("other connection read"))
"""


def test_the_turn_each_request_gives_lets_connections_waiting_on_their_sockets_in():
    # gevent.sleep(0) runs the yielding greenlet again before the loop polls for I/O (gevent's
    # documentation says so), so a connection whose next request had always arrived ran batch
    # after batch while connections waiting on their sockets were not read (a page p99 three
    # times gthread's in bench/run.py). A turn must end at the loop's next poll.
    out = subprocess.run([sys.executable, "-c", GIVE_WAY_UNDER_GEVENT], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) <= 2, f"the other connection was read after {out.stdout.strip()} requests"


def _fill_to_the_brim(pipe: int) -> None:
    """Whatever the server wrote, not one byte more fits in the pipe: the test could fail."""
    writer = os.open(f"/proc/self/fd/{pipe}", os.O_WRONLY | os.O_NONBLOCK)  # a write end of the same pipe
    try:
        for size in (4096, 1):
            try:
                while True:
                    os.write(writer, b"x" * size)
            except BlockingIOError:
                pass
    finally:
        os.close(writer)


@contextlib.contextmanager
def _writing_into_a_pipe_nobody_reads(sim, worker: str = "gevent"):
    """The production start, one worker, its stdout and stderr a pipe the test never reads: (gunicorn, url)."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "GATEWAY_DRAIN_DELAY": "0",
           **{k: v for k, v in base_config(sim).items() if isinstance(v, str)}, "WEB_CONCURRENCY": "1",
           "GATEWAY_WORKER": worker}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                             "--bind", f"127.0.0.1:{port}", "--workers", "1", "wsgi:app"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "gunicorn did not start"
                threading.Event().wait(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait(timeout=30)


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_a_stalled_log_reader_does_not_stop_the_master_from_stopping(sim, worker):
    """gunicorn's master writes lines of its own at every signal ("Handling signal: term"): into a
    pipe nobody reads, a blocking write would hold the stop until the reader came back."""
    with _writing_into_a_pipe_nobody_reads(sim, worker) as (proc, url):
        with requests.Session() as http:
            for _ in range(200):  # the worker's lines on their way too
                http.get(url + "/healthz", timeout=5)
        _fill_to_the_brim(proc.stdout.fileno())
        proc.send_signal(signal.SIGHUP)  # the master logs the reload, and starts and stops workers
        threading.Event().wait(2)
        _served_at_once(url)
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_a_stalled_log_reader_costs_log_lines_not_the_worker(sim):
    """Under gevent one thread runs every request and the log writer: a pipe nobody reads must not stop it."""
    with _writing_into_a_pipe_nobody_reads(sim) as (_, url):
        with requests.Session() as http:
            for _ in range(2000):  # a log line each: far more than the pipe's 64 KB
                assert http.get(url + "/healthz", timeout=5).status_code == 200
        _served_at_once(url)
