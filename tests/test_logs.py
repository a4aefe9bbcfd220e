"""Log lines: the one log path (a bounded queue and a writer thread), their shapes, and what is lost."""
import io
import json
import logging
import logging.handlers
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from flask import Flask, g
from prometheus_client import REGISTRY

from conftest import ROOT
from gateway.ops import audit, fdout, gunicornlog, logformat, logs, logwriter


@pytest.fixture
def writer(monkeypatch):
    """The gateway's log path (queue handler and writer thread) as the root logger's only
    handler, writing into a buffer instead of stdout."""
    monkeypatch.setattr(logging.root, "handlers", [])

    def install(fmt: str, stream=None):
        stream = stream or io.StringIO()
        return logwriter.configure("INFO", fmt, stream=stream), stream
    yield install
    logwriter.stop_writer()
    logging.getLogger("gateway").setLevel(logging.NOTSET)


def written(handler, stream) -> list[str]:
    logwriter.stop_writer()  # writes out everything queued, in order
    return stream.getvalue().splitlines()


def dropped_total() -> float:
    return REGISTRY.get_sample_value("gateway_log_lines_dropped_total") or 0.0


def request_context():
    app = Flask(__name__)
    ctx = app.test_request_context("/")
    ctx.push()
    g.request_id = "rid-0123456789"
    return ctx


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_audit_event_is_one_line_with_its_fields(writer, fmt):
    """Outside the gateway's request handling (here an app without its hooks) an event has a
    line of its own; on a request it joins the request's line (tests/test_audit.py)."""
    handler, stream = writer(fmt)
    ctx = request_context()
    try:
        audit.event("embed_viewed", email="a@x.example", groups=2)
    finally:
        ctx.pop()
    # Only the event's own line: a background token refresh of an earlier test's app in this worker
    # may write a line of its own meanwhile (seen once in CI).
    [line] = [x for x in written(handler, stream) if "embed_viewed" in x]
    if fmt == "json":
        entry = json.loads(line)
        assert entry["logger"] == "gateway.audit" and entry["message"] == "event=embed_viewed email=a@x.example groups=2"
        assert entry["request_id"] == "rid-0123456789" and entry["event"] == "embed_viewed" and entry["groups"] == 2
    else:
        # "2026-11-28 02:40:00,123 INFO gateway.audit [rid-...] event=embed_viewed email=..."
        assert line.endswith(" INFO gateway.audit [rid-0123456789] event=embed_viewed email=a@x.example groups=2")


def test_a_line_keeps_the_time_it_was_logged_not_the_time_it_was_written(writer, monkeypatch):
    handler, stream = writer("json")
    with monkeypatch.context() as clock:
        clock.setattr(logs.time, "time", lambda: 1_700_000_000.25)
        clock.setattr(logs.time, "time_ns", lambda: 1_700_000_000_250_000_000)  # what 3.13's LogRecord reads
        logging.getLogger("gateway.ops.logs").info("request status=%s", 200)
    [line] = written(handler, stream)
    assert json.loads(line)["ts"] == "2023-11-14T22:13:20.250Z"


def test_lines_below_the_level_are_not_written(writer):
    handler, stream = writer("json")
    logging.getLogger("gateway").setLevel(logging.WARNING)
    logging.getLogger("gateway.ops.logs").info("request status=%s", 200)
    audit.event("login", email="a@x.example")
    assert written(handler, stream) == []


def test_another_handler_sees_the_same_records(writer):
    handler, stream = writer("json")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    logging.root.handlers.append(Keep())
    audit.event("logout", email="a@x.example")
    [record] = seen
    assert record.name == "gateway.audit" and record.audit == {"event": "logout", "email": "a@x.example"}
    assert json.loads(written(handler, stream)[0])["event"] == "logout"


def test_the_one_log_path_is_the_standard_queue_handler(writer):
    handler, _ = writer("json")
    ours = [h for h in logging.root.handlers if not type(h).__module__.startswith("_pytest")]
    assert ours == [handler] and isinstance(handler, logging.handlers.QueueHandler)


def test_a_line_goes_through_the_handler_lock_as_python_3_13_takes_it(writer):
    """Python 3.13's ``Handler.handle`` does ``with self.lock:``; a handler without a real lock
    answered every request 500 there. The stock ``handle`` is ours, lock and all."""
    handler, stream = writer("text")
    assert type(handler).handle is logging.Handler.handle
    with handler.lock:  # a real (re-entrant) lock: the same thread may log while holding it
        logging.getLogger("gateway.test").warning("under the lock")
    record = logging.LogRecord("gateway.test", logging.WARNING, "", 0, "as 3.13 handles it", None, None)
    if handler.filter(record):  # Handler.handle of Python 3.13, step by step
        with handler.lock:
            handler.emit(record)
    lines = written(handler, stream)
    assert lines[0].endswith("under the lock") and lines[1].endswith("as 3.13 handles it")


