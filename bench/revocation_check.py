"""Per-check cost of the revocation store without Redis: the plain lookup, and the cache it does not use.

Fills a store (``gateway.identity.hoststate.SqliteState``) with 10,000 marks, then times, in one
thread: ``marked()`` as the gateway calls it (a primary-key lookup under the process's lock),
hit and miss; and the alternative the README weighs, answers kept in a ``Memo`` while SQLite's
``PRAGMA data_version`` says nothing changed (which must itself be read on every check, or a
sign-out in another worker would be missed). And the same lookup with other work between checks,
as inside a request (about 180 µs of Python between lookups), timed around each check alone
(docs/performance.md, "Issue #24"). Rounds are interleaved; prints the best and median time per
check in µs (CPU time; wall time around the check for the last).
Usage: python bench/revocation_check.py [--calls 200000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.identity.hoststate import DB_NAME, SqliteState, private_dir  # noqa: E402
from gateway.memo import Memo  # noqa: E402


def cpu_per_call(check, key: str, calls: int) -> float:
    """CPU µs of this thread per call: on a shared, busy machine wall time measures the neighbours."""
    start = time.thread_time()
    for _ in range(calls):
        check(key)
    return (time.thread_time() - start) / calls * 1e6


_OTHER = [list(range(2000)) for _ in range(20)]


def other_work() -> int:
    """About 180 µs of Python touching 40,000 objects: what a request does between two checks."""
    return sum(sum(part) for part in _OTHER)


def between_work(check, key: str, calls: int) -> float:
    """µs of ``check`` alone per call, timed around each call (wall clock: the vDSO's, no system call
    of its own) with other_work() run before each, as inside a request."""
    spent = 0.0
    for _ in range(calls):
        other_work()
        started = time.perf_counter()
        check(key)
        spent += time.perf_counter() - started
    return spent / calls * 1e6


def versioned_cache(path: str):
    """The cache the README weighs: valid while data_version is unchanged, read on every check."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    lock, memo, seen = threading.Lock(), Memo(16384), [None]

    def check(key: str) -> bool:
        nonlocal memo
        with lock:
            version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != seen[0]:
            memo, seen[0] = Memo(16384), version
        until = memo.get(key)
        if until is None:
            with lock:
                row = db.execute("SELECT until FROM marks WHERE key = ?", (key,)).fetchone()
            until = row[0] if row else 0.0
            memo.put(key, until)
        return until > time.time()

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = private_dir(os.path.join(tmp, "state"))
        store = SqliteState(directory)
        for n in range(10_000):
            store.mark(f"sid:{n}", 3600)
        cached = versioned_cache(os.path.join(directory, DB_NAME))
        calls_between = max(1, args.calls // 40)  # each call also runs other_work()
        variants = {"marked(), a revoked session": lambda: cpu_per_call(store.marked, "sid:5000", args.calls),
                    "marked(), a live session": lambda: cpu_per_call(store.marked, "sid:live", args.calls),
                    "Memo + data_version, a hit": lambda: cpu_per_call(cached, "sid:5000", args.calls),
                    "marked(), live, between work": lambda: between_work(store.marked, "sid:live", calls_between)}
        results: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.rounds):  # interleaved, so a busy moment costs every variant alike
            for label, measure in variants.items():
                results[label].append(measure())
        for label, values in results.items():
            clock = "wall, the check alone" if "between" in label else "CPU"
            print(f"{label:32s} best {min(values):5.1f} µs   median {statistics.median(values):5.1f} µs ({clock})")

if __name__ == "__main__":
    main()
