"""Log lines: the writer thread, and the direct path the per-request lines take."""
import io
import json
import logging
import os

import pytest
from flask import Flask, g

from gateway.ops import audit, logs


@pytest.fixture
def writer(monkeypatch):
    """Our handler as the root logger's only one, writing into a buffer instead of stdout."""
    def install(fmt: str):
        stream = io.StringIO()
        formatter = logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()
        handler = logs.BackgroundHandler(stream, formatter)
        # No writer thread: ``written`` drains the queue itself, so every line is there, in order.
        handler._pid = os.getpid()
        handler.addFilter(logs.RequestIdFilter())
        monkeypatch.setattr(logging.root, "handlers", [handler])
        monkeypatch.setattr(logs, "_direct", handler)
        return handler, stream
    yield install
    logging.getLogger("gateway").setLevel(logging.NOTSET)


def written(handler, stream) -> list[str]:
    handler.drain()
    return stream.getvalue().splitlines()


def request_context():
    app = Flask(__name__)
    ctx = app.test_request_context("/")
    ctx.push()
    g.request_id = "rid-0123456789"
    return ctx


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_direct_path_writes_what_logging_would(writer, fmt):
    handler, stream = writer(fmt)
    logging.getLogger("gateway").setLevel(logging.INFO)
    log = logging.getLogger("gateway.audit")
    ctx = request_context()
    try:
        fields = {"event": "embed_viewed", "email": "a@x.example", "groups": 2}
        logs.info(log, "%s %s", "embed_viewed", "email=a@x.example groups=2", fields=fields)   # direct
        log.info("%s %s", "embed_viewed", "email=a@x.example groups=2", extra={"audit": fields})  # logging
    finally:
        ctx.pop()
    direct, through_logging = written(handler, stream)
    if fmt == "json":
        a, b = json.loads(direct), json.loads(through_logging)
        assert a.pop("ts")[:16] == b.pop("ts")[:16]
        assert a == b
        assert a["request_id"] == "rid-0123456789" and a["event"] == "embed_viewed" and a["groups"] == 2
    else:
        # "2026-11-28 02:40:00,123 INFO gateway.ops.audit [rid-...] embed_viewed email=..."
        assert direct.split(" ", 2)[2] == through_logging.split(" ", 2)[2]
        assert "[rid-0123456789] embed_viewed email=a@x.example groups=2" in direct


def test_a_line_keeps_the_time_it_was_logged_not_the_time_it_was_written(writer, monkeypatch):
    handler, stream = writer("json")
    logging.getLogger("gateway").setLevel(logging.INFO)
    with monkeypatch.context() as clock:
        clock.setattr(logs.time, "time", lambda: 1_700_000_000.25)
        logs.info(logging.getLogger("gateway.ops.logs"), "request status=%s", 200)
    [line] = written(handler, stream)
    assert json.loads(line)["ts"] == "2023-11-14T22:13:20.250Z"


def test_lines_below_the_level_are_not_written(writer):
    handler, stream = writer("json")
    logging.getLogger("gateway").setLevel(logging.WARNING)
    logs.info(logging.getLogger("gateway.ops.logs"), "request status=%s", 200)
    audit.event("login", email="a@x.example")
    assert written(handler, stream) == []


def test_with_another_handler_attached_lines_go_through_logging(writer):
    handler, stream = writer("json")
    logging.getLogger("gateway").setLevel(logging.INFO)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    logging.root.handlers.append(Keep())
    audit.event("logout", email="a@x.example")
    [record] = seen
    assert record.name == "gateway.audit" and record.audit == {"event": "logout", "email": "a@x.example"}
    assert json.loads(written(handler, stream)[0])["event"] == "logout"


FORGED_PATH = "/x%0aFORGED%20line%0d%1b[2J"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_newline_in_the_path_cannot_forge_a_request_line(writer, make_app, fmt):
    handler, stream = writer(fmt)
    logging.getLogger("gateway").setLevel(logging.INFO)
    assert logs._direct is handler and make_app().test_client().get(FORGED_PATH).status_code == 404
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
    glog = logs.GunicornLogger(cfg)
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
    before = metrics.LOG_LINES_DROPPED._value.get()
    log = logging.getLogger("gateway.test")
    log.setLevel(logging.INFO)
    for i in range(25):  # stdout stalled: nothing is written meanwhile
        log.info("line %d", i)
    assert handler._queue.qsize() == 10 and handler.dropped == 15
    assert metrics.LOG_LINES_DROPPED._value.get() - before == 15
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

    handler.stream = Broken()
    logging.getLogger("gateway.test").warning("lost")
    handler.drain()
    assert handler.dropped == 1
    handler.stream = stream
    logging.getLogger("gateway.test").warning("back")
    lines = written(handler, stream)
    assert any("1 log lines were dropped" in line for line in lines) and any("back" in line for line in lines)


def test_only_queries_are_removed_from_gunicorn_lines_not_question_marks():
    import logging

    from gateway.ops.logs import _without_queries

    def cleaned(message: str) -> str:
        record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, message, None, None)
        _without_queries(record)
        return record.getMessage()

    assert cleaned("Worker (pid:12) was sent SIGKILL! Perhaps out of memory?") == \
        "Worker (pid:12) was sent SIGKILL! Perhaps out of memory?"
    assert cleaned("Invalid request from ip=1.2.3.4: 'GET /sso/jwt?jwt=eyJabc HTTP/1.1'") == \
        "Invalid request from ip=1.2.3.4: 'GET /sso/jwt?[query removed] HTTP/1.1'"
