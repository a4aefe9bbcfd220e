"""How a log line looks: JSON or text, always exactly one line, control characters escaped;
and gunicorn's own lines in the same shapes (``GunicornLogger``).

Used by the gateway's handler (``gateway.ops.logs``) and by gunicorn's own lines
(``GunicornLogger``), so every line on stdout has one of the two shapes.
"""
from __future__ import annotations

import json
import logging
import re
import time

from gunicorn import glogging

from gateway import config as settings

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _timestamp(record.created), "level": record.levelname.lower(), "logger": record.name,
                 "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        fields = getattr(record, "audit", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already, on the way through the queue
            entry["exception"] = record.exc_text
        return _json_line(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class TextFormatter(logging.Formatter):
    """The text format, one event per line: a newline in a path or a traceback is escaped."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None):
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


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
        if settings.value("GATEWAY_LOG_FORMAT") == "json":
            error_format = JsonFormatter()
        else:  # gunicorn's layout, one line per event like ours (its messages may quote a request)
            error_format = TextFormatter(self.error_fmt, self.datefmt)
        for log, formatter in ((self.error_log, error_format), (self.access_log, TextFormatter(self.access_fmt))):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter)
        self.error_log.addFilter(_without_queries)


_QUERY = re.compile(r"\?\S+")  # a query, not a question ("Perhaps out of memory?"); quotes too


def _without_queries(record: logging.LogRecord) -> bool:
    """gunicorn quotes a request line it refuses; its query may carry a hand-off token."""
    message = record.getMessage()
    if "?" in message:
        record.msg, record.args = _QUERY.sub("?[query removed]", message), None
    return True
