"""Long dashboard answers: capped per worker and per user.

A proxied answer is written until the client has read it. An export read slowly, or not
at all, keeps its greenlet (or thread, under GATEWAY_WORKER=gthread), its upstream
connection and its buffers for as long as each write makes progress within
GATEWAY_CLIENT_TIMEOUT: a handful of them could pin a worker's memory and upstream pool.
So long answers (a download, an event stream, anything over a megabyte) take one of
``GATEWAY_DOWNLOADS_PER_WORKER`` slots, at most ``GATEWAY_DOWNLOADS_PER_USER`` of them per
user; beyond that the answer is a 503 the user can retry. Short answers (pages, JSON) are
never refused for it.
"""
from __future__ import annotations

import collections
import threading

from gateway.ops import metrics
from gateway.errors import ServiceBusy

LONG_BODY = 1024 * 1024


class TooManyDownloads(ServiceBusy):
    code = "downloads_busy"
    title = "Too many downloads at once"
    message = "Several downloads are already running, so this one cannot start yet."
    hint = "Wait for a download to finish, then try again."


def is_long(headers) -> bool:
    """Whether an answer of this shape may keep its thread writing for long."""
    length = headers.get("Content-Length", "")
    if length.isdigit():
        return int(length) > LONG_BODY
    content_type = headers.get("Content-Type", "").lower()
    return "attachment" in headers.get("Content-Disposition", "").lower() or \
        content_type.startswith("text/event-stream")


class Slots:
    """How many long answers run now, in all and per user (one worker process)."""

    def __init__(self, per_worker: int, per_user: int):
        self.per_worker, self.per_user = per_worker, per_user
        self._lock = threading.Lock()
        self._running = 0
        self._by_user: collections.Counter = collections.Counter()

    def take(self, user: str):
        """A release function, or TooManyDownloads when a share is used up."""
        with self._lock:
            if self._by_user[user] >= self.per_user:
                limit = "user"
            elif self._running >= self.per_worker:
                limit = "worker"
            else:
                self._running += 1
                self._by_user[user] += 1
                return _Release(self, user)
        metrics.DOWNLOADS_REFUSED.labels(limit).inc()
        raise TooManyDownloads(f"{limit} download limit reached", retry_after=5)

    def give_back(self, user: str) -> None:
        with self._lock:
            self._running -= 1
            self._by_user[user] -= 1
            if not self._by_user[user]:
                del self._by_user[user]


class _Release:
    """Gives the slot back once, however often it is called (close may be called twice)."""

    __slots__ = ("_slots", "_user")

    def __init__(self, slots: Slots, user: str):
        self._slots, self._user = slots, user

    def __call__(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.give_back(self._user)