FORGED_PATH = "/x%0aFORGED%20line%0d%1b[2J"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_newline_in_the_path_cannot_forge_a_request_line(writer, make_app, fmt):
    handler, stream = writer(fmt)
    logging.getLogger("gateway").setLevel(logging.INFO)
    assert make_app().test_client().get(FORGED_PATH).status_code == 404
    lines = written(handler, stream)
    [line] = [line for line in lines if "path=/x" in line]
    assert not any(line.startswith("FORGED") for line in lines)
    # The path is logged percent-encoded: no control character, space or '=' of its own.
    assert "path=/x%0AFORGED%20line%0D%1B%5B2J endpoint=" in (json.loads(line)["message"] if fmt == "json" else line)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_path_cannot_add_a_field_to_a_request_line(writer, make_app, fmt):
    handler, stream = writer(fmt)
    logging.getLogger("gateway").setLevel(logging.INFO)
    assert make_app().test_client().get("/x%20status=200%20FORGED=1").status_code == 404
    [line] = [line for line in written(handler, stream) if "path=/x" in line]
    assert "status=200 FORGED" not in line and "path=/x%20status%3D200%20FORGED%3D1 " in line


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_event_is_one_line_through_logging_too(writer, fmt):
    handler, stream = writer(fmt)
    log = logging.getLogger("gateway.test")
    log.warning("refused %s", "a\nFORGED b\r\nFORGED c\u2028FORGED d\x85FORGED")
    try:
        raise ValueError("boom\nFORGED")
    except ValueError:
        log.exception("unexpected error")
    lines = written(handler, stream)
    assert len(lines) == 2 and not any(line.startswith("FORGED") for line in lines)
    assert len("\n".join(lines).splitlines()) == 2  # no separator str.splitlines() honours either
    if fmt == "json":
        assert json.loads(lines[0])["message"] == "refused a\nFORGED b\r\nFORGED c\u2028FORGED d\x85FORGED"
        assert "Traceback" in json.loads(lines[1])["exception"]
    else:
        assert lines[0].endswith("refused a\\nFORGED b\\r\\nFORGED c\\u2028FORGED d\\x85FORGED")
        assert "unexpected error\\nTraceback" in lines[1] and "boom\\nFORGED" in lines[1]


@pytest.mark.parametrize("errorlog", ["-", "file"])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_gunicorns_own_lines_are_one_line_each(writer, monkeypatch, tmp_path, fmt, errorlog):
    """To stdout ("-", gunicorn.conf.py's) they go through the gateway's own queue and writer;
    to a file of the operator's, through gunicorn's handler; one line each, in our shapes."""
    from gunicorn.config import Config

    monkeypatch.setenv("GATEWAY_LOG_FORMAT", fmt)
    monkeypatch.setattr(logging.getLogger("gunicorn.error"), "propagate", False)  # as gunicorn leaves it
    handler, stream = writer(fmt)
    cfg = Config()
    cfg.set("errorlog", "-" if errorlog == "-" else str(tmp_path / "gunicorn.log"))
    others = list(logging.getLogger("gunicorn.error").handlers)  # pytest's, say: not gunicorn's
    glog = gunicornlog.GunicornLogger(cfg)
    own = [h for h in glog.error_log.handlers if h not in others]
    assert len(own) == (0 if errorlog == "-" else 1)  # no blocking stream of gunicorn's own on stdout
    glog.error("Invalid request from ip=%s: %s", "192.0.2.1", "GET /\nFORGED line")
    try:
        raise ValueError("boom\r\nFORGED")
    except ValueError:
        glog.exception("Error handling request /x\nFORGED")
    lines = written(handler, stream)
    if errorlog == "file":
        assert lines == []
        own[0].close()
        lines = (tmp_path / "gunicorn.log").read_text().splitlines()
    assert len(lines) == 2 and not any(line.startswith("FORGED") for line in lines)
    if fmt == "json":
        assert json.loads(lines[0])["message"].endswith("GET /\nFORGED line")
    else:
        assert lines[0].endswith("GET /\\nFORGED line")
        assert f"[{os.getpid()}]" in lines[0]  # which worker, in either layout


