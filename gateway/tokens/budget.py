"""How many token requests may go to Zipteams, and how many threads may wait for them.

The rate budget (``ZIPTEAMS_MAX_RPM``, or ``auto`` sized from the rules) is a sliding
one-minute window: in Redis, shared by every process of every instance, when there is
one; otherwise each worker process keeps its own window of an equal share. A part of
either is kept for refreshes of tokens in use. The gate caps the threads of one worker
that fetch or wait for a fetch, so the rest keep serving users whose token is cached.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from typing import Callable

from gateway.errors import ServiceBusy
from gateway.ops import metrics
from gateway.shared import Shared

logger = logging.getLogger(__name__)

MAX_LIMITER_WAIT = 2.0    # a user waits this long at most for a rate-limit slot
REFRESH_RESERVE = 0.2     # share of the rate window only refreshes of tokens in use may take
AUTO_MIN_RPM = 30         # the auto budget never goes below the old fixed default
FETCHES_PER_TEAM = 2      # auto: a first token and one renewal per team and fetching process, per minute
WINDOW = 60.0             # seconds of the sliding window
GATE_PATIENCE = 2.0       # as long as a user waits for a rate-limit slot; a healthy Zipteams answers well within it
GATE_RETRY_AFTER = 5


class ZipteamsThrottled(ServiceBusy):
    """We refused to send a token request, to stay inside Zipteams' limits."""
    code = "zipteams_throttled"


class ZipteamsQueueFull(ServiceBusy):
    """Too many of this worker's threads already wait for Zipteams: keep the rest for cached users."""
    code = "zipteams_queue_full"
    message = "Many people are waiting for the dashboard service right now."


# ------------------------------------------------------------------ budget
def budget_per_minute(setting: int | str, *, teams: int, processes: int, cooldown: float) -> int:
    """ZIPTEAMS_MAX_RPM as a number: the setting itself, or the ``auto`` size.

    auto: in every process that fetches for itself (each worker without Redis, one fetch
    for all with it), every team's first token and one renewal in the same minute plus
    one breaker probe per cool-down (each such process has its own breaker); never below
    AUTO_MIN_RPM. A fifth of it is kept for refreshes (``REFRESH_RESERVE``), so first
    tokens get the rest: a cold start warms every team within a minute. Zipteams
    publishes no limit (its 429 only says "try again in 60 seconds"), so this sizes for
    what the rules need rather than for a number we don't know.
    """
    if setting != "auto":
        return int(setting)
    probes = math.ceil(60 / cooldown)
    return max(AUTO_MIN_RPM, (FETCHES_PER_TEAM * teams + probes) * processes)


def process_share(per_minute: int, workers: int) -> int:
    """Each worker's part of the budget when it keeps its own window (no Redis): an equal
    share, rounded down so the workers together never exceed it, but at least 1."""
    return max(1, per_minute // max(1, workers))


def first_token_limit(limit: int) -> int:
    """The part of a minute's budget that first tokens (not refreshes) may use."""
    if limit < 2:
        return limit
    return max(1, limit - max(1, math.ceil(limit * REFRESH_RESERVE)))


class RateLimiter:
    """A one-minute sliding window toward Zipteams, and the 429 back-off.

    With Redis configured and answering, one window and one back-off in Redis for every
    process of every instance (``per_minute`` in all). Otherwise this process's own: a
    window of ``process_share(per_minute, workers)`` and its own back-off, behind a
    thread lock. ``per_minute`` may be a function: the auto budget follows the team count
    when the rules are reloaded.

    Made in gunicorn's master (preload) and copied into every worker at fork, empty: the
    master serves no requests, so nothing holds the lock when it forks.
    """

    def __init__(self, per_minute: int | Callable[[], int], *, shared: Shared | None, name: str,
                 workers: int = 1, clock: Callable[[], float] = time.time):
        self._per_minute = per_minute if callable(per_minute) else (lambda: per_minute)
        self._shared, self._name, self._clock = shared, name, clock
        self.workers = max(1, workers)
        self._lock = threading.Lock()
        self._sent: collections.deque[float] = collections.deque()  # this process's sends, oldest first
        self._backoff_until = 0.0

    @property
    def per_minute(self) -> int:
        """The whole budget, every worker's together."""
        return self._per_minute()

    @property
    def share(self) -> int:
        """What this process may send in a minute from its own window (without Redis)."""
        return process_share(self.per_minute, self.workers)

    def admit(self, refresh: bool = False) -> float:
        """0 if a request may go now (and counts it), else the seconds to wait.

        A part of the window (``REFRESH_RESERVE``) is kept for refreshes of tokens in use:
        a burst of cold requests (a restart, a new team's first visits) never starves the
        refresh that keeps every open dashboard of a team working.
        """
        if self._shared is not None:
            limit = self.per_minute
            wait = self._shared.admit(self._name, limit if refresh else first_token_limit(limit))
            if wait is not None:
                return wait
        limit = self.share
        return self._admit_here(limit if refresh else first_token_limit(limit), self._clock())

    def _admit_here(self, limit: int, now: float) -> float:
        with self._lock:
            sent = self._sent
            while sent and sent[0] <= now - WINDOW:
                sent.popleft()
            if len(sent) >= limit:
                # A slot frees when the send ``limit`` places from the newest leaves the minute.
                return max(0.001, sent[len(sent) - limit] + WINDOW - now)
            sent.append(now)
            return 0.0

    # ------------------------------------------------------------- 429 back-off
    def back_off(self, seconds: float) -> None:
        """Zipteams answered 429: no token request from this process (or any, with Redis) for ``seconds``."""
        until = self._clock() + seconds
        with self._lock:
            self._backoff_until = max(self._backoff_until, until)
        if self._shared is not None:
            self._shared.set_backoff(self._name, seconds)

    def backoff_left(self) -> float:
        with self._lock:
            until = self._backoff_until
        if self._shared is not None:
            until = max(until, self._shared.backoff_until(self._name))
        return until - self._clock()


# ------------------------------------------------------------ thread cap
class FetchGate:
    """At most ``limit`` threads of this process inside a token fetch or waiting on one.

    A stalled Zipteams would otherwise hold every thread, and users whose token is cached
    would queue behind those waiting for one. Past the limit a thread waits for a place
    only while the fetches ahead of it are young (a healthy Zipteams answers well within
    ``patience``, as in a cold start's burst of first visits); once they have run longer
    than that, Zipteams is slow, waiting would hold one more thread, and the request gets
    a fast 503 with Retry-After instead.
    """

    def __init__(self, limit: int, *, patience: float = GATE_PATIENCE,
                 monotonic: Callable[[], float] = time.monotonic):
        self.limit, self.patience, self._monotonic = max(1, limit), patience, monotonic
        self._cond = threading.Condition()
        self._inside: dict[int, float] = {}  # ticket -> when its holder entered
        self._tickets = itertools.count()

    def enter(self) -> int:
        with self._cond:
            arrived = self._monotonic()
            while len(self._inside) >= self.limit:
                now = self._monotonic()
                waited, oldest = now - arrived, now - min(self._inside.values())
                if max(waited, oldest) >= self.patience:
                    metrics.ZIPTEAMS_REFUSED.labels("threads").inc()
                    raise ZipteamsQueueFull(f"{len(self._inside)} threads already wait for Zipteams",
                                            retry_after=GATE_RETRY_AFTER)
                self._cond.wait(self.patience - max(waited, oldest))
            ticket = next(self._tickets)
            self._inside[ticket] = self._monotonic()
            return ticket

    def leave(self, ticket: int) -> None:
        with self._cond:
            self._inside.pop(ticket, None)
            self._cond.notify()
