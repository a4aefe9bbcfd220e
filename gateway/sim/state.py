"""The stand-in's shared state: counters, injected faults, rate-limit windows and the journals.

One ``SimState`` per stand-in app, read and written by its token API, its dashboard and the
``/_sim/`` control endpoints (``gateway.sim``), and drained by the tests' leak oracle.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Callable


class SimState:
    """Counters, injected faults and rate-limit windows, shared by all threads.

    Two journals outlive ``reset()``: every dashboard request (method, raw path,
    query, headers, cookies) and every minted token. The tests' leak oracle drains
    them after each test, so they stay small; outside tests they are capped.
    """

    JOURNAL_CAP = 20000

    class _Minted(set):
        """The live token set; each addition is also journaled, since ``reset()`` replaces the set."""

        def __init__(self, journal: collections.deque):
            super().__init__()
            self._journal = journal

        def add(self, value) -> None:
            if value not in self:
                self._journal.append(value)
            super().add(value)

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.lock = threading.Lock()
        self.requests: collections.deque = collections.deque(maxlen=self.JOURNAL_CAP)
        self.requests_seen = 0
        self.mint_journal: collections.deque = collections.deque(maxlen=self.JOURNAL_CAP)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.token_requests = 0
            self.by_subtenant: collections.Counter = collections.Counter()
            self.statuses: collections.Counter = collections.Counter()
            self.dashboard_paths: list[str] = []
            self.faults: list[dict] = []
            self.dashboard_faults: list[dict] = []  # {"dashboard_status", "path"?, "count"}
            self.windows: dict[str, collections.deque] = {}
            self.minted: set[str] = self._Minted(self.mint_journal)
            self.revoked: set[str] = set()
            self.first_seen: dict[tuple[str, str], str] = {}
            self.last_token: dict[tuple[str, str], str] = {}

    def journal_request(self, entry: dict) -> None:
        with self.lock:
            self.requests_seen += 1
            entry["seq"] = self.requests_seen
            self.requests.append(entry)

    def drain_requests(self) -> tuple[list[dict], int]:
        """The journaled requests, emptied; and the sequence number of the last one ever seen.

        A gap between the last drained ``seq`` and the first one here means the cap dropped some.
        """
        with self.lock:
            entries = list(self.requests)
            self.requests.clear()
            return entries, self.requests_seen

    def drain_minted(self) -> list[str]:
        with self.lock:
            tokens = list(self.mint_journal)
            self.mint_journal.clear()
            return tokens

    def next_fault(self) -> dict | None:
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults[0]
            fault["count"] -= 1
            if fault["count"] <= 0:
                self.faults.pop(0)
            return dict(fault)

    def next_dashboard_fault(self, path: str) -> dict | None:
        """The first pending dashboard fault for ``path`` (each names one; the entry page by default), used once."""
        with self.lock:
            for fault in self.dashboard_faults:
                if fault.get("path", path) == path:
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self.dashboard_faults.remove(fault)
                    return dict(fault)
            return None

    def rate_limited(self, key: str, limit: int | None) -> int:
        """0 if the request may pass, else the seconds until it may."""
        if not limit:
            return 0
        now = self.clock()
        with self.lock:
            window = self.windows.setdefault(key, collections.deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= limit:
                return max(1, math.ceil(window[0] + 60 - now))
            window.append(now)
            return 0
