"""Slow and stalled clients cannot starve everyone else: gunicorn as deployed, reached directly.

The attack of the reliability review: 40 connections that send half a request line and
then trickle (slowloris), and 24 signed-in users who open a large export and stop
reading. A normal user must still be answered in under a second. The same attack
against stock gthread shows the test can fail.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
import requests

from conftest import recording_session, user_headers

NORMAL_USER = user_headers("alice@acme.example", "emea")


def _connect(server, rcvbuf: int | None = None) -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: a small window
    sock.settimeout(10)
    sock.connect((url.hostname, url.port))
    return sock


def _head_lines(headers: dict) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


def _served_at_once(server) -> None:
    """A normal request, answered in under a second whatever the test holds open."""
    started = time.monotonic()
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0


class Attack:
    """Slowloris connections and stalled export readers, held open until closed."""

    def __init__(self, server, *, slowloris: int = 40, stalled: int = 24):
        self.server, self.stop = server, threading.Event()
        self.sockets: list[socket.socket] = []
        self.export_heads: list[bytes] = []
        for _ in range(slowloris):
            sock = _connect(server)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the head
            self.sockets.append(sock)
        for n in range(stalled):
            sock = _connect(server, rcvbuf=4096)
            headers = _head_lines(user_headers(f"reader{n}@us.acme.example"))
            sock.sendall(f"GET /dashboard/export.csv?mb=300 HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
            self.export_heads.append(sock.recv(200))  # the status line, then nothing more is read
            self.sockets.append(sock)
        self._trickle = threading.Thread(target=self._keep_trickling, daemon=True)
        self._trickle.start()

    def _keep_trickling(self) -> None:
        while not self.stop.wait(0.5):
            for sock in self.sockets[:40]:
                try:
                    sock.send(b"X")  # one byte of a header name at a time: never complete
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self._trickle.join()
        for sock in self.sockets:
            sock.close()


def _served_at_once_beside_four(server, stall) -> None:
    """Four connections each stalled by ``stall(sock)``, two threads: a normal request is still answered at once."""
    stalled = []
    try:
        for _ in range(4):
            stalled.append(_connect(server))
            stall(stalled[-1])
        _served_at_once(server)
    finally:
        for sock in stalled:
            sock.close()


def _normal_user_timings(server, rounds: int = 15) -> list[float]:
    timings = []
    with recording_session() as http:
        for _ in range(rounds):
            for path in ("/", "/dashboard/api/summary"):
                started = time.monotonic()
                response = http.get(server.url + path, headers=NORMAL_USER, timeout=5)
                timings.append(time.monotonic() - started)
                assert response.status_code == 200, (path, response.status_code)
    return timings


def test_slowloris_and_stalled_exports_leave_a_normal_user_served_in_under_a_second(gunicorn):
    server = gunicorn(workers=2, threads=8)
    requests.get(server.url + "/", headers=NORMAL_USER, timeout=10)  # the team's token, fetched once
    with ExitStack() as stack:
        attack = Attack(server)
        stack.callback(attack.close)
        time.sleep(1)  # the exports fill their socket buffers and block their threads
        timings = _normal_user_timings(server)
    # Each worker streams at most half its threads' worth of exports; the rest were told to retry.
    started = [head for head in attack.export_heads if head.startswith(b"HTTP/1.1 200")]
    refused = [head for head in attack.export_heads if head.startswith(b"HTTP/1.1 503")]
    assert len(started) + len(refused) == 24, attack.export_heads
    assert 1 <= len(started) <= 8 and refused
    assert max(timings) < 1.0, f"slowest {max(timings):.2f}s, median {statistics.median(timings):.3f}s"


def test_a_head_that_never_completes_gets_408_and_is_closed(gunicorn):
    server = gunicorn(workers=1, threads=2, GATEWAY_HEADER_TIMEOUT="1")
    idle, partial = _connect(server), _connect(server)
    partial.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = time.monotonic()
    answer = b""
    while chunk := partial.recv(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 4
    assert idle.recv(10) == b""  # an idle connection is closed without an answer
    idle.close()
    partial.close()
    text = server.log.read_text()
    assert "Traceback" not in text


def test_a_body_trickled_in_is_read_before_a_thread_takes_it(gunicorn):
    # Two threads, four uploads stalled mid-body: a normal request is still answered at once.
    def stall(sock):
        sock.sendall(b"POST /logout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\nnext=")

    _served_at_once_beside_four(gunicorn(workers=1, threads=2), stall)


def test_a_client_that_stops_reading_frees_its_thread_after_the_client_timeout(gunicorn):
    server = gunicorn(workers=1, threads=2, GATEWAY_CLIENT_TIMEOUT="1")
    sock = _connect(server, rcvbuf=4096)
    headers = _head_lines(NORMAL_USER)
    sock.sendall(f"GET /dashboard/export.csv?mb=200 HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # Stalled past the client timeout (the kernel counts from the last byte it could move
    # into the buffers, which keep growing for a few seconds): the gateway gives up on us.
    time.sleep(7)
    received = 0
    sock.settimeout(10)
    while chunk := sock.recv(1 << 20):
        received += len(chunk)
    sock.close()
    assert received < 200 * 1024 * 1024  # cut off, not delivered
    deadline = time.monotonic() + 5
    while "client made no progress" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "client made no progress for 1s" in server.log.read_text()


def test_one_user_may_stream_two_downloads_at_once_per_worker(gunicorn):
    server = gunicorn(workers=1, threads=8)
    headers = _head_lines(NORMAL_USER)
    opened, sockets = [], []
    try:
        for _ in range(3):
            sock = _connect(server, rcvbuf=4096)
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


@pytest.mark.parametrize("worker", ["gthread"])
def test_the_same_attack_starves_stock_gthread(gunicorn, worker):
    """The oracle can fail: without the gateway's worker the normal user is not served."""
    server = gunicorn(workers=1, threads=8, worker_class=worker)
    requests.get(server.url + "/healthz", timeout=10)
    attack = Attack(server, slowloris=40, stalled=0)
    try:
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(server.url + "/healthz", timeout=1.5)
    finally:
        attack.close()


