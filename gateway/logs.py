"""Logging: one line per event to stdout, a request id on every line and response.

``GATEWAY_LOG_FORMAT=text`` for people, ``json`` for log pipelines. The request
id comes from ``X-Request-Id`` when a trusted proxy sent a sane one, otherwise
it is generated; it is echoed in the response and on every error page. Access
lines name the path, never the query string.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import threading
import time
import uuid

from flask import Blueprint, Flask, current_app, g, has_request_context, request

from . import metrics
from .auth import peer_is_trusted

logger = logging.getLogger(__name__)
bp = Blueprint("logs", __name__)

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


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        fields = getattr(record, "audit", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Install (or replace) the gateway's stdout handler on the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    handler.setFormatter(formatter)
    root.addHandler(handler)
    logging.getLogger("gateway").setLevel(level)
    if root.level > logging.getLevelName(level):
        root.setLevel(level)
    # urllib3 logs full URLs at DEBUG; iframe-mode URLs may carry a token.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def gunicorn_logconfig(fmt: str, level: str) -> dict:
    """gunicorn's own log lines in the same format as ours (for gunicorn.conf.py)."""
    formatter = {"()": "gateway.logs.JsonFormatter"} if fmt == "json" else {
        "format": "%(asctime)s %(levelname)s %(name)s [-] %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": formatter},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "gateway",
                                "stream": "ext://sys.stdout"}},
        # The app installs its own root handler (configure()); gunicorn must not add one.
        "root": {"level": "INFO", "handlers": []},
        "loggers": {"gunicorn.error": {"handlers": ["stdout"], "level": level.upper(), "propagate": False},
                    "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False}},
    }


def init_app(app: Flask) -> None:
    if not app.config.get("TESTING"):
        configure(app.config["GATEWAY_LOG_LEVEL"], app.config["GATEWAY_LOG_FORMAT"])
    app.register_blueprint(bp)


@bp.before_app_request
def assign_request_id() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    if incoming and _REQUEST_ID.fullmatch(incoming) and peer_is_trusted(
            request.remote_addr, current_app.config["GATEWAY_TRUSTED_PROXIES"]):
        g.request_id = incoming
    else:
        g.request_id = new_request_id()


@bp.after_app_request
def log_request(response):
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    if request.endpoint != "static":
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.endpoint or "unmatched"
        metrics.REQUESTS.labels(route, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(route).observe(elapsed)
        logger.info("request method=%s path=%s endpoint=%s status=%s ms=%.1f",
                    request.method, request.path[:200], route, response.status_code, elapsed * 1000)
    return response
