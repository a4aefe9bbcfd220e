"""A call with a deadline in all, not per read: a server that trickles its answer (a byte now
and then) resets every per-read time-out of requests, urllib3 and redis-py, so only a limit on
the whole call bounds it. For the checks at start-up and in ``gateway check``, and each token
request (``call``); for each proxied call's wait on the dashboard under gevent (``limit``).

Under gevent (gunicorn.conf.py patches the process for the default worker) the call runs in the
caller's greenlet under ``gevent.Timeout``, which raises at its next wait on a socket: nothing is
left running. Under real threads nothing can stop a thread, so the call runs in a daemon thread
that the caller stops waiting for; it ends at its own next time-out or with the process.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, ContextManager


class TimedOut(Exception):
    """The call did not finish within its deadline."""


class Busy(TimedOut):
    """Not started: too many earlier calls, given up on, still run (``call``'s ``threads``)."""


def under_gevent() -> bool:
    """Whether gevent has patched this process (gunicorn.conf.py does, first, for the gevent worker):
    the one test for "greenlets, not threads"."""
    from gevent import monkey

    return monkey.is_module_patched("socket")


def call(seconds: float, fn: Callable[..., Any], *args, threads: threading.Semaphore | None = None) -> Any:
    """``fn(*args)``'s result, or TimedOut once ``seconds`` have passed in all.

    ``threads``: under real threads, the calls of one kind that may run at once, those given up
    on and still running included (a server that trickles for ever keeps each one); past it,
    TimedOut at once instead of one more thread."""
    if under_gevent():
        with limit(seconds, True):
            return fn(*args)
    if threads is not None and not threads.acquire(blocking=False):
        raise Busy("earlier calls given up on are still running")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            outcome["error"] = exc
        finally:
            if threads is not None:
                threads.release()

    worker = threading.Thread(target=run, name="bounded-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimedOut(f"not finished within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def limit(seconds: float, gevent_server: bool) -> ContextManager:
    """The block, stopped with TimedOut once ``seconds`` have passed in all, under gevent; under real
    threads nothing (a thread per call would cost more than the calls this is for: the per-read
    time-outs are all there is). ``gevent_server``: ``under_gevent()``, asked once by the caller."""
    if not gevent_server:
        return contextlib.nullcontext()
    import gevent

    return gevent.Timeout(seconds, TimedOut(f"not finished within {seconds:g} s"))
