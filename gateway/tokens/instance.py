"""State shared by every worker of one instance: one small shared memory map and one lock.

gunicorn loads the app once in its master (``preload_app`` in gunicorn.conf.py) and forks
the workers from it, so an anonymous shared mapping made while the app is created is
inherited by every worker: one breaker, one 429 back-off and one rate window per instance,
not one per worker. In a single process (the demo, the tests' Flask client) it is simply
that process's state. (Without preload each worker would map its own; the shipped
configuration preloads.)

The lock must survive a worker killed with SIGKILL in the middle of an update, which a
``multiprocessing.Lock`` does not (its holder's death leaves it held for good). So it is a
``flock`` on a file each process opens for itself (the kernel drops a flock when its
holder's descriptor closes, death included), plus a thread lock, because threads of one
process share that descriptor and a flock does not keep them apart. Every update under it
is a handful of memory writes.
"""
from __future__ import annotations

import atexit
import fcntl
import mmap
import os
import struct
import tempfile
import threading
import weakref

# One 8-byte cell each; the rate window's ring of send times follows them.
FIELDS = ("breaker_state", "breaker_failures", "opened_at", "probe_pid", "probe_since",
          "prober_pid", "prober_beat", "backoff_until", "window_next")
_INTS = {"breaker_state", "breaker_failures", "probe_pid", "prober_pid", "window_next"}
_OFFSET = {name: 8 * i for i, name in enumerate(FIELDS)}
_RING = 8 * len(FIELDS)


class InstanceLock:
    """Excludes the threads of this process and every other process of the instance."""

    def __init__(self):
        fd, path = tempfile.mkstemp(prefix="gateway-instance-", suffix=".lock")
        self._fd = fd
        # Each process opens the file anew: a flock belongs to an open file description, and
        # one inherited across fork would be the same description in every worker (no exclusion).
        # Through /proc the file needs no name, so nothing is left behind in the temp directory.
        if os.path.exists(f"/proc/self/fd/{fd}"):
            os.unlink(path)
            self._path = f"/proc/self/fd/{fd}"
        else:
            self._path = path
            creator = os.getpid()
            atexit.register(lambda: os.getpid() == creator and _remove(path))
        self._threads = threading.Lock()
        self._pid = -1
        self._own = -1
        _FORKABLE.add(self)

    def _after_fork(self) -> None:
        # A lock held by a thread of the parent at fork time would never be released here.
        self._threads = threading.Lock()
        self._pid, self._own = -1, -1

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self._own = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
            self._pid = os.getpid()
        return self._own

    def __enter__(self) -> "InstanceLock":
        self._threads.acquire()
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self._own, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_FORKABLE: "weakref.WeakSet[InstanceLock]" = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [lock._after_fork() for lock in list(_FORKABLE)])
_LOCK: InstanceLock | None = None
_LOCK_GUARD = threading.Lock()


def instance_lock() -> InstanceLock:
    """The one lock of this process tree (every app made in it shares it: updates are tiny)."""
    global _LOCK
    with _LOCK_GUARD:
        if _LOCK is None:
            _LOCK = InstanceLock()
        return _LOCK


class InstanceState:
    """The cells and the rate window every worker of this instance reads and writes.

    Read and write cells only inside ``with state.lock:``. Times are whatever clock the
    caller uses for that cell (monotonic for the breaker, wall time for the window and
    the back-off): both are the same in every process of one host.
    """

    def __init__(self, window_capacity: int = 4096):
        self.capacity = max(1, window_capacity)
        self._map = mmap.mmap(-1, _RING + 8 * self.capacity, flags=mmap.MAP_SHARED)
        self.lock = instance_lock()

    def __getitem__(self, name: str):
        return struct.unpack_from("<q" if name in _INTS else "<d", self._map, _OFFSET[name])[0]

    def __setitem__(self, name: str, value) -> None:
        struct.pack_into("<q" if name in _INTS else "<d", self._map, _OFFSET[name], value)

    # ---------------------------------------------------------------- the window
    def admit(self, limit: int, now: float) -> float:
        """0 if fewer than ``limit`` sends fall in the last minute (and counts one now), else
        the seconds until one leaves it. A ring of the latest send times: the limit-th latest
        is older than a minute exactly when fewer than ``limit`` are inside it."""
        limit = min(max(1, limit), self.capacity)
        with self.lock:
            sent = self["window_next"]
            if sent >= limit:
                oldest = struct.unpack_from("<d", self._map, _RING + 8 * ((sent - limit) % self.capacity))[0]
                if oldest > now - 60:
                    return max(0.001, oldest + 60 - now)
            struct.pack_into("<d", self._map, _RING + 8 * (sent % self.capacity), now)
            self["window_next"] = sent + 1
            return 0.0
