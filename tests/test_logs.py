"""Log lines: the one log path (a bounded queue and a writer thread), their shapes, and what is lost."""
import io
import json
import logging
import logging.handlers
import os
import sys

import pytest
from flask import Flask, g

from gateway.ops import audit, logformat, logs


@pytest.fixture
def writer(monkeypatch):
    """The gateway's log path (queue handler and writer thread) as the root logger's only
    handler, writing into a buffer instead of stdout."""
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logs, "_installed", None)
    monkeypatch.setattr(logs, "_listener", None)

    def install(fmt: str):
        stream = io.StringIO()
        return logs.configure("INFO", fmt, stream=stream), stream
    yield install
    logs.stop_writer()
    logging.getLogger("gateway").setLevel(logging.NOTSET)


def written(handler, stream) -> list[str]:
    logs.stop_writer()  # writes out everything queued, in order
    return stream.getvalue().splitlines()


def request_context():
    app = Flask(__name__)
    ctx = app.test_request_context("/")
    ctx.push()
    g.request_id = "rid-0123456789"
    return ctx


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_audit_event_is_one_line_with_its_fields(writer, fmt):
    handler, stream = writer(fmt)
    ctx = request_context()
    try:
        audit.event("embed_viewed", email="a@x.example", groups=2)
    finally:
        ctx.pop()
    [line] = written(handler, stream)
    if fmt == "json":
        entry = json.loads(line)
        assert entry["logger"] == "gateway.audit" and entry["message"] == "embed_viewed email=a@x.example groups=2"
        assert entry["request_id"] == "rid-0123456789" and entry["event"] == "embed_viewed" and entry["groups"] == 2
    else:
        # "2026-11-28 02:40:00,123 INFO gateway.audit [rid-...] embed_viewed email=..."
        assert " INFO gateway.audit [rid-0123456789] embed_viewed email=a@x.example groups=2" in line


def test_a_line_keeps_the_time_it_was_logged_not_the_time_it_was_written(writer, monkeypatch):
    handler, stream = writer("json")
    with monkeypatch.context() as clock:
        clock.setattr(logs.time, "time", lambda: 1_700_000_000.25)
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
    assert handler.lock is None  # the queue is thread-safe; no lock handed between request threads


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


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_gunicorns_own_lines_are_one_line_each(monkeypatch, fmt):
    from gunicorn.config import Config

    monkeypatch.setenv("GATEWAY_LOG_FORMAT", fmt)
    cfg = Config()
    cfg.set("errorlog", "-")
    glog = logformat.GunicornLogger(cfg)
    stream = io.StringIO()
    [handler] = [h for h in glog.error_log.handlers if getattr(h, "_gunicorn", False)]
    handler.setStream(stream)
    glog.error("Invalid request from ip=%s: %s", "192.0.2.1", "GET /\nFORGED line")
    try:
        raise ValueError("boom\r\nFORGED")
    except ValueError:
        glog.exception("Error handling request /x\nFORGED")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and not any(line.startswith("FORGED") for line in lines)
    if fmt == "json":
        assert json.loads(lines[0])["message"].endswith("GET /\nFORGED line")
    else:
        assert lines[0].endswith("GET /\\nFORGED line")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_full_log_queue_drops_lines_counts_them_and_says_so(writer, monkeypatch, fmt):
    from gateway.ops import metrics

    monkeypatch.setattr(logs, "QUEUE_LINES", 10)
    handler, stream = writer(fmt)
    logs.stop_writer()  # stdout stalled: nothing is written meanwhile
    before = metrics.LOG_LINES_DROPPED._value.get()
    log = logging.getLogger("gateway.test")
    log.setLevel(logging.INFO)
    for i in range(25):
        log.info("line %d", i)
    assert handler.queue.qsize() == 10 and handler.writer.dropped == 15
    assert metrics.LOG_LINES_DROPPED._value.get() - before == 15
    logs.start_writer()  # stdout works again
    lines = written(handler, stream)
    assert len([line for line in lines if "line " in line]) == 10
    assert any("15 log lines were dropped" in line for line in lines)


def test_a_failed_write_is_counted_and_announced_when_writing_works_again(writer):
    handler, stream = writer("text")

    class Broken:
        def write(self, text):
            raise OSError("stdout gone")

        def flush(self):
            pass

    handler.writer.stream = Broken()
    logging.getLogger("gateway.test").warning("lost")
    logs.stop_writer()
    assert handler.writer.dropped == 1
    handler.writer.stream = stream
    logs.start_writer()
    logging.getLogger("gateway.test").warning("kept")
    lines = written(handler, stream)
    assert "1 log lines were dropped" in lines[0] and lines[1].endswith("kept")


def test_a_stalled_stdout_cannot_hold_a_stopping_worker(writer):
    """At exit the writer gets a few seconds, not for ever: gunicorn would otherwise wait its
    whole graceful timeout and kill the worker (found by a black-box review)."""
    import time

    read_end, write_end = os.pipe()
    try:
        handler = logs.configure("INFO", "json", stream=logs._Descriptor(write_end))
        for _ in range(3000):  # far more than a pipe holds: nobody reads it
            logging.getLogger("gateway.test").warning("x" * 200)
        time.sleep(0.3)  # the writer is now blocked in a write
        started = time.monotonic()
        logs.stop_writer(0.5)
        assert time.monotonic() - started < 2
        assert handler.queue.qsize() == 0 or handler.writer.dropped > 0
    finally:
        os.close(read_end)  # the blocked write fails (EPIPE), and the writer thread ends
        os.close(write_end)


ODD = ["plain", "", "quote \" backslash \\ slash /", "newline\nreturn\r tab\t nul\x00 esc\x1b del\x7f",
       "c1 \x85 \x9b", "line sep \u2028 para sep \u2029", "para sep alone \u2029", "non-ASCII é ü 名前 🙂", "lone surrogate \ud800"]


@pytest.mark.parametrize("message", ODD)
def test_a_json_line_is_exactly_what_json_dumps_makes_of_it(message):
    """The formatter writes its lines out key by key; json.dumps of the same dict is the oracle."""
    def reference(record, exception=None):
        entry = {"ts": logformat._timestamp(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "request_id": getattr(record, "request_id", "-"),
                 "message": record.getMessage(), **getattr(record, "audit", {})}
        if exception:
            entry["exception"] = exception
        return logformat._JSON_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}",
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
