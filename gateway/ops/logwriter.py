"""The one log path of a process, public API only: ``QueueHandler`` on the root logger formats each
record and puts the line on a bounded ``queue.Queue``; a ``QueueListener`` thread writes what has
gathered in one write per batch. Request threads never wait for stdout: when it stalls and the queue
is full, a line is dropped, counted in ``gateway_log_lines_dropped_total`` and announced once writing
works again. A stop waits ``STOP_SECONDS`` at most. A forked process gets a queue of its own at the
fork, a gunicorn worker its writer from ``post_fork`` (``after_fork``). gunicorn's own lines come
this way too (``gateway.ops.gunicornlog``); the request lines are ``gateway.ops.logs``'.
"""
from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time

from gateway.ops import metrics
from gateway.ops.fdout import Descriptor, PartlyWritten
from gateway.ops.logformat import JsonFormatter, TextFormatter
from gateway.ops.requestid import RequestIdFilter

QUEUE_LINES = 50000  # at most this many lines wait for stdout; more are dropped and counted
BATCH_SECONDS = 0.05
STOP_SECONDS = 2.0  # at exit, queued lines are written within this, or counted as dropped


def new_queue() -> queue.Queue:
    return queue.Queue(maxsize=QUEUE_LINES + 1)  # the last place is kept for the stop


class StdoutWriter:
    """The writer thread's end: formatted lines out in batches; what cannot be written is counted."""

    def __init__(self, stream, formatter: logging.Formatter):
        self.stream, self.formatter = stream, formatter
        self.dropped = 0    # lines lost since start: a full queue, a failed write, a stalled stop
        self._reported = 0  # of those, already announced in a warning line
        self._pending: list[str] = []
        self.writing = 0    # lines in the write under way

    def lost(self, count: int) -> None:
        self.dropped += count
        metrics.LOG_LINES_DROPPED.inc(count)

    def add(self, line: str) -> None:
        self._pending.append(line)

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if self.dropped > self._reported:
            lines.append(self.formatter.format(_warning(
                f"{self.dropped - self._reported} log lines were dropped by process {os.getpid()} (the log queue of "
                f"{QUEUE_LINES} lines "
                "was full, or writing failed); gateway_log_lines_dropped_total counts them")))
            self._reported = self.dropped
        if not lines and not getattr(self.stream, "pending", False):
            return
        self.writing = len(lines)
        try:
            self.stream.write("\n".join(lines) + "\n" if lines else "")
            self.stream.flush()
        except PartlyWritten as exc:
            self.lost(exc.unwritten)  # a full pipe: what it took is out, whole lines only
        except (OSError, ValueError):
            self.lost(self.writing)  # stdout closed or broken: counted, announced when it works again
        finally:
            self.writing = 0

    def abandon(self) -> None:
        """A stop gave up on the write under way: its lines count as lost now, and not again if it fails."""
        count, self.writing = self.writing, 0
        self.lost(count)

    def forget(self) -> None:
        """In a forked child: the lines the parent's writer had taken, and its drops, are the
        parent's to write and announce."""
        self._pending, self.writing = [], 0
        self._reported = self.dropped
        if isinstance(self.stream, Descriptor):
            self.stream.forget()  # the end of a line the parent began


def _warning(message: str) -> logging.LogRecord:
    record = logging.LogRecord(__name__, logging.WARNING, "", 0, message, None, None)
    record.request_id = "-"
    return record


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """Formats each record in the thread that logs it and puts the line on a bounded queue
    without waiting; a full queue loses the line, counted. Lines, not records, cross to the
    writer: it then holds the interpreter lock only to join and write them, not to format."""

    def __init__(self, writer: StdoutWriter):
        super().__init__(new_queue())
        self.writer = writer

    def prepare(self, record: logging.LogRecord) -> str:
        return self.writer.formatter.format(record)

    def enqueue(self, line: str) -> None:
        if self.queue.qsize() < QUEUE_LINES:
            try:
                self.queue.put_nowait(line)
                return
            except queue.Full:  # threads raced past the size check for the stop's place
                pass
        self.writer.lost(1)


