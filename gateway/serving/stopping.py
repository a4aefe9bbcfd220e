"""The graceful stop and the reload, through gunicorn's public hooks (called from gunicorn.conf.py).

Stop (SIGTERM to the master): the master closes its copy of the listener and sends SIGTERM to
every worker. A worker then reports "not ready" at once (``/readyz`` 503, so the load balancer
stops sending), keeps serving for ``GATEWAY_DRAIN_DELAY`` seconds while it notices, and only
then lets gunicorn stop it (``worker.alive = False``): gunicorn closes the worker's listener, so
a new connection is refused at once, and gives the requests in flight ``graceful_timeout``
(``GATEWAY_GRACEFUL_TIMEOUT``) to finish.

Reload (SIGHUP to the master): gunicorn starts fresh workers and then stops the old ones with
the same SIGTERM. So that a reload keeps the instance ready, the master's ``on_reload`` hook
first sends the workers being replaced SIGUSR2, which marks them: their SIGTERM then stops them
at once, without the drain. A worker still booting when marked has no requests to lose.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

from gateway.admin import health
from gateway.bounded import under_gevent

logger = logging.getLogger(__name__)

REPLACED_SIGNAL = signal.SIGUSR2


def mark_replaced(pids) -> None:
    """In the master (``on_reload``): tell the workers running now that a reload replaces them."""
    for pid in list(pids):
        try:
            os.kill(pid, REPLACED_SIGNAL)
        except ProcessLookupError:
            pass


def _later(seconds: float, action) -> None:
    """Run ``action`` in ``seconds`` without blocking: under gevent a signal handler runs in the
    event loop, where waiting (as ``threading.Timer.start`` does) is an error."""
    if under_gevent():
        import gevent

        gevent.spawn_later(seconds, action)
        return
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def install(worker, drain_delay: float) -> None:
    """In a worker (``post_worker_init``): SIGTERM drains first; SIGUSR2 marks a reload."""
    replaced = threading.Event()

    def stop_serving() -> None:
        worker.alive = False  # gunicorn's own loop closes the listener and waits for requests in flight

    def on_replaced(signum, frame) -> None:
        replaced.set()

    def on_term(signum, frame) -> None:
        if not worker.alive or health.DRAINING.is_set():
            return
        if replaced.is_set():
            stop_serving()  # fresh workers already share the listener: the instance stays ready
            return
        health.DRAINING.set()
        _later(drain_delay, stop_serving)

    signal.signal(REPLACED_SIGNAL, on_replaced)
    signal.signal(signal.SIGTERM, on_term)
    # As gunicorn does for its own handler: a stop must not break a request's system calls.
    signal.siginterrupt(signal.SIGTERM, False)
    signal.siginterrupt(REPLACED_SIGNAL, False)
