"""Audit events: who signed in, which team they were given and why, which token was used.

One line per request: an event raised while serving a request joins that request's line
(``gateway.ops.logs``): in JSON format an ``events`` list, each event an object of its
fields (``{"event": "login", "email": ...}``); in text format ``event=<name>`` and its
``key=value`` pairs after the request's own (``gateway.ops.logformat.event_text``). An event
with no request of its own (a background refresh, start-up) is a line of its own on the
``gateway.audit`` logger, its fields top-level keys in JSON. A request line that carries events
also reaches the handlers of ``gateway.audit``, never twice the same handler. Callers pass only
safe fields: a token appears as its fingerprint, never itself; no field is named ``event``.
"""
from __future__ import annotations

import logging

from flask import g, has_request_context

from gateway.ops.logformat import RequestLine, event_text

logger = logging.getLogger("gateway.audit")


def event(name: str, **fields) -> None:
    if logger.isEnabledFor(logging.INFO):
        entry = {"event": name, **fields}
        events = g.get("audit_events") if has_request_context() else None
        if events is not None:  # collected for the request line (``collect`` was called)
            events.append(entry)
        else:
            _alone(entry)


def _alone(entry: dict) -> None:
    """An event on a line of its own: its text form as the message, its fields top-level in JSON."""
    logger.info(event_text(entry), extra={"audit": entry})


def collect() -> None:
    """From here on, this request's events wait for its line (``taken``)."""
    g.audit_events = []


def taken() -> list[dict]:
    """The events this request raised so far; any later one gets a line of its own."""
    events, g.audit_events = g.get("audit_events") or [], None
    return events


def request_line(log: logging.Logger, fmt: str, args: tuple) -> None:
    """The request's line on ``log`` (``fmt % args``) with the events it raised, to ``log``'s
    handlers and to those of ``gateway.audit`` it did not reach already (a root handler writes
    it once). Without events, the plain line of any Flask app."""
    events = taken()
    if not events:
        log.info(fmt, *args, stacklevel=2)
    elif not log.isEnabledFor(logging.INFO):  # request lines turned off, audit events not
        for entry in events:
            _alone(entry)
    else:
        _write(log, RequestLine(fmt, args, events))


def _write(log: logging.Logger, line: RequestLine) -> None:
    fn, lno, func, sinfo = log.findCaller(False, 3)  # request_line's caller
    record = log.makeRecord(log.name, logging.INFO, fn, lno, line, (), None, func,
                            {"events": line.events}, sinfo)
    log.handle(record)
    if logger.disabled or not logger.filter(record):
        return
    reached = _handlers(log)
    for handler in _handlers(logger):
        if handler not in reached and record.levelno >= handler.level:
            handler.handle(record)


def _handlers(log: logging.Logger) -> list:
    """The handlers a record logged on ``log`` goes to, in the order ``Logger.callHandlers`` walks."""
    found: list = []  # of handlers (none is made here: gateway.ops.logs makes them)
    while log is not None:
        found += log.handlers
        if not log.propagate:
            break
        log = log.parent
    return found


def flush(_exc=None) -> None:
    """A request ending without its line (a static file, a failed after-request hook): its
    events on lines of their own, none lost."""
    for entry in taken() if has_request_context() else ():
        _alone(entry)