def test_gunicorns_syslog_handler_stays_beside_the_gateways_log_path(writer, monkeypatch):
    """--log-syslog with the shipped error log "-": only gunicorn's stream to stderr goes."""
    import socket
    from gunicorn.config import Config

    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    monkeypatch.setattr(logging.getLogger("gunicorn.error"), "propagate", False)
    handler, stream = writer("json")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        cfg = Config()
        cfg.set("errorlog", "-")
        cfg.set("syslog", True)
        cfg.set("syslog_addr", "udp://127.0.0.1:%d" % receiver.getsockname()[1])
        glog = gunicornlog.GunicornLogger(cfg)
        try:
            glog.error("Worker (pid:%s) was sent SIGKILL!", 1234)
            datagram = receiver.recv(65536).decode()
        finally:
            for log in (glog.error_log, glog.access_log):
                for own in [h for h in log.handlers if isinstance(h, logging.handlers.SysLogHandler)]:
                    log.removeHandler(own)
                    own.close()
    assert '"message": "Worker (pid:1234) was sent SIGKILL!"' in datagram  # in our shape there too
    [line] = written(handler, stream)
    assert json.loads(line)["message"] == "Worker (pid:1234) was sent SIGKILL!"


def test_the_exit_stop_lets_nothing_out_to_a_standard_error_that_may_be_stalled(monkeypatch):
    # gunicorn's gevent worker raises SystemExit from a greenlet while the stop waits for the writer.
    def interrupted(seconds=logwriter.STOP_SECONDS):
        raise SystemExit(0)

    monkeypatch.setattr(logwriter, "stop_writer", interrupted)
    logwriter._stop_at_exit()


def test_an_invalid_log_setting_gives_gunicorns_lines_the_default_not_a_traceback(writer, monkeypatch):
    # The app's load refuses it, with every other problem, in one line (test_gunicorn.py).
    from gunicorn.config import Config

    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "bogus")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "loud")
    monkeypatch.setattr(logging.getLogger("gunicorn.error"), "propagate", False)
    writer("json")
    cfg = Config()
    cfg.set("errorlog", str(os.devnull))
    [handler] = [h for h in gunicornlog.GunicornLogger(cfg).error_log.handlers
                 if isinstance(h.formatter, (logformat.JsonFormatter, logformat.TextFormatter))]
    assert isinstance(handler.formatter, logformat.JsonFormatter)


def _pipe_reader(read_end: int):
    received = bytearray()

    def drain() -> bytes:
        os.set_blocking(read_end, False)
        try:
            while chunk := os.read(read_end, 65536):
                received.extend(chunk)
        except BlockingIOError:
            pass
        return bytes(received)
    return drain


