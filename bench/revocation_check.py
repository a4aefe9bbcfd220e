"""Per-check cost of the revocation store without Redis: the plain lookup, and the cache it does not use.

Fills a store (``gateway.identity.hoststate.SqliteState``) with 10,000 marks, then times, in one
thread: ``marked()`` as the gateway calls it (a primary-key lookup under the process's lock),
hit and miss; and the alternative the README weighs, answers kept in a ``Memo`` while SQLite's
``PRAGMA data_version`` says nothing changed (which must itself be read on every check, or a
sign-out in another worker would be missed). And the same lookup with other work between checks,
as inside a request (about 180 µs of Python between lookups, its own time measured alone and taken
off): the check then costs several times its cost in a tight loop (docs/performance.md, "Issue #24").
Rounds are interleaved; prints the best and median CPU time per check in µs.
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


def between_requests(check):
    """``check`` with other work before it; the work's own CPU time is measured alone and taken off."""
    def checked(key: str) -> bool:
        other_work()
        return check(key)

    return checked


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
        variants = [("marked(), a revoked session", store.marked, "sid:5000"),
                    ("marked(), a live session", store.marked, "sid:live"),
                    ("Memo + data_version, a hit", versioned_cache(os.path.join(directory, DB_NAME)), "sid:5000"),
                    ("marked(), live, between work", between_requests(store.marked), "sid:live")]
        results: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        calls_between = max(1, args.calls // 40)  # each call also runs other_work()
        for _ in range(args.rounds):  # interleaved, so a busy moment costs every variant alike
            for label, check, key in variants:
                if check.__name__ == "checked":
                    alone = cpu_per_call(lambda _key: other_work(), key, calls_between)
                    results[label].append(cpu_per_call(check, key, calls_between) - alone)
                else:
                    results[label].append(cpu_per_call(check, key, args.calls))
        for label, values in results.items():
            print(f"{label:32s} best {min(values):5.1f} µs   median {statistics.median(values):5.1f} µs (CPU)")

if __name__ == "__main__":
    main()
