"""Audit events: who signed in, which team they were given and why, which token was used.

One log line per event on the ``gateway.audit`` logger. In JSON format the
fields are top-level keys (``"event": "login", "email": ...``); in text format
they follow the event name as ``key=value``. Callers pass only safe fields: a
token appears as its fingerprint, never itself.
"""
from __future__ import annotations

import logging

logger = logging.getLogger("gateway.audit")


def event(name: str, **fields) -> None:
    if logger.isEnabledFor(logging.INFO):
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        logger.info("%s %s", name, text, extra={"audit": {"event": name, **fields}})