class StdoutListener(logging.handlers.QueueListener):
    """The writer thread. It wakes for a batch, not for every line: once the queue ran empty
    it waits ``BATCH_SECONDS`` after the next line arrives, so that it takes the interpreter
    lock from the request threads a few times a second rather than once per line. Only lines
    (``str``) go on the queue besides ``enqueue_sentinel``'s marker: anything else is the stop.
    """

    def __init__(self, lines: queue.Queue, writer: StdoutWriter):
        super().__init__(lines)
        self.writer = writer
        self.finished = threading.Event()  # set once everything before the stop was written
        # Under gevent this "thread" is a greenlet, and a greenlet lives on in a forked child's copy
        # of the hub, still reading the parent's queue: there it writes nothing (the parent does).
        self.active = True  # False in such a copy (``_forked``)

    def dequeue(self, block: bool):
        try:
            item = self.queue.get_nowait()
        except queue.Empty:
            self._flush()  # one write per batch of lines, not per line
            item = self.queue.get(block)
            if isinstance(item, str):
                time.sleep(BATCH_SECONDS)  # let the batch gather (this thread only)
        if not isinstance(item, str):
            self._flush()
            self.finished.set()
        return item

    def handle(self, line: str) -> None:
        if self.active:
            self.writer.add(line)

    def _flush(self) -> None:
        if self.active:
            self.writer.flush()

    def enqueue_sentinel(self) -> None:
        # The stop has a place kept on the queue; should racing lines have taken it, the oldest makes room.
        while True:
            try:
                super().enqueue_sentinel()
                return
            except queue.Full:
                self.writer.lost(self._drain(limit=1))

    def _drain(self, limit: int = QUEUE_LINES + 1) -> int:
        """Take up to ``limit`` items off the queue unwritten; how many were lines."""
        lines = 0
        for _ in range(limit):
            try:
                lines += isinstance(self.queue.get_nowait(), str)
            except queue.Empty:
                break
        return lines

    def stop_within(self, seconds: float) -> bool:
        """Write out what is queued, waiting ``seconds`` at most (``stop`` waits for ever; and 3.12.1
        starts no helper thread from atexit to bound it); whether the writer finished."""
        self.enqueue_sentinel()
        if self.finished.wait(seconds):
            return True
        # Stuck in a write: what is queued or being written counts as lost; the stop goes back for the thread.
        self.writer.lost(self._drain())
        self.writer.abandon()
        self.enqueue_sentinel()
        return False


_installed: BoundedQueueHandler | None = None
_listener: StdoutListener | None = None


def start_writer() -> None:
    """The writer thread of this process."""
    global _listener
    if _installed is not None and _listener is None:
        _listener = StdoutListener(_installed.queue, _installed.writer)
        _listener.start()


def stop_writer(seconds: float = STOP_SECONDS) -> None:
    """Write out what is queued, within ``seconds``; what is not written by then is counted."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None and not listener.stop_within(seconds) and _installed is not None:
        _installed.queue = new_queue()  # the stuck thread keeps the old queue; a new writer gets this one


def _forked() -> None:
    """In every forked child, at once (``os.register_at_fork``), before it logs anything (gunicorn's
    "Booting worker" comes before ``post_fork``): a new queue; the parent's may be locked, and its lines are its own."""
    global _listener
    if _listener is not None:
        _listener.active = False  # this process's copy of the parent's writer
    if _installed is not None:
        _installed.queue = new_queue()
        _installed.writer.forget()
        _listener = None


def after_fork() -> None:
    """In a forked gunicorn worker (``post_fork``): its writer, for what it logged since the fork too."""
    start_writer()


os.register_at_fork(after_in_child=_forked)
def _stop_at_exit() -> None:
    # An exception while this waits (gunicorn's gevent worker raises SystemExit from a greenlet at a
    # quit) would only be printed, blocking, to a standard error that may be the pipe nobody reads.
    try:
        stop_writer()
    except BaseException:  # noqa: BLE001
        pass


atexit.register(_stop_at_exit)


def ensure_configured(level: str, fmt: str) -> None:
    """The writer, in a process whose app has not installed it (yet): gunicorn's master before the
    app is loaded, or one that runs an app of its own (``GunicornLogger`` sends its lines here)."""
    if _installed is None:
        configure(level, fmt)


def _stdout():
    try:
        return Descriptor(sys.stdout.fileno())
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
    # What no format of ours prints is not collected for every record: thread and
    # multiprocessing names (the "Optimization" section of the logging HOWTO names these
    # switches). The process id stays: the text format prints it.
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