def test_downloads_give_their_slot_back_when_they_end(gunicorn):
    server = gunicorn(workers=1, threads=8, GATEWAY_DOWNLOADS_PER_WORKER="2")
    with recording_session() as http:
        statuses = [http.get(server.url + "/dashboard/export.csv?mb=2", headers=NORMAL_USER, timeout=30).status_code
                    for _ in range(5)]
    assert statuses == [200] * 5  # one at a time: each gave its slot back


@pytest.mark.parametrize("size", [b"-6", b"+5", b"0x5", b"1_0"])
def test_a_chunk_size_that_is_not_plain_hex_is_a_quick_400_and_hangs_nothing(gunicorn, size):
    server = gunicorn(workers=1, threads=2)
    sock = _connect(server)
    sock.sendall(b"POST /logout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 4")  # refused at once (it used to spin the event loop)
    sock.close()
    _served_at_once(server)


def test_a_pipelined_request_still_arriving_is_read_by_the_event_loop_not_a_thread(gunicorn):
    server = gunicorn(workers=1, threads=2, GATEWAY_HEADER_TIMEOUT="2")
    held = []
    for _ in range(4):  # twice the threads
        sock = _connect(server)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    try:
        time.sleep(0.5)
        _served_at_once(server)
        answer = b""
        held[0].settimeout(6)
        while chunk := held[0].recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answer  # the half request timed out
    finally:
        for sock in held:
            sock.close()


def test_a_head_past_the_limit_with_no_end_gets_431_from_the_event_loop(gunicorn):
    server = gunicorn(workers=1, threads=2)
    sock = _connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 70000)
    assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    sock.close()


def test_expect_100_continue_is_answered_and_the_body_read_by_the_event_loop(gunicorn):
    def stall(sock):
        sock.sendall(b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"next=")  # and the rest never comes

    _served_at_once_beside_four(gunicorn(workers=1, threads=2), stall)
