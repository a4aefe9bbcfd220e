"""Logging: one line per event to stdout, a request id on every line and response.

``GATEWAY_LOG_FORMAT=text`` for people, ``json`` for log pipelines (shapes in
``gateway.ops.logformat``); in both, one event is exactly one line, so no request can
forge a line. The request id comes from ``X-Request-Id`` when a trusted proxy sent a
sane one, otherwise it is generated; it is echoed in the response and on every error
page. Access lines name the path, never the query string.

One log path: the standard library's ``QueueHandler`` on the root logger puts each
record on a bounded queue, and a ``QueueListener`` thread per process formats and
writes it, flushing stdout once whenever the queue runs empty. Request threads never
wait for stdout; when stdout stalls and the queue is full, a line is dropped, counted
in ``gateway_log_lines_dropped_total`` and announced by a warning line once writing
works again.
"""
from __future__ import annotations

import atexit
import copy
import itertools
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
import uuid
from urllib.parse import quote

from flask import Blueprint, Flask, current_app, g, has_request_context, request

from gateway.identity.peers import peer_is_trusted
from gateway.ops import metrics
from gateway.ops.logformat import JsonFormatter, TextFormatter

logger = logging.getLogger(__name__)
bp = Blueprint("logs", __name__)

_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;._~-]")
QUEUE_LINES = 50000  # at most this many lines wait for stdout; more are dropped and counted
BATCH_SECONDS = 0.05
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")


class _RequestIds:
    """Unique ids without a system call per request: a random per-process prefix and a counter."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        if os.getpid() != self._pid:  # forked into a gunicorn worker: start a new sequence
            with self._lock:
                if os.getpid() != self._pid:
                    self._reset()
        return f"{self._prefix}{next(self._counter):016x}"


new_request_id = _RequestIds()


def current_request_id() -> str:
    return g.get("request_id", "-") if has_request_context() else "-"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class StdoutWriter(logging.StreamHandler):
    """The listener's handler: writes each line, counts what could not be written."""

    def __init__(self, stream, formatter: logging.Formatter):
        super().__init__(stream)
        self.setFormatter(formatter)
        self.dropped = 0    # lines lost since start: a full queue or a failed write
        self._reported = 0  # of those, already announced in a warning line

    def lost(self, count: int) -> None:
        self.dropped += count
        metrics.LOG_LINES_DROPPED.inc(count)

    def emit(self, record: logging.LogRecord) -> None:
        # No flush per line: the listener flushes when the queue runs empty.
        try:
            if self.dropped > self._reported:
                dropped = self.dropped
                self.stream.write(self.format(_warning(
                    f"{dropped - self._reported} log lines were dropped (the log queue of {QUEUE_LINES} lines "
                    "was full, or writing failed); gateway_log_lines_dropped_total counts them")) + "\n")
                self._reported = dropped
            self.stream.write(self.format(record) + "\n")
        except (OSError, ValueError):
            self.lost(1)  # stdout closed or broken: counted, announced when it works again

    def flush(self) -> None:
        try:
            super().flush()
        except (OSError, ValueError):
            pass  # the lines were counted when their write failed, if it did


def _warning(message: str) -> logging.LogRecord:
    record = logging.LogRecord(__name__, logging.WARNING, "", 0, message, None, None)
    record.request_id = "-"
    return record


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """Puts records on the bounded queue without waiting; a full queue loses the line, counted.

    The queue is a ``SimpleQueue`` (C, no Python-level lock or condition per put: a
    ``queue.Queue`` put cost a request thread more than formatting the line), bounded by
    its size before each put; under contention the bound is loose by a few lines.
    """

    def __init__(self, writer: StdoutWriter):
        super().__init__(queue.SimpleQueue())
        self.writer = writer

    def createLock(self) -> None:
        # No handler lock: the queue is thread-safe, and a lock taken and handed over between
        # request threads for every line was the larger part of logging's cost under load.
        self.lock = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is rendered now (its arguments may change later), formatted on the
        # writer thread. Rendering in place is what any handler sees anyway; a record with
        # a traceback is copied, so that handlers after this one still get the exception.
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record = copy.copy(record)
            record.exc_text = self.writer.formatter.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.queue.qsize() >= QUEUE_LINES:
            self.writer.lost(1)
        else:
            self.queue.put_nowait(record)


class StdoutListener(logging.handlers.QueueListener):
    """The writer thread. It wakes for a batch, not for every line: after the queue ran empty
    it waits ``BATCH_SECONDS`` once woken, so that it takes the interpreter lock from the
    request threads a few times a second rather than once per line."""

    def dequeue(self, block: bool):
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            pass
        for handler in self.handlers:
            handler.flush()  # one flush per batch of lines, not per line
        record = self.queue.get(block)
        if record is not self._sentinel:
            time.sleep(BATCH_SECONDS)
        return record

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # past the bound on purpose: the queue is being drained


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
        _listener = None
        start_writer()


def stop_writer() -> None:
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()  # writes out what is still queued


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_writer)


def configure(level: str = "INFO", fmt: str = "text", stream=None) -> BoundedQueueHandler:
    """Install (or replace) the gateway's stdout handler on the root logger."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        stop_writer()
        root.removeHandler(_installed)
    writer = StdoutWriter(stream or sys.stdout, JsonFormatter() if fmt == "json" else TextFormatter())
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
    if incoming and _REQUEST_ID.fullmatch(incoming) and peer_is_trusted(
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
