"""gunicorn's threaded worker, made to hold against slow clients and to stop gracefully.

Slow clients. Stock gthread hands a connection to a thread as soon as its first byte
arrives, so a client that sends half a request and waits (slowloris), or a body a byte at
a time, holds one of a handful of threads. Here the event loop reads each request (head,
and a body up to ``PREREAD_BODY`` bytes) without blocking; a thread only gets a request it
can serve at once. A head not complete within ``GATEWAY_HEADER_TIMEOUT`` gets a 408 and
is closed. In a thread, a socket that makes no progress for ``GATEWAY_CLIENT_TIMEOUT``
(a larger body read in place, or an answer the client stopped reading) ends the
connection, through the kernel's SO_RCVTIMEO / SO_SNDTIMEO. Long downloads are capped per
worker and per user by the proxy (gateway/delivery/proxy/streams.py).

Graceful stop. On SIGTERM a worker at once reports "not ready" (``/readyz`` answers 503,
so the load balancer stops sending), keeps serving for ``GATEWAY_DRAIN_DELAY`` seconds
while it notices, then closes its listening sockets (a new connection is refused at once
instead of hanging in a backlog nobody reads) and lets the requests in flight finish
within gunicorn's graceful timeout (``GATEWAY_GRACEFUL_TIMEOUT``). On a reload (HUP) the
master starts new workers first, so the old ones stop accepting at once and stay "ready".
"""
from __future__ import annotations

import errno
import io
import logging
import selectors
import socket
import struct
import threading
import time
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

from gateway.ops import health, metrics
from gateway.serving.incoming import (BUSY_ANSWER, CONTINUE, HEAD_TOO_LARGE, HEAD_TOO_LARGE_ANSWER,
                                      PREREAD_TOTAL, READY, TIMED_OUT, Incoming)
from gateway.serving.reload import reloading

logger = logging.getLogger(__name__)


def _socket_timeouts(sock: socket.socket, seconds: float) -> None:
    # Kernel timeouts survive gunicorn's setblocking(True): a blocked read or write that
    # makes no progress for this long fails with EAGAIN, and the thread is free again.
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class GatewayWorker(ThreadWorker):
    # Set from the app's settings by gunicorn.conf.py (post_worker_init).
    drain_delay = 0.0
    header_timeout = 10.0
    client_timeout = 30.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.incoming: dict[TConn, Incoming] = {}
        self.held = 0  # bytes in self.incoming

    # ------------------------------------------------------------ reading requests
    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if self.cfg.is_ssl:
            client_sock.setblocking(True)
            self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))
            return
        _socket_timeouts(client_sock, self.client_timeout)
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._read_request(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has a next request coming: read it here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if self.cfg.is_ssl:
            self.enqueue_req(conn)
            return
        self._read_request(conn)

    def _read_request(self, conn: TConn, already: bytes = b"") -> None:
        self.incoming[conn] = Incoming(time.monotonic() + self.header_timeout)
        conn.sock.setblocking(False)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, conn))
        metrics.CLIENTS_READING.inc()
        if already:
            self._take(conn, already)

    def enqueue_req(self, conn):
        """A kept-alive connection whose client sent its next request behind the last one: gunicorn
        would give it a thread at once; unless that request is complete, read the rest here."""
        parser = conn.parser
        if parser is not None and conn not in self.incoming and not self.cfg.is_ssl:
            pending = parser.unreader.buf.getvalue()
            if pending and Incoming(0).feed(pending, 0, 0) != READY:
                parser.unreader.buf = io.BytesIO()
                self._read_request(conn, pending)
                return
        super().enqueue_req(conn)

    def _on_bytes(self, conn: TConn, sock) -> None:
        incoming = self.incoming[conn]
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if incoming.buf:
                self._dispatch(conn)  # half-closed after a partial request: the parser answers it
            else:
                self._drop(conn)
            return
        self._take(conn, data)

    def _take(self, conn: TConn, data: bytes) -> None:
        incoming = self.incoming[conn]
        self.held += len(data)
        verdict = incoming.feed(data, time.monotonic(), self.client_timeout)
        if verdict == HEAD_TOO_LARGE:
            self._drop(conn, HEAD_TOO_LARGE_ANSWER)
        elif verdict == READY:
            self._dispatch(conn)
        elif self.held > PREREAD_TOTAL:
            # Too much held for unfinished requests: refuse this one rather than give a thread
            # a request that is still arriving.
            metrics.CLIENTS_TIMED_OUT.inc()
            self._drop(conn, BUSY_ANSWER)
        elif incoming.send_continue:
            incoming.send_continue = False
            try:
                conn.sock.send(CONTINUE)
            except OSError:
                pass

    def _forget(self, conn: TConn) -> Incoming:
        incoming = self.incoming.pop(conn)
        self.held -= len(incoming.buf)
        metrics.CLIENTS_READING.dec()
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        return incoming

    def _dispatch(self, conn: TConn) -> None:
        incoming = self._forget(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(incoming.buf))
        conn.data_ready = True
        super().enqueue_req(conn)

    def _drop(self, conn: TConn, answer: bytes = b"") -> None:
        self._forget(conn)
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        for conn, incoming in list(self.incoming.items()):
            deadline = incoming.deadline if incoming.head_end < 0 else max(incoming.deadline,
                                                                           incoming.body_deadline)
            if now < deadline:
                continue
            metrics.CLIENTS_TIMED_OUT.inc()
            # Nothing sent yet: an idle (maybe speculative) connection is just closed.
            self._drop(conn, TIMED_OUT if incoming.buf else b"")

    def _cap_keepalive(self, deadline):
        super()._cap_keepalive(deadline)
        for incoming in self.incoming.values():
            incoming.deadline = min(incoming.deadline, deadline)
            incoming.body_deadline = min(incoming.body_deadline or deadline, deadline)

    # ------------------------------------------------------------ serving
    def handle_request(self, req, conn):
        try:
            return super().handle_request(req, conn)
        except BlockingIOError:
            # SO_SNDTIMEO / SO_RCVTIMEO: the client stopped reading our answer or sending its body.
            metrics.CLIENTS_TIMED_OUT.inc()
            logger.info("client made no progress for %gs; connection closed", self.client_timeout)
            return False

    # ------------------------------------------------------------ graceful stop
    def handle_exit(self, sig, frame):
        if not self.alive or health.DRAINING.is_set():
            return
        if reloading():
            # A HUP: fresh workers already share the listener, so the instance stays ready and
            # this one just stops taking new connections and finishes what it has.
            self.method_queue.defer(self._stop_accepting)
            return
        health.DRAINING.set()
        # From a signal handler: the stop itself runs in the worker's own loop (method_queue).
        threading.Timer(self.drain_delay, lambda: self.method_queue.defer(self._stop_accepting)).start()

    def _stop_accepting(self) -> None:
        self.alive = False
        self.set_accept_enabled(False)
        for sock in self.sockets:
            sock.close()
