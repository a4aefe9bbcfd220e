"""Standard output that cannot stall a gevent worker: a full pipe costs log lines, not the worker.

Under gunicorn's gevent worker every request, and the log writer (gateway/ops/logs.py), share one
OS thread. A write to a pipe whose reader stalled (a log collector that stopped) blocks that
thread, and so every request of the worker, until the reader comes back. So each gevent worker
gives its standard output a file description of its own in non-blocking mode: a write that would
block fails at once instead, and the log writer counts the lines as dropped (as it does for a
closed stdout) and says so once writing works again. The master and the other workers keep the
shared description as it was (O_NONBLOCK is a property of the description, so it is reopened
through /proc rather than set on the inherited one).
"""
from __future__ import annotations

import logging
import os
import stat

logger = logging.getLogger(__name__)


def make_own_nonblocking(fd: int = 1) -> bool:
    """Give ``fd`` (a pipe) a non-blocking file description of this process's own; True if done."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False  # a file or a terminal does not stall like a pipe; a socket cannot be reopened
        own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        logger.warning("standard output left blocking (%s): a stalled log reader would stall this worker", exc)
        return False
    os.dup2(own, fd)  # a plain dup2 leaves fd 1 inheritable, as it was
    os.close(own)
    return True