def test_two_processes_writing_into_one_full_pipe_never_cut_each_others_lines():
    """Each gevent worker has its own non-blocking description of the one stdout pipe: a batch one of
    them could only write in part must not leave half a line for the other's lines to land in."""
    import fcntl

    read_end, write_end = os.pipe()
    # Two descriptions of the pipe's write end, as two workers have (gateway/serving/output.py).
    first, second = (os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK) for _ in range(2))
    a, b = fdout.Descriptor(first), fdout.Descriptor(second)
    capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    batch = [f"a{n:05d} " + "x" * 193 for n in range(capacity * 3 // 400)]  # 1.5 times what it holds
    drain = _pipe_reader(read_end)
    try:
        with pytest.raises(fdout.PartlyWritten) as cut:
            a.write("\n".join(batch) + "\n")
        drain()  # the reader takes what is there, and
        b.write("b-line\n")  # the other process's line comes next,
        a.write("a-after\n")  # then the first's next batch
        text = drain().decode()
    finally:
        for fd in (read_end, write_end, first, second):
            os.close(fd)
    lines = text.splitlines()
    assert lines == [*batch[:len(batch) - cut.value.unwritten], "b-line", "a-after"]


def test_a_line_longer_than_an_atomic_pipe_write_is_finished_before_anything_else():
    import fcntl

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    out = fdout.Descriptor(write_end)
    capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    drain = _pipe_reader(read_end)
    long_line = "L" * (fdout.PIPE_BUF * 3)
    try:
        out.write("f" * (capacity - fdout.PIPE_BUF * 2 - 1) + "\n")  # room left for two thirds of the line
        with pytest.raises(fdout.PartlyWritten) as cut:
            out.write(long_line + "\nnext\n")
        assert cut.value.unwritten == 1 and out.pending  # "next" is lost; the long line's end waits
        with pytest.raises(fdout.PartlyWritten):
            out.write("refused\n")  # its end has not gone yet: nothing of this does
        drain()
        out.write("after\n")
        text = drain().decode()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert text.splitlines()[1:] == [long_line, "after"]


def test_a_stop_with_no_new_lines_still_writes_the_end_of_a_cut_line():
    """A worker's last line ("Worker exiting") cut by a full pipe is finished at the stop, not left
    for the next process's output to run into."""
    import fcntl

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    out = fdout.Descriptor(write_end)
    writer = logwriter.StdoutWriter(out, logformat.JsonFormatter())
    drain = _pipe_reader(read_end)
    try:
        writer.add("z" * (fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) * 3 // 2))
        writer.flush()  # goes out in part
        assert out.pending
        drain()
        writer.flush()  # nothing new: the end still goes
        text = drain().decode()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert not out.pending and text.splitlines() == ["z" * (len(text) - 1)] and writer.dropped == 0


def test_a_forked_child_leaves_the_end_of_its_parents_batch_to_the_parent(tmp_path):
    import fcntl

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    out = fdout.Descriptor(write_end)
    handler = logwriter.configure("INFO", "json", stream=out)
    try:
        with pytest.raises(fdout.PartlyWritten):
            out.write("y" * fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) * 2 + "\n")  # half of it left over
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: a fork with threads running
            pid = os.fork()
        if pid == 0:
            os._exit(0 if handler.writer.stream is out and not out.pending else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # the child forgot it at the fork
        assert out.pending  # the parent still has it to write
    finally:
        logwriter.stop_writer(0.1)
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_full_log_queue_drops_lines_counts_them_and_says_so(writer, monkeypatch, fmt):
    monkeypatch.setattr(logwriter, "QUEUE_LINES", 10)
    handler, stream = writer(fmt)
    # The bound is the standard queue's own, with one place more kept for the stop.
    assert isinstance(handler.queue, queue.Queue) and handler.queue.maxsize == 11
    logwriter.stop_writer()  # stdout stalled: nothing is written meanwhile
    before = dropped_total()
    log = logging.getLogger("gateway.test")
    log.setLevel(logging.INFO)
    for i in range(25):
        log.info("line %d", i)
    assert handler.queue.qsize() == 10 and handler.writer.dropped == 15
    assert dropped_total() - before == 15
    logwriter.start_writer()  # stdout works again
    lines = written(handler, stream)  # the stop gets onto the full queue, behind its ten lines
    assert len([line for line in lines if "line " in line]) == 10
    assert any("15 log lines were dropped" in line for line in lines)


def test_a_line_that_finds_the_queue_full_is_counted_not_an_error(writer, capsys):
    handler, stream = writer("text")
    logwriter.stop_writer()
    handler.queue = queue.Queue(maxsize=2)  # as when request threads race past the size check together
    before = dropped_total()
    for i in range(5):
        logging.getLogger("gateway.test").warning("line %d", i)
    assert handler.writer.dropped == 3 and dropped_total() - before == 3
    assert "Traceback" not in capsys.readouterr().err  # not logging's handleError


def test_a_failed_write_is_counted_and_announced_when_writing_works_again(writer):
    handler, stream = writer("text")

    class Broken:
        def write(self, text):
            raise OSError("stdout gone")

        def flush(self):
            pass

    handler.writer.stream = Broken()
    logging.getLogger("gateway.test").warning("lost")
    logwriter.stop_writer()
    assert handler.writer.dropped == 1
    handler.writer.stream = stream
    logwriter.start_writer()
    logging.getLogger("gateway.test").warning("kept")
    lines = written(handler, stream)
    assert "1 log lines were dropped" in lines[0] and lines[1].endswith("kept")


class StalledStdout:
    """A stdout whose reader has stopped: a write blocks until ``release`` is set."""

    def __init__(self):
        self.entered, self.release, self.text = threading.Event(), threading.Event(), []

    def write(self, text):
        self.entered.set()
        self.release.wait()
        self.text.append(text)

    def flush(self):
        pass


def test_a_stalled_stdout_cannot_hold_a_stopping_worker(writer):
    """At exit the writer gets a few seconds, not for ever: gunicorn would otherwise wait its
    whole graceful timeout and kill the worker (found by a black-box review)."""
    before = set(threading.enumerate())
    stalled = StalledStdout()
    handler, _ = writer("json", stream=stalled)
    log = logging.getLogger("gateway.test")
    log.warning("first")
    assert stalled.entered.wait(10)  # the writer thread is now blocked in its write
    for _ in range(5):
        log.warning("queued")
    started = time.monotonic()
    logwriter.stop_writer(0.2)
    assert time.monotonic() - started < 2
    assert handler.writer.dropped == 6  # the five queued and the one being written when the stop gave up
    stalled.release.set()  # the write returns: the stuck thread finds its stop and ends
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
        assert not thread.is_alive()
    assert "first" in "".join(stalled.text) and "queued" not in "".join(stalled.text)


def test_a_process_exits_within_the_stop_time_when_nobody_reads_its_stdout():
    """The real exit path: the atexit stop, with the writer blocked in a pipe nobody reads.
    (No helper thread: Python 3.12.1 starts none from an atexit handler.)"""
    script = textwrap.dedent("""
        import atexit, logging, os, time
        atexit.register(lambda: os.write(2, (f"stopped after {time.monotonic() - started:.2f} "  # after logs' own
                                             f"dropped {handler.writer.dropped}\\n").encode()))
        from gateway.ops import fdout, logwriter
        read_end, write_end = os.pipe()  # nobody reads it
        handler = logwriter.configure("INFO", "json", stream=fdout.Descriptor(write_end))
        for _ in range(3000):  # far more than a pipe holds
            logging.getLogger("gateway.test").warning("x" * 200)
        started = time.monotonic()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stopped, _, dropped = done.stderr.split("stopped after ")[1].split()[:3]
    assert float(stopped) < logwriter.STOP_SECONDS + 1 and int(dropped) > 0


def test_a_forked_worker_writes_its_lines_through_a_writer_of_its_own(writer, tmp_path):
    """gunicorn forks its workers from the master that loaded the app; its post_fork hook
    (gunicorn.conf.py) calls ``after_fork``, which gives the worker a writer and a new queue."""
    out = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    handler, _ = writer("text", stream=fdout.Descriptor(out))
    parent_queue = handler.queue
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: a fork with threads running
        pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            logwriter.after_fork()
            logging.getLogger("gateway.test").warning("from the worker")
            logwriter.stop_writer()
            code = 0 if handler.queue is not parent_queue else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    logging.getLogger("gateway.test").warning("from the master")
    logwriter.stop_writer()
    os.close(out)
    text = (tmp_path / "log").read_text()
    assert "from the worker" in text and "from the master" in text


ODD = ["plain", "", "quote \" backslash \\ slash /", "newline\nreturn\r tab\t nul\x00 esc\x1b del\x7f",
       "c1 \x85 \x9b", "line sep \u2028 para sep \u2029", "para sep alone \u2029", "non-ASCII é ü 名前 🙂", "lone surrogate \ud800"]


@pytest.mark.parametrize("message", ODD)
def test_a_json_line_is_exactly_what_json_dumps_makes_of_it(message):
    """The formatter writes its lines out key by key; json.dumps of the same dict is the oracle."""
    def reference(record, exception=None):
        entry = {"ts": logformat.timestamp(record), "level": record.levelname.lower(),
                 "logger": record.name, "request_id": getattr(record, "request_id", "-"),
                 "message": record.getMessage(), **getattr(record, "audit", {})}
        if exception:
            entry["exception"] = exception
        return re.sub("[\x85\u2028\u2029]", lambda m: f"\\u{ord(m.group()):04x}",  # some readers end lines there
                      json.dumps(entry, ensure_ascii=False))

    formatter = logformat.JsonFormatter()
    plain = logging.LogRecord("gateway.x" + message[:3], logging.WARNING, "", 0, "said %s", (message,), None)
    plain.request_id = message
    assert formatter.format(plain) == reference(plain)
    audited = logging.LogRecord("gateway.audit", logging.INFO, "", 0, message, None, None)
    audited.audit = {"event": message, "count": 3, "ratio": 0.5, "flag": True, "none": None,
                     "groups": [message, "b"], message or "k": {"nested": message}}
    assert formatter.format(audited) == reference(audited)
    try:
        raise ValueError(message)
    except ValueError:
        failed = logging.LogRecord("gateway.x", logging.ERROR, "", 0, "boom", None, sys.exc_info())
    assert formatter.format(failed) == reference(failed, formatter.formatException(failed.exc_info))
    # A field named like a base key replaces it, in place, as in a dict.
    clash = logging.LogRecord("gateway.audit", logging.INFO, "", 0, "m", None, None)
    clash.audit = {"message": message, "event": "e"}
    assert formatter.format(clash) == reference(clash)
    for line in (formatter.format(plain), formatter.format(audited), formatter.format(failed)):
        assert len(line.splitlines()) == 1 and json.loads(line)
