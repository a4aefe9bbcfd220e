"""Logging: one line per event to stdout, a request id on every line and response.

``GATEWAY_LOG_FORMAT=text`` for people, ``json`` for log pipelines (shapes in
``gateway.ops.logformat``); in both, one event is exactly one line, so no request can
forge a line. The request id comes from ``X-Request-Id`` when a trusted proxy sent a
sane one, otherwise it is generated; it is echoed in the response and on every error
page. Access lines name the path, never the query string.

One log path: the standard library's ``QueueHandler`` on the root logger formats each
record and puts the line on a bounded queue, and a ``QueueListener`` thread per process
writes what has gathered in one write per batch. Request threads never wait for stdout;
when stdout stalls and the queue is full, a line is dropped, counted in
``gateway_log_lines_dropped_total`` and announced by a warning line once writing works
again. A stop waits ``STOP_SECONDS`` at most for the writer.
"""
from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
from urllib.parse import quote

from flask import Blueprint, Flask, current_app, g, request

from gateway.identity.peers import peer_is_trusted
from gateway.ops import metrics
from gateway.ops.logformat import JsonFormatter, TextFormatter
from gateway.ops.requestid import SANE_REQUEST_ID, RequestIdFilter, new_request_id

logger = logging.getLogger(__name__)
bp = Blueprint("logs", __name__)

_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;._~-]")
QUEUE_LINES = 50000  # at most this many lines wait for stdout; more are dropped and counted
BATCH_SECONDS = 0.05
STOP_SECONDS = 2.0  # at exit, queued lines are written within this, or counted as dropped


class StdoutWriter:
    """The writer thread's end: formatted lines out in batches; what cannot be written is counted."""

    def __init__(self, stream, formatter: logging.Formatter):
        self.stream, self.formatter = stream, formatter
        self.dropped = 0    # lines lost since start: a full queue, a failed write, a stalled stop
        self._reported = 0  # of those, already announced in a warning line
        self._pending: list[str] = []

    def lost(self, count: int) -> None:
        self.dropped += count
        metrics.LOG_LINES_DROPPED.inc(count)

    def add(self, line: str) -> None:
        self._pending.append(line)

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if self.dropped > self._reported:
            lines.append(self.formatter.format(_warning(
                f"{self.dropped - self._reported} log lines were dropped (the log queue of {QUEUE_LINES} lines "
                "was full, or writing failed); gateway_log_lines_dropped_total counts them")))
            self._reported = self.dropped
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.lost(len(lines))  # stdout closed or broken: counted, announced when it works again


