"""gunicorn's threaded worker, with a graceful stop an orchestrator can rely on.

On SIGTERM a worker at once reports "not ready" (``/readyz`` answers 503, so the load
balancer stops sending), keeps serving for ``GATEWAY_DRAIN_DELAY`` seconds while it
notices, then closes its listening sockets (a new connection is refused at once instead
of hanging in a backlog nobody reads) and lets the requests in flight finish within
gunicorn's graceful timeout (``GATEWAY_GRACEFUL_TIMEOUT``).
"""
from __future__ import annotations

import logging
import threading

from gunicorn.workers.gthread import ThreadWorker

from . import ops

logger = logging.getLogger(__name__)


class GatewayWorker(ThreadWorker):
    drain_delay = 0.0  # set from the settings by gunicorn.conf.py

    def handle_exit(self, sig, frame):
        if not self.alive or ops.DRAINING.is_set():
            return
        ops.DRAINING.set()
        # From a signal handler: the stop itself runs in the worker's own loop (method_queue).
        threading.Timer(self.drain_delay, lambda: self.method_queue.defer(self._stop_accepting)).start()

    def _stop_accepting(self) -> None:
        self.alive = False
        self.set_accept_enabled(False)
        for sock in self.sockets:
            sock.close()
