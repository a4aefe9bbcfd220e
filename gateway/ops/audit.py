"""Audit events: who signed in, which team they were given and why, which token was used.

One log line per event on the ``gateway.ops.audit`` logger. In JSON format the
fields are top-level keys (``"event": "login", "email": ...``); in text format
they follow the event name as ``key=value``. Callers pass only safe fields: a
token appears as its fingerprint, never itself.
"""
from __future__ import annotations

import logging

from gateway.ops import logs

logger = logging.getLogger("gateway.audit")


def event(name: str, **fields) -> None:
    logs.info(logger, "%s %s", name, _Fields(fields), fields={"event": name, **fields})


class _Fields:
    """key=value text, built only if a text formatter asks for the message."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict):
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items())
