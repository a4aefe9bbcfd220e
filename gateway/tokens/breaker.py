"""The circuit breaker toward Zipteams: one per instance, shared by every worker.

After ``failures`` consecutive availability failures (connection errors, time-outs, 5xx,
a malformed answer) token requests fail fast; once ``cooldown`` seconds have passed one
request is let through as a probe (not retried): a success closes the breaker, a failure
opens it for another cool-down. Configuration errors never reach it (ProtectedFetch
keeps them out). Its state lives in the instance's shared memory (``gateway.tokens.instance``):
a breaker opened by one worker fails fast in all of them, and the probe that closes it
closes it for all.

An open breaker probes by itself: with tokens cached or shared, no user may need a new
token for a long time, and a breaker that waited for one would stay open. One worker of
the instance is the prober. The first that sees the breaker open takes the role and
keeps a heartbeat in the shared state; it sends one probe per cool-down, counted in the
rate budget, until the breaker closes. If it dies, the next worker to see the open
breaker takes over once the heartbeat is stale. A probe slot whose holder died is freed
when its lease (the longest a probe can take) runs out, so nothing stays "in flight" for good.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Callable

from gateway.ops import metrics
from gateway.errors import ServiceBusy
from gateway.tokens.instance import InstanceState

logger = logging.getLogger(__name__)
ROUND_SLACK = 0.1  # a probe round starts this long after the cool-down ends, never before


class BreakerOpen(ServiceBusy):
    """Zipteams kept failing: token requests fail fast until a probe finds it back."""
    code = "zipteams_breaker_open"
    title = "The dashboard is unavailable"
    message = "The dashboard service is failing, so we are giving it a short break."
    hint = "Try again in a minute."


class CircuitBreaker:
    CLOSED, HALF_OPEN, OPEN = 0, 1, 2
    NAMES = {0: "closed", 1: "half-open", 2: "open"}

    def __init__(self, failures: int, cooldown: float, *, instance: InstanceState | None = None,
                 probe_lease: float = 25.0, clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 pid: Callable[[], int] = os.getpid):
        self.failures, self.cooldown, self.probe_lease = failures, cooldown, probe_lease
        self._s = instance if instance is not None else InstanceState(window_capacity=1)
        self._clock, self._pid = clock, pid
        # Runs ``job`` after ``delay`` seconds; tests may capture it instead.
        self._schedule = schedule or _timer
        self.probe: Callable[[], None] | None = None  # set by the app: one real token request
        self._scheduled = False  # this process's probe round is pending or running
        metrics.BREAKER_STATE.set(self.CLOSED)

    # --------------------------------------------------------------- reading
    @property
    def state(self) -> int:
        with self._s.lock:
            return self._state_at(self._clock())

    def _state_at(self, now: float) -> int:
        state = self._s["breaker_state"]
        if state == self.OPEN and now - self._s["opened_at"] >= self.cooldown:
            return self.HALF_OPEN
        return state

    def _set(self, state: int) -> None:
        old = self._s["breaker_state"]
        if state != old:
            # Opening and closing are worth a warning; the probes in between (every cool-down) are not.
            level = logging.WARNING if self.CLOSED in (old, state) else logging.INFO
            logger.log(level, "zipteams breaker %s -> %s", self.NAMES[old], self.NAMES[state])
            metrics.BREAKER_STATE.set(state)
        self._s["breaker_state"] = state

    def _probe_busy(self, now: float) -> bool:
        return bool(self._s["probe_pid"]) and now - self._s["probe_since"] < self.probe_lease

    # ------------------------------------------------------ around each call
    def before(self) -> bool:
        """Raise BreakerOpen unless a request may go now; True if it is the probe."""
        now = self._clock()
        with self._s.lock:
            state = self._s["breaker_state"]
            if state == self.CLOSED:
                return False
            waited = now - self._s["opened_at"]
            if state == self.OPEN and waited < self.cooldown:
                error = BreakerOpen("breaker open", retry_after=max(1, math.ceil(self.cooldown - waited)))
            elif self._probe_busy(now):
                error = BreakerOpen("breaker half-open, probe in flight", retry_after=1)
            else:
                self._set(self.HALF_OPEN)
                self._s["probe_pid"], self._s["probe_since"] = self._pid(), now
                return True
            delay = self._claim_prober(now)  # this worker sees it open: is anyone probing?
        if delay is not None:
            self._schedule(delay, self._round)
        raise error

    def success(self, probe: bool = False) -> None:
        """Zipteams answered: closed for every worker (the probe slot, whoever held it, is free)."""
        with self._s.lock:
            self._s["breaker_failures"] = 0
            self._s["probe_pid"] = 0
            self._set(self.CLOSED)

    def failure(self, probe: bool = False) -> None:
        now = self._clock()
        delay = None
        with self._s.lock:
            if probe:
                self._s["probe_pid"] = 0
            count = self._s["breaker_failures"] + 1
            self._s["breaker_failures"] = count
            if probe or count >= self.failures:
                self._s["opened_at"] = now
                self._set(self.OPEN)
                delay = self._claim_prober(now)
        if delay is not None:
            self._schedule(delay, self._round)

    def neutral(self, probe: bool = False) -> None:
        """The call said nothing about Zipteams' health (throttled, a 429, a configuration
        error, a bug): if it was the probe, free the slot so the next request may probe."""
        if probe:
            with self._s.lock:
                self._s["probe_pid"] = 0

    # ------------------------------------------------------ background probe
    def _claim_prober(self, now: float) -> float | None:
        """Under the lock: the delay of this process's first probe round, if it is (now) the
        instance's prober and has none pending; else None."""
        if self.probe is None:
            return None
        me, holder = self._pid(), self._s["prober_pid"]
        # A live prober beats at every round; rounds are a cool-down apart plus one probe at most.
        if holder not in (0, me) and now - self._s["prober_beat"] < self.probe_lease + 2 * self.cooldown:
            return None
        if holder != me:
            logger.info("this worker now probes Zipteams while the breaker is open")
        self._s["prober_pid"], self._s["prober_beat"] = me, now
        if self._scheduled:
            return None
        self._scheduled = True
        return max(0.0, self._s["opened_at"] + self.cooldown - now) + ROUND_SLACK

    def _still_prober(self, now: float) -> bool:
        """Under the lock: keep probing? Gives the role (and the pending round) up once the
        breaker is closed or another worker has taken the role over."""
        mine = self._s["prober_pid"] == self._pid()
        if mine and self._s["breaker_state"] == self.CLOSED:
            self._s["prober_pid"] = 0
            mine = False
        if mine:
            self._s["prober_beat"] = now
        else:
            self._scheduled = False
        return mine

    def _round(self) -> None:
        try:
            delay = self._probe_round()
        except BaseException:
            with self._s.lock:
                self._scheduled = False  # the next worker or request to see the breaker open re-arms it
            raise
        if delay is not None:
            self._schedule(delay, self._round)

    def _probe_round(self) -> float | None:
        """One round: a probe if one is due; the delay until the next round, or None to stop."""
        now = self._clock()
        with self._s.lock:
            if not self._still_prober(now):
                return None
            due = self._state_at(now) == self.HALF_OPEN and not self._probe_busy(now)
        if due:
            try:
                self.probe()
            except Exception as exc:  # noqa: BLE001 - a failed probe keeps the breaker open; next round
                logger.info("background probe toward Zipteams failed (%s)", type(exc).__name__)
        now = self._clock()
        with self._s.lock:
            if not self._still_prober(now):
                return None
            # The next probe is due a cool-down after the breaker (re)opened. After a probe that
            # taught nothing (refused by our own budget, a 429), or while someone else's is in
            # flight, the next round is a whole cool-down away all the same: never a spin.
            left = self._s["opened_at"] + self.cooldown - now
            if due or self._probe_busy(now):
                left = max(left, self.cooldown)
            return max(0.0, left) + ROUND_SLACK


def _timer(delay: float, job: Callable[[], None]) -> None:
    timer = threading.Timer(delay, job)
    timer.daemon = True
    timer.start()
