"""The circuit breaker toward Zipteams: one per worker process.

After ``failures`` consecutive availability failures (connection errors, time-outs, 5xx,
a malformed answer) token requests fail fast; once ``cooldown`` seconds have passed one
request is let through as a probe (not retried): a success closes the breaker, a failure
opens it for another cool-down. Configuration errors never reach it (ProtectedFetch
keeps them out).

Each process judges Zipteams for itself, with or without Redis: its state is plain memory
behind a thread lock. A breaker in Redis would add a Redis call to every token request
and a failure mode of its own (an "open" left behind by a process that died), and five
failures are cheap to learn.

An open breaker probes by itself: with tokens cached or shared, no user may need a new
token for a long time, and a breaker that waited for one would stay open. While it is
open, a background round sends one probe per cool-down, counted in the rate budget, until
the breaker closes.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

from gateway.ops import metrics
from gateway.errors import ServiceBusy

logger = logging.getLogger(__name__)
ROUND_SLACK = 0.1  # a probe round starts this long after the cool-down ends, never before


class BreakerOpen(ServiceBusy):
    """Zipteams kept failing: token requests fail fast until a probe finds it back."""
    code = "zipteams_breaker_open"
    title = "The dashboard is unavailable"
    message = "The dashboard service is failing, so we are giving it a short break."
    hint = "Try again in a minute."


class CircuitBreaker:
    """This process's breaker. ``probe_lease`` frees a probe slot whose probe never reported.

    Made in gunicorn's master (preload) and copied into every worker at fork, closed: the
    master serves no requests and starts no probe round, so nothing holds the lock when it
    forks, and each worker's copy is its own from then on.
    """
    CLOSED, HALF_OPEN, OPEN = 0, 1, 2
    NAMES = {0: "closed", 1: "half-open", 2: "open"}

    def __init__(self, failures: int, cooldown: float, *, probe_lease: float = 25.0,
                 clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[float, Callable[[], None]], None] | None = None):
        self.failures, self.cooldown, self.probe_lease = failures, cooldown, probe_lease
        self._clock = clock
        # Runs ``job`` after ``delay`` seconds; tests may capture it instead.
        self._schedule = schedule or _timer
        self.probe: Callable[[], None] | None = None  # set by the app: one real token request
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failed = 0                       # consecutive failures
        self._opened_at = 0.0
        self._probe_since: float | None = None  # when the probe in flight was let through
        self._rounds = False                   # a background probe round is pending or running
        metrics.BREAKER_STATE.set(self.CLOSED)

    # --------------------------------------------------------------- reading
    @property
    def state(self) -> int:
        with self._lock:
            return self._state_at(self._clock())

    def _state_at(self, now: float) -> int:
        if self._state == self.OPEN and now - self._opened_at >= self.cooldown:
            return self.HALF_OPEN
        return self._state

    def _set(self, state: int) -> None:
        old = self._state
        if state != old:
            # Opening and closing are worth a warning; the probes in between (every cool-down) are not.
            level = logging.WARNING if self.CLOSED in (old, state) else logging.INFO
            logger.log(level, "zipteams breaker %s -> %s", self.NAMES[old], self.NAMES[state])
            metrics.BREAKER_STATE.set(state)
        self._state = state

    def _probe_busy(self, now: float) -> bool:
        return self._probe_since is not None and now - self._probe_since < self.probe_lease

    # ------------------------------------------------------ around each call
    def before(self) -> bool:
        """Raise BreakerOpen unless a request may go now; True if it is the probe."""
        now = self._clock()
        with self._lock:
            if self._state == self.CLOSED:
                return False
            waited = now - self._opened_at
            if self._state == self.OPEN and waited < self.cooldown:
                error = BreakerOpen("breaker open", retry_after=max(1, math.ceil(self.cooldown - waited)))
            elif self._probe_busy(now):
                error = BreakerOpen("breaker half-open, probe in flight", retry_after=1)
            else:
                self._set(self.HALF_OPEN)
                self._probe_since = now
                return True
            delay = self._arm(now)  # rounds stopped by an error in one are started again here
        if delay is not None:
            self._schedule(delay, self._round)
        raise error

    def success(self, probe: bool = False) -> None:
        """Zipteams answered: closed (and the probe slot, whoever held it, is free)."""
        with self._lock:
            self._failed = 0
            self._probe_since = None
            self._set(self.CLOSED)

    def failure(self, probe: bool = False) -> None:
        now = self._clock()
        delay = None
        with self._lock:
            if probe:
                self._probe_since = None
            self._failed += 1
            if probe or self._failed >= self.failures:
                self._opened_at = now
                self._set(self.OPEN)
                delay = self._arm(now)
        if delay is not None:
            self._schedule(delay, self._round)

    def neutral(self, probe: bool = False) -> None:
        """The call said nothing about Zipteams' health (throttled, a 429, a configuration
        error, a bug): if it was the probe, free the slot so the next request may probe."""
        if probe:
            with self._lock:
                self._probe_since = None

    # ------------------------------------------------------ background probe
    def _arm(self, now: float) -> float | None:
        """Under the lock: the delay of the first probe round, if rounds should start now
        (a probe is set and none is pending); else None."""
        if self.probe is None or self._rounds:
            return None
        self._rounds = True
        logger.info("breaker open: this process now probes Zipteams in the background every %gs", self.cooldown)
        return max(0.0, self._opened_at + self.cooldown - now) + ROUND_SLACK

    def _still_open(self) -> bool:
        """Under the lock: keep probing? The rounds stop once the breaker is closed."""
        if self._state == self.CLOSED:
            self._rounds = False
        return self._rounds

    def _round(self) -> None:
        try:
            delay = self._probe_round()
        except BaseException:
            with self._lock:
                self._rounds = False  # the next request to see the breaker open starts them again
            raise
        if delay is not None:
            self._schedule(delay, self._round)

    def _probe_round(self) -> float | None:
        """One round: a probe if one is due; the delay until the next round, or None to stop."""
        now = self._clock()
        with self._lock:
            if not self._still_open():
                return None
            due = self._state_at(now) == self.HALF_OPEN and not self._probe_busy(now)
        if due:
            try:
                self.probe()
            except Exception as exc:  # noqa: BLE001 - a failed probe keeps the breaker open; next round
                logger.info("background probe toward Zipteams failed (%s)", type(exc).__name__)
        now = self._clock()
        with self._lock:
            if not self._still_open():
                return None
            # The next probe is due a cool-down after the breaker (re)opened. After a probe that
            # taught nothing (refused by our own budget, a 429), or while a user's is in flight,
            # the next round is a whole cool-down away all the same: never a spin.
            left = self._opened_at + self.cooldown - now
            if due or self._probe_busy(now):
                left = max(left, self.cooldown)
            return max(0.0, left) + ROUND_SLACK


def _timer(delay: float, job: Callable[[], None]) -> None:
    timer = threading.Timer(delay, job)
    timer.daemon = True
    timer.start()
