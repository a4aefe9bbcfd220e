"""Logging: one line per event to stdout, a request id on every line and response.

``GATEWAY_LOG_FORMAT=text`` for people, ``json`` for log pipelines; in both, one
event is exactly one line, its control characters escaped, so no request can
forge a line. The request id comes from ``X-Request-Id`` when a trusted proxy
sent a sane one, otherwise it is generated; it is echoed in the response and on
every error page. Access lines name the path, never the query string.
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import queue
import re
import sys
import threading
import time
import uuid
from urllib.parse import quote

from flask import Blueprint, Flask, current_app, g, has_request_context, request
from gunicorn import glogging

from gateway.ops import metrics
from gateway.identity.peers import peer_is_trusted

logger = logging.getLogger(__name__)
bp = Blueprint("logs", __name__)

BATCH_SECONDS = 0.05
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;._~-]")
QUEUE_LINES = 50000  # at most this many lines wait for stdout; more are dropped and counted
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_HANDLER_MARK = "_zipteams_gateway"


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


_last_second: list = [None, ""]


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds; the strftime part is reused within a second."""
    second = int(created)
    if _last_second[0] != second:
        _last_second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_last_second[1]}.{int((created - second) * 1000):03d}Z"


# One encoder for every line: json.dumps builds a new one per call unless all its options are defaults.
_JSON = json.JSONEncoder(ensure_ascii=False)
# json escapes C0 controls itself; these three it leaves alone, and some readers end a line at them.
_JSON_BREAKS = re.compile("[\x85\u2028\u2029]")
# C0 and C1 controls, DEL and the Unicode line separators: whatever a terminal or a
# log shipper may take for the end of a line (or a cursor move).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``), so it stays one line."""
    return _CONTROL.sub(_escaped, text)


def _json_line(entry: dict) -> str:
    return _JSON_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", _JSON.encode(entry))


