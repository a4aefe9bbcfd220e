"""gateway.bounded: a deadline in all, under threads (this process) and under gevent (a subprocess)."""
import os
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from gateway import bounded


def test_a_call_that_finishes_gives_its_value_or_its_error():
    assert bounded.call(5, lambda a, b: a + b, 1, 2) == 3
    with pytest.raises(KeyError):
        bounded.call(5, lambda: {}["missing"])


def test_a_call_that_does_not_finish_is_given_up_at_its_deadline():
    never = threading.Event()
    with pytest.raises(bounded.TimedOut):
        bounded.call(0.05, never.wait)


def test_calls_given_up_on_count_against_their_threads_until_they_end():
    # Under real threads a call given up on runs on; with ``threads`` they are capped, and past
    # the cap the next is refused at once instead of starting one more thread.
    release, threads = threading.Event(), threading.BoundedSemaphore(2)
    for _ in range(2):
        with pytest.raises(bounded.TimedOut) as given_up:
            bounded.call(0.05, release.wait, threads=threads)
        assert not isinstance(given_up.value, bounded.Busy)
    with pytest.raises(bounded.Busy):
        bounded.call(5, lambda: "never run", threads=threads)
    release.set()  # the two still running end, and give their places back
    for _ in range(2):
        assert threads.acquire(timeout=5)
    threads.release()
    threads.release()
    assert bounded.call(5, lambda: "ran", threads=threads) == "ran"


UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import socket
from gateway import bounded
a, b = socket.socketpair()
try:
    bounded.call(0.05, a.recv, 1)   # nothing ever comes
except bounded.TimedOut:
    print("timed out")
"""


def test_under_gevent_the_call_is_stopped_in_its_own_greenlet():
    out = subprocess.run([sys.executable, "-c", UNDER_GEVENT], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.stdout.strip() == "timed out", out.stderr
