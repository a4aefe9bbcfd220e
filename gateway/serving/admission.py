"""Admission to the app: a request's body is read in full, within a total deadline, before the
request takes one of the worker's places (``GATEWAY_THREADS``).

Under gunicorn's gevent worker (gunicorn.conf.py) every connection has its own greenlet, so a
client that trickles its head or its body holds a greenlet and a socket, not one of a handful
of threads. Three things still need seeing to, and this middleware does them:

- A body read: gunicorn reads it lazily, whenever the app asks, with no deadline at all. Here
  it is read before the app runs, and a body not complete within ``GATEWAY_BODY_TIMEOUT`` seconds
  in all (not per read: a byte every few seconds would reset a per-read timeout forever) gets a
  408; gunicorn then ends the connection within its keepalive (GATEWAY_HEADER_TIMEOUT). An error gunicorn's parser raises while reading (a bad chunk
  size...) is handed to the app at the same point of the body, so the app answers it as before.
- CPU: a greenlet runs until it waits on I/O, so hundreds of requests running at once share one
  core with no order. At most ``GATEWAY_THREADS`` requests run the app at once per worker, the
  rest wait in arrival order; a streamed answer gives its place back as soon as the app returns
  (long answers are capped on their own, gateway/delivery/proxy/streams.py).
- Turns: gunicorn's gevent worker reads the next request of a kept-alive connection without
  yielding when it has already arrived (it has, under load), so without a yield one connection's
  greenlet kept the worker for request after request while the others' waited (a p99 several
  times gthread's under wrk; docs/performance.md). So each request first waits for the
  event loop's next turn (``gevent.sleep`` with a positive time; ``sleep(0)`` is not enough, see
  NEXT_TURN), by which time connections whose requests arrived meanwhile have been read.

The client's socket gets a per-operation timeout of ``GATEWAY_CLIENT_TIMEOUT`` too, so an answer
the client stopped reading ends the connection instead of holding it forever.
"""
from __future__ import annotations

import collections
import functools
import io
import logging
import threading

from flask import request

from gateway.errors import ServiceBusy
from gateway.ops import metrics
from gateway.bounded import under_gevent

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
TIMED_OUT_BODY = b"request body not received in time\n"


class _Replay(io.RawIOBase):
    """The body read ahead, then the error gunicorn's parser raised reading it, if any."""

    def __init__(self, data: bytes, error: Exception | None):
        self._data, self._error = io.BytesIO(data), error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._data.readinto(buffer)
        if not n and len(buffer) and self._error is not None:
            error, self._error = self._error, None
            raise error
        return n


def _body_to_read(environ, max_body: int) -> bool:
    """Whether to read a body ahead: chunked, or a declared length the app will accept. A longer
    declared length is refused by the app (413) without reading it, so it is not held here."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    length = environ.get("CONTENT_LENGTH", "")
    return length.isdigit() and 0 < int(length) <= max_body


def _deadline(seconds: float, gevent_server: bool):
    """A total deadline for a block, where the server is gevent's; None under real threads (a
    blocking read in a real thread cannot be interrupted: the front's timeouts hold)."""
    if not gevent_server:
        return None
    import gevent

    return gevent.Timeout(seconds)


def _give_way_for_server():
    """gevent's yield to the other ready greenlets, where the server is gevent's; None under real
    threads (the OS takes turns among them)."""
    if not under_gevent():
        return None
    import gevent

    return functools.partial(gevent.sleep, NEXT_TURN)


class Places:
    """At most ``count`` holders at once; the rest wait strictly in arrival order.

    A freed place is handed to the longest waiter directly, never left for whoever asks next:
    with a plain semaphore a request just arrived takes it ahead of the one woken for it, which
    goes back to the end of the line, and the unlucky wait for seconds under load.
    """

    def __init__(self, count: int):
        self._free, self._lock, self._waiting = count, threading.Lock(), collections.deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for a place now."""
        return len(self._waiting)

    def __enter__(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # set by __exit__, which handed this waiter its place

    def __exit__(self, *exc) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1


# gevent.sleep's documented turn-taking: 0 only yields to greenlets already runnable, and may run
# this one again before the loop polls for I/O; any positive value waits for the loop's next
# iteration, after connections whose requests arrived meanwhile have been read. The value itself
# barely matters: the timer counts from the loop's time at the start of this iteration, so it has
# expired by the next one.
NEXT_TURN = 1e-6

REFUSED = "gateway.body_refused"  # environ key: the error the app answers instead of running


class UploadsBusy(ServiceBusy):
    """The worker already holds GATEWAY_BODY_BUFFER bytes of other requests' bodies."""
    code = "uploads_busy"
    title = "The gateway is busy receiving data"
    message = "Many uploads are arriving at once, so this one was not accepted."
    hint = "Try again in a few seconds."


def answer_refused_body():
    """Flask ``before_request``: a body the middleware refused gets the gateway's own error page
    (HTML or JSON, with Retry-After); below Flask there is no page to give."""
    refused = request.environ.get(REFUSED)
    if refused is not None:
        raise refused


