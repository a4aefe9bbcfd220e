"""Request ids: generated per request (or a trusted proxy's), on every log line of it."""
from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import uuid

from flask import g, has_request_context

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")  # what a trusted proxy's X-Request-Id may be


class _RequestIds:
    """Unique ids without reading randomness per request: a random per-process prefix and a counter
    (the pid is compared on each, so a forked worker, however forked, starts its own sequence)."""

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
