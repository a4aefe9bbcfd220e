"""Reload bookkeeping: which workers a HUP replaces, shared between gunicorn's master and its workers.

On a reload the master starts fresh workers first and then stops the old ones with the same
signal as a full stop; a stopping worker asks ``reloading()`` to tell the two apart (a reload
keeps the instance ready, a stop drains it; gateway/serving/worker.py).
"""
from __future__ import annotations

import mmap
import os
import struct

REPLACED_MAX = 256  # worker pids a reload may replace, remembered

# The workers a reload (HUP) replaces: anonymous shared memory, mapped before any worker is
# forked (the master imports this module with the worker class, gateway.serving.worker, at
# start-up, and only once: the config file's re-reading on HUP included), so a worker the
# master stops can tell a reload (it is on the list) from the instance stopping.
_REPLACED = mmap.mmap(-1, 4 * REPLACED_MAX)


def note_reload(pids) -> None:
    """In the master, from gunicorn's on_reload hook: the workers running now are being replaced."""
    pids = list(pids)[:REPLACED_MAX]
    struct.pack_into(f"{REPLACED_MAX}i", _REPLACED, 0, *(pids + [0] * (REPLACED_MAX - len(pids))))


def reloading() -> bool:
    """In a worker that is being stopped: is it one a reload replaces (rather than the instance stopping)?"""
    return os.getpid() in struct.unpack_from(f"{REPLACED_MAX}i", _REPLACED, 0)