class BodyBudget:
    """The bytes of request bodies one worker holds at once, read ahead or waiting for the app.

    Per connection a body is bounded by GATEWAY_PROXY_MAX_BODY; this bounds them all together,
    so a few hundred connections each sending all but the last byte of a maximal body cannot make
    a worker hold gigabytes."""

    def __init__(self, limit: int):
        self.limit, self.held, self._lock = limit, 0, threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        if size:
            with self._lock:
                self.held -= size


class Admission:
    """WSGI middleware: read the body ahead under a deadline, then run the app in one of ``places``."""

    def __init__(self, app, *, places: int, body_timeout: float, client_timeout: float, max_body: int,
                 body_buffer: int, give_way=_give_way_for_server):
        self.app, self.body_timeout, self.client_timeout = app, body_timeout, client_timeout
        self.max_body = max_body
        self.budget = BodyBudget(body_buffer)
        self.gevent_server = under_gevent()  # decided once: gunicorn.conf.py patches before the app loads
        self.give_way = give_way()  # called before each request runs the app; None: nothing to do
        self.places = Places(places)  # cooperative under gevent's patching of threading

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        if sock is not None and self.client_timeout:
            sock.settimeout(self.client_timeout)  # per operation: a stalled reader of our answer
        held = [0]  # bytes of the budget this request holds, given back when the app has answered
        try:
            if _body_to_read(environ, self.max_body) and not self._read_ahead(environ, held):
                metrics.CLIENTS_TIMED_OUT.inc()
                logger.info("request body not complete within %gs; answered 408", self.body_timeout)
                start_response("408 Request Timeout", [("Content-Type", "text/plain"), ("Connection", "close"),
                                                        ("Content-Length", str(len(TIMED_OUT_BODY)))])
                return [TIMED_OUT_BODY]
            if self.give_way is not None:
                self.give_way()  # the worker's other connections take their turn first
            with self.places:
                return self.app(environ, start_response)
        finally:
            self.budget.give_back(held[0])

    def _refuse_busy(self, environ) -> bool:
        metrics.BODIES_REFUSED.inc()
        logger.warning("request body refused: this worker already holds %d bytes of bodies "
                       "(GATEWAY_BODY_BUFFER %d); answered 503", self.budget.held, self.budget.limit)
        environ[REFUSED] = UploadsBusy("body budget spent", retry_after=5)
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(b""), "0"
        return True

    def _read_ahead(self, environ, held: list[int]) -> bool:
        """Replace wsgi.input by the body read ahead; False if it did not arrive in time. A body the
        budget has no room for is not read: the app answers 503 instead (``REFUSED``)."""
        length = environ.get("CONTENT_LENGTH", "")
        declared = int(length) if length.isdigit() else 0
        if declared:  # a declared length is reserved whole, before a byte is read
            if not self.budget.take(declared):
                return self._refuse_busy(environ)
            held[0] = declared
        stream, parts, size, error = environ["wsgi.input"], [], 0, None
        deadline = _deadline(self.body_timeout, self.gevent_server)
        metrics.CLIENTS_READING.inc()
        try:
            if deadline is not None:
                deadline.start()
            # One byte past the limit is enough for the app to refuse the body as too large.
            while size <= self.max_body:
                chunk = stream.read(min(CHUNK, self.max_body + 1 - size))
                if not chunk:
                    break
                if not declared:  # chunked: reserved as it arrives
                    if not self.budget.take(len(chunk)):
                        return self._refuse_busy(environ)
                    held[0] += len(chunk)
                parts.append(chunk)
                size += len(chunk)
        except Exception as exc:  # noqa: BLE001 - gunicorn's parse errors, a disconnect: the app answers them
            if deadline is not None and exc is deadline:
                return False
            error = exc
        except BaseException as exc:
            if deadline is not None and exc is deadline:
                return False
            raise
        finally:
            if deadline is not None:
                deadline.close()
            metrics.CLIENTS_READING.dec()
        environ["wsgi.input"] = io.BufferedReader(_Replay(b"".join(parts), error))
        return True


def install(app) -> None:
    """``app`` behind Admission, with the gateway's settings, and its refusals answered as pages.

    Flask's documented place for WSGI middleware (``app.wsgi_app``). wsgi.py does this for the
    gateway; bench/obligations.py for a floor measured with the gateway's server model."""
    cfg = app.config
    app.wsgi_app = Admission(app.wsgi_app, places=cfg["GATEWAY_THREADS"], body_timeout=cfg["GATEWAY_BODY_TIMEOUT"],
                             client_timeout=cfg["GATEWAY_CLIENT_TIMEOUT"], max_body=cfg["GATEWAY_PROXY_MAX_BODY"],
                             body_buffer=cfg["GATEWAY_BODY_BUFFER"])
    app.before_request(answer_refused_body)