def _entry(created: float, level: str, name: str, request_id: str, message: str, fields: dict | None) -> dict:
    entry = {"ts": _timestamp(created), "level": level, "logger": name, "request_id": request_id,
             "message": message}
    if fields:
        entry.update(fields)
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name,
                       getattr(record, "request_id", "-"), record.getMessage(), getattr(record, "audit", None))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already, on the way through BackgroundHandler
            entry["exception"] = record.exc_text
        return _json_line(entry)

    def format_line(self, line: tuple) -> str:
        """The same JSON for a line queued by ``info`` without a LogRecord."""
        created, name, msg, args, request_id, fields = line
        return _json_line(_entry(created, "info", name, request_id, msg % args if args else msg, fields))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class TextFormatter(logging.Formatter):
    """The text format, one event per line: a newline in a path or a traceback is escaped."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None):
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class BackgroundHandler(logging.Handler):
    """Request threads only enqueue; one thread per process formats and writes to stdout.

    Under load, many threads writing and flushing stdout through one handler lock
    was the largest share of the gateway's own time per request. The writer drains
    whatever has queued up and writes it with one flush. It starts lazily in each
    process, because gunicorn forks workers after the app was set up in the master.
    """

    def __init__(self, stream, formatter: logging.Formatter):
        super().__init__()
        self.stream = stream
        self.setFormatter(formatter)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.dropped = 0          # lines lost since start: a full queue or a failed write
        self._reported = 0        # of those, already announced in a warning line
        self._pid = None
        self._thread = None
        self._start_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pid != os.getpid():
            self._start()
        # Render the message now (its arguments may change later); format it later.
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = self.formatter.formatException(record.exc_info)
            record.exc_info = None
        self._put(record)

    def _put(self, item) -> None:
        # A stalled stdout must not grow memory without bound: lose the line, and say so.
        # (SimpleQueue: a C queue without locks on the request path; the bound is approximate
        # by a few lines under contention, which is all it needs to be.)
        if self._queue.qsize() >= QUEUE_LINES:
            self._lost(1)
        else:
            self._queue.put_nowait(item)

    def _lost(self, count: int) -> None:
        self.dropped += count
        metrics.LOG_LINES_DROPPED.inc(count)

    def submit(self, name: str, msg: str, args: tuple, request_id: str, fields: dict | None) -> None:
        """Queue an INFO line without building a LogRecord here: the writer builds it.

        For the lines every request writes (see ``info``). ``args`` and ``fields``
        must hold only strings and numbers, as they are rendered later.
        """
        if self._pid != os.getpid():
            self._start()
        self._put((time.time(), name, msg, args, request_id, fields))

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._write_forever, name="log-writer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()
            atexit.register(self.drain)

    def _write_forever(self) -> None:
        while True:
            first = self._queue.get()
            # Let lines gather for a moment: one wake-up (and one GIL hand-over) per
            # batch instead of one per line keeps the writer out of the requests' way.
            time.sleep(BATCH_SECONDS)
            self._write(first)

    def _format(self, item) -> str:
        if isinstance(item, logging.LogRecord):
            return self.format(item)
        formatter = self.formatter
        if isinstance(formatter, JsonFormatter):
            return formatter.format_line(item)
        return self.format(_as_record(item))

    def _write(self, first) -> None:
        lines = [self._format(first)]
        while len(lines) < 5000:
            try:
                lines.append(self._format(self._queue.get_nowait()))
            except queue.Empty:
                break
        dropped = self.dropped
        if dropped > self._reported:
            lines.append(self._format(_warning(f"{dropped - self._reported} log lines were dropped "
                                               f"(the log queue of {QUEUE_LINES} lines was full, or writing "
                                               "failed); gateway_log_lines_dropped_total counts them")))
            self._reported = dropped
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self._lost(len(lines))  # stdout closed or broken: counted, announced when it works again

    def drain(self) -> None:
        """Write out whatever is still queued (at exit)."""
        while True:
            try:
                self._write(self._queue.get_nowait())
            except queue.Empty:
                return


def _warning(message: str) -> logging.LogRecord:
    record = logging.LogRecord(__name__, logging.WARNING, "", 0, message, None, None)
    record.request_id = "-"
    return record


def _as_record(item: tuple) -> logging.LogRecord:
    created, name, msg, args, request_id, fields = item
    record = logging.LogRecord(name, logging.INFO, "", 0, msg, args, None)
    # The time the line was submitted, not the time it was written.
    record.created, record.msecs = created, (created - int(created)) * 1000
    record.relativeCreated = (created - logging._startTime) * 1000
    record.request_id = request_id
    if fields:
        record.audit = fields
    return record


_direct: BackgroundHandler | None = None


def info(log: logging.Logger, msg: str, *args, fields: dict | None = None) -> None:
    """An INFO line from a request, the same as ``log.info`` would write.

    Every page view writes two (its audit event and its request line), and
    ``Logger.info`` with a LogRecord made in the request thread was half of the
    gateway's own time per page. When our writer is the only place lines go,
    the line is handed to it as a tuple and the writer makes the record; with
    any other handler attached (tests, a debugger), it goes through logging.
    """
    handler = _direct
    handlers = logging.root.handlers
    if handler is not None and len(handlers) == 1 and handlers[0] is handler and not log.handlers:
        if log.isEnabledFor(logging.INFO):
            handler.submit(log.name, msg, args, current_request_id(), fields)
        return
    log.info(msg, *args, extra={"audit": fields} if fields else None)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Install (or replace) the gateway's stdout handler on the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = BackgroundHandler(sys.stdout, formatter)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    global _direct
    _direct = handler
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


class GunicornLogger(glogging.Logger):
    """gunicorn's own log lines in the gateway's format, and no access-log work.

    gunicorn builds an access-log record for every request whenever any logging
    configuration is given, even with the access log off; this logger only does
    when an access log is actually configured (ours, in gateway.ops.logs, is enough).
    """

    @property
    def access_log_enabled(self):
        return bool(self.cfg.accesslog)

    def setup(self, cfg):
        super().setup(cfg)
        # Only gunicorn's own handlers: those from a logconfig keep the format they were given.
        if os.environ.get("GATEWAY_LOG_FORMAT", "json").lower() == "json":
            error_format = JsonFormatter()
        else:  # gunicorn's layout, one line per event like ours (its messages may quote a request)
            error_format = TextFormatter(self.error_fmt, self.datefmt)
        for log, formatter in ((self.error_log, error_format), (self.access_log, TextFormatter(self.access_fmt))):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter)
        self.error_log.addFilter(_without_queries)


_QUERY = re.compile(r"\?[^\s'\"]+")  # a query, not a question ("Perhaps out of memory?")


def _without_queries(record: logging.LogRecord) -> bool:
    """gunicorn quotes a request line it refuses; its query may carry a hand-off token."""
    message = record.getMessage()
    if "?" in message:
        record.msg, record.args = _QUERY.sub("?[query removed]", message), None
    return True


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
        info(logger, "request method=%s path=%s endpoint=%s status=%s ms=%.1f",
             req.method, path, route, status, elapsed * 1000)
    return response