class _Descriptor:
    """Standard output as its file descriptor. The writer thread never holds ``sys.stdout``'s
    buffer lock, so a stalled reader cannot block the interpreter's own flush at exit."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(self.fd, data):]

    def flush(self) -> None:
        pass


def _warning(message: str) -> logging.LogRecord:
    record = logging.LogRecord(__name__, logging.WARNING, "", 0, message, None, None)
    record.request_id = "-"
    return record


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """Formats each record in the thread that logs it and puts the line on a bounded queue
    without waiting; a full queue loses the line, counted.

    The queue is a ``SimpleQueue`` (C, no Python-level lock or condition per put: a
    ``queue.Queue`` put cost a request thread more than formatting the line), bounded by
    its size before each put; under contention the bound is loose by a few lines. Lines,
    not records, cross to the writer: it then holds the interpreter lock only to join and
    write them, not to format.
    """

    def __init__(self, writer: StdoutWriter):
        super().__init__(queue.SimpleQueue())
        self.writer = writer

    def createLock(self) -> None:
        # No handler lock: the queue is thread-safe, and a lock taken and handed over between
        # request threads for every line was the larger part of logging's cost under load.
        self.lock = None

    def prepare(self, record: logging.LogRecord) -> str:
        return self.writer.formatter.format(record)

    def enqueue(self, line: str) -> None:
        if self.queue.qsize() >= QUEUE_LINES:
            self.writer.lost(1)
        else:
            self.queue.put_nowait(line)


class StdoutListener(logging.handlers.QueueListener):
    """The writer thread. It wakes for a batch, not for every line: once the queue ran empty
    it waits ``BATCH_SECONDS`` after the next line arrives, so that it takes the interpreter
    lock from the request threads a few times a second rather than once per line."""

    def dequeue(self, block: bool):
        try:
            line = self.queue.get_nowait()
        except queue.Empty:
            self._write()  # one write per batch of lines, not per line
            line = self.queue.get(block)
            if line is not self._sentinel:
                time.sleep(BATCH_SECONDS)
        if line is self._sentinel:
            self._write()
        return line

    def _write(self) -> None:
        for writer in self.handlers:
            writer.flush()

    def handle(self, line: str) -> None:
        for writer in self.handlers:
            writer.add(line)

    def stop_within(self, seconds: float) -> None:
        """Write out what is queued, waiting ``seconds`` at most (``stop`` waits for ever: a
        stalled stdout would hold a stopping worker until gunicorn kills it)."""
        self.queue.put(self._sentinel)  # past the bound on purpose: the queue is being drained
        thread = self._thread  # QueueListener keeps its thread here; stop() would join it unbounded
        if thread is not None:
            thread.join(seconds)
            if thread.is_alive():
                for writer in self.handlers:
                    writer.lost(self.queue.qsize())
        self._thread = None


_installed: BoundedQueueHandler | None = None
_listener: StdoutListener | None = None


def start_writer() -> None:
    """The writer thread of this process."""
    global _listener
    if _installed is not None and _listener is None:
        _listener = StdoutListener(_installed.queue, _installed.writer)
        _listener.start()


def _after_fork_in_child() -> None:
    # A forked gunicorn worker has no writer thread, and the parent's queue may have been
    # locked mid-put at fork; what the parent queued is the parent's to write.
    global _listener
    if _installed is not None:
        _installed.queue = queue.SimpleQueue()
        _installed.writer._pending = []  # lines the parent's writer had taken: the parent writes them
        _listener = None
        start_writer()


def stop_writer(seconds: float = STOP_SECONDS) -> None:
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop_within(seconds)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_writer)


def _stdout():
    try:
        return _Descriptor(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by something without a descriptor
        return sys.stdout


def configure(level: str = "INFO", fmt: str = "text", stream=None) -> BoundedQueueHandler:
    """Install (or replace) the gateway's stdout handler on the root logger."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        stop_writer()
        root.removeHandler(_installed)
    writer = StdoutWriter(stream or _stdout(), JsonFormatter() if fmt == "json" else TextFormatter())
    _installed = BoundedQueueHandler(writer)
    _installed.addFilter(RequestIdFilter())
    root.addHandler(_installed)
    start_writer()
    # What no format of ours prints is not collected for every record: the caller's
    # file and line (a stack walk per call), thread and multiprocessing names. The
    # "Optimization" section of the logging HOWTO names these switches; the
    # process id stays, gunicorn's text lines print it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.getLogger("gateway").setLevel(level)
    if root.level > logging.getLevelName(level):
        root.setLevel(level)
    # urllib3 logs full URLs at DEBUG; iframe-mode URLs may carry a token.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # Authlib logs the PKCE code verifier at DEBUG: never below INFO, whatever GATEWAY_LOG_LEVEL says.
    logging.getLogger("authlib").setLevel(logging.INFO)
    return _installed


def init_app(app: Flask) -> None:
    if not app.config.get("TESTING"):
        configure(app.config["GATEWAY_LOG_LEVEL"], app.config["GATEWAY_LOG_FORMAT"])
    app.register_blueprint(bp)


@bp.before_app_request
def assign_request_id() -> None:
    ctx = g._get_current_object()  # bound once: this runs on every request
    ctx.started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id")
    if incoming and SANE_REQUEST_ID.fullmatch(incoming) and peer_is_trusted(
            request.remote_addr, current_app.config["GATEWAY_TRUSTED_PROXIES"]):
        ctx.request_id = incoming
    else:
        ctx.request_id = new_request_id()


@bp.after_app_request
def log_request(response):
    ctx = g._get_current_object()
    response.headers["X-Request-Id"] = ctx.get("request_id", "-")  # replaces any upstream one
    req = request._get_current_object()
    route = req.endpoint
    if route != "static":
        elapsed = time.perf_counter() - ctx.get("started", time.perf_counter())
        route = route or "unmatched"
        status = response.status_code
        metrics.count_request(route, status, elapsed)
        # Spaces, '=' and quotes percent-encoded: a path cannot add fields to a text line.
        path = req.path[:200]
        if _UNSAFE_IN_PATH.search(path):
            path = quote(path, safe="/:@!$&'()*+,;-._~")
        logger.info("request method=%s path=%s endpoint=%s status=%s ms=%.1f",
                    req.method, path, route, status, elapsed * 1000)
    return response
