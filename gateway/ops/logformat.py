"""How a log line looks: JSON or text, always exactly one line, control characters escaped.

Used by the gateway's handler (``gateway.ops.logs``) and for gunicorn's own lines
(``gateway.ops.gunicornlog``), so every line on stdout has one of the two shapes.
"""
from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import quote


_last_second: list = [None, ""]


def timestamp(record: logging.LogRecord) -> str:
    """A record's time, ISO 8601 in UTC with milliseconds; the strftime part is reused within a
    second. The milliseconds are logging's own ``msecs``: from 3.13 it takes them from the integer
    clock, where the float ``created`` may read one less."""
    second = int(record.created)
    if _last_second[0] != second:
        _last_second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_last_second[1]}.{int(record.msecs):03d}Z"


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


_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;._~-]")


def path_for_line(path: str) -> str:
    """A request path for a log line: its first 200 characters, spaces, '=', quotes and controls
    percent-encoded, so that a path cannot add fields to a text line."""
    path = path[:200]
    return quote(path, safe="/:@!$&'()*+,;-._~") if _UNSAFE_IN_PATH.search(path) else path


def _json_line(entry: dict) -> str:
    return _without_breaks(_JSON.encode(entry))


def _without_breaks(line: str) -> str:
    if "\x85" in line or "\u2028" in line or "\u2029" in line:  # rare: a scan each, no regex call
        return _JSON_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line


# A string as JSON, quoted and escaped (the C function json.dumps uses with ensure_ascii=False).
_quoted = json.encoder.encode_basestring
# A value written bare in an event's text form; anything else is written as a JSON string.
_BARE = re.compile(r"[A-Za-z0-9@._:/+-]+")


def event_text(event: dict) -> str:
    """An audit event in the text form: ``event=<name>`` then ``key=value`` per field, a value
    bare when it is only ``[A-Za-z0-9@._:/+-]``, else a JSON string (``rule="email_domain
    acme.example"``), so spaces, quotes and ``=`` in a value cannot start a field or an event."""
    parts = []
    for key, value in event.items():
        text = value if type(value) is str else str(value)
        parts.append(f"{key}={text}" if _BARE.fullmatch(text) else f"{key}={_quoted(text)}")
    return " ".join(parts)


class RequestLine:
    """A request line's message with the audit events raised while serving the request.

    ``str()`` (what ``getMessage`` and so any formatter's ``%(message)s`` prints) is the head,
    then each event's text form on the same line; ``JsonFormatter`` writes the head as the
    message and the events as an ``events`` list. Each form is made once, when a format asks.
    """

    __slots__ = ("fmt", "args", "events", "_head", "_text")

    def __init__(self, fmt: str, args: tuple, events: list[dict]):
        self.fmt, self.args, self.events = fmt, args, events
        self._head = self._text = None

    @property
    def head(self) -> str:
        if self._head is None:
            self._head = self.fmt % self.args if self.args else self.fmt
        return self._head

    def __str__(self) -> str:
        if self._text is None:
            self._text = " ".join([self.head, *map(event_text, self.events)])
        return self._text


_BASE_KEYS = frozenset({"ts", "level", "logger", "request_id", "message", "exception"})


def _json_value(value) -> str:
    return _quoted(value) if type(value) is str else _JSON.encode(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, request_id, message, then a request line's
    audit events (``events``, a list) or a lone audit event's fields, and any exception.

    Written out key by key, byte for byte what ``json.dumps`` makes of the same dict
    (tests/test_logs.py compares the two): ``JSONEncoder.encode`` builds a new C encoder
    for every call, and at three lines per first visit that was most of a line's cost.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "audit", None)
        exception = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        if fields and not _BASE_KEYS.isdisjoint(fields):  # a field would replace a base key: as a dict does
            return _json_line(self._entry(record, fields, exception))
        line = record.msg if type(record.msg) is RequestLine else None
        parts = ['{"ts": "', timestamp(record), '", "level": ', _quoted(record.levelname.lower()),
                 ', "logger": ', _quoted(record.name), ', "request_id": ', _json_value(getattr(record, "request_id", "-")),
                 ', "message": ', _quoted(line.head if line else record.getMessage())]
        if line:  # the request's audit events, one encoder call for the list
            parts += (', "events": ', _JSON.encode(line.events))
        if fields:
            for key, value in fields.items():
                parts += (", ", _quoted(str(key)), ": ", _json_value(value))
        if exception:
            parts += (', "exception": ', _quoted(exception))
        parts.append("}")
        return _without_breaks("".join(parts))

    @staticmethod
    def _entry(record: logging.LogRecord, fields: dict, exception: str | None) -> dict:
        entry = {"ts": timestamp(record), "level": record.levelname.lower(), "logger": record.name,
                 "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        entry.update(fields)
        if exception:  # formatted here, or already, on the way through the queue (exc_text)
            entry["exception"] = exception
        return entry


TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s [%(request_id)s] %(message)s"  # the pid: which worker


class TextFormatter(logging.Formatter):
    """The text format, one event per line: a newline in a path or a traceback is escaped."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None):
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))
