"""Revocations without Redis: one SQLite database in a private directory, shared by the host's workers.

Two ``SqliteState`` objects on one directory stand for two worker processes; where SQLite's
per-process sharing would hide a fault, the other worker is a real process (a fork or a subprocess).
The directory checks and the attacks by another local user are in ``test_state_dir.py``.
"""
import multiprocessing
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import FakeClock
from gateway.identity import hoststate
from gateway.identity.hoststate import DB_NAME, SqliteState, private_dir
from gateway.identity.revocations import HandoffUnverifiable, SecurityState
from gateway.shared import StoreUnavailable

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store_dir(tmp_path):
    return private_dir(str(tmp_path / "state"))


def pair(store_dir, clock=None):
    clock = clock or FakeClock(1000.0)
    return SqliteState(store_dir, clock=clock), SqliteState(store_dir, clock=clock), clock


def test_a_mark_by_one_worker_is_seen_by_another_at_once(store_dir):
    a, b, _ = pair(store_dir)
    assert a.marked("sid:s1") is False
    assert b.mark("sid:s1", 600) is True
    assert a.marked("sid:s1") is True


def test_a_mark_written_by_another_process_is_seen_at_once(store_dir):
    a, _, _ = pair(store_dir)
    assert a.marked("sid:s1") is False
    subprocess.run([sys.executable, "-c", (
        "from gateway.identity.hoststate import SqliteState; "
        f"assert SqliteState({store_dir!r}).mark('sid:s1', 600)")], check=True, cwd=ROOT, timeout=60)
    assert a.marked("sid:s1") is True  # no answer remembered: nothing to wait for


def test_a_mark_is_single_use_until_it_expires(store_dir):
    a, b, clock = pair(store_dir)
    assert a.mark("jti:j1", 60) is True
    assert b.mark("jti:j1", 60) is False  # the replay, in another worker
    clock.advance(59)
    assert a.marked("jti:j1") is True and a.mark("jti:j1", 60) is False
    clock.advance(1)
    assert a.marked("jti:j1") is False
    assert b.mark("jti:j1", 60) is True  # expired: a new mark, for another 60 s
    assert a.mark("jti:j1", 60) is False


def test_expired_marks_are_deleted_now_and_then(store_dir):
    a, _, clock = pair(store_dir)
    for n in range(20):
        a.mark(f"sid:old-{n}", 10)
    clock.advance(11)
    # hash() of a str differs per process: find a key of this process that purges.
    purging = next(key for key in (f"sid:new-{n}" for n in range(10000)) if hash(key) % hoststate.PURGE_EVERY == 0)
    a.mark(purging, 10)
    with sqlite3.connect(os.path.join(store_dir, DB_NAME)) as db:
        assert db.execute("SELECT key FROM marks").fetchall() == [(purging,)]


def descriptors_on(path) -> int:
    """How many of this process's descriptors are open on ``path``: one per open connection."""
    fds = "/proc/self/fd"
    return sum(os.readlink(f"{fds}/{fd}") == str(path) for fd in os.listdir(fds) if os.path.islink(f"{fds}/{fd}"))


def _mark_in_child(state, key, db):
    marked = state.mark(key, 600)
    # Its own connection, beside the inherited one it never uses (nor closes): two on the file.
    sys.exit(0 if marked and descriptors_on(db) == 2 else 3)


def test_a_worker_forked_from_the_master_opens_its_own_connection(store_dir):
    """gunicorn preloads the app in its master, then forks: no connection may cross the fork."""
    db = os.path.join(store_dir, DB_NAME)
    master = SqliteState(store_dir)  # what create_app made in the master
    assert descriptors_on(db) == 0  # nothing kept open to inherit
    assert master.marked("sid:s0") is False  # and if the master did use it...
    assert descriptors_on(db) == 1
    fork = multiprocessing.get_context("fork")
    worker = fork.Process(target=_mark_in_child, args=(master, "sid:s1", db))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert master.marked("sid:s1") is True  # the worker wrote through its own connection, into the file
    assert master.mark("sid:s2", 600) is True and descriptors_on(db) == 1  # the master's own still works


def test_threads_of_a_worker_share_its_connection_safely(store_dir):
    a, b, _ = pair(store_dir)
    failures = []

    def work(n):
        try:
            for i in range(50):
                key = f"sid:{n}-{i}"
                assert a.marked(key) is False
                assert a.mark(key, 600) is True
                assert b.marked(key) is True
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread's name
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert descriptors_on(os.path.join(store_dir, DB_NAME)) == 2  # a's and b's: one each, whatever the threads


def test_a_writer_holding_the_lock_makes_marks_unavailable_not_a_hang_and_checks_still_answer(store_dir):
    a = SqliteState(store_dir, clock=FakeClock(1000.0), timeout=0.05)
    a.mark("sid:s1", 600)
    other = sqlite3.connect(os.path.join(store_dir, DB_NAME), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, stuck
    try:
        with pytest.raises(StoreUnavailable):
            a.mark("sid:s2", 600)  # waited SQLite's busy timeout, then said so
        assert a.marked("sid:s1") is True  # WAL: readers never wait for the writer
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert a.mark("sid:s2", 600) is True


def test_the_files_it_makes_are_0600_in_a_0700_directory_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the most open umask: the modes must not come from it
    try:
        directory = private_dir(str(tmp_path / "state"))
        state = SqliteState(directory)
        state.mark("sid:s1", 600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    made = sorted(os.listdir(directory))
    assert made == [DB_NAME, DB_NAME + "-shm", DB_NAME + "-wal"]
    assert {name: stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) for name in made} == \
        dict.fromkeys(made, 0o600)


def test_no_hand_rolled_primitives_only_sqlites_own_locking():
    source = Path(hoststate.__file__).read_text()
    assert not re.search(r"\b(fcntl|flock|mmap|register_at_fork|pread|pwrite)\b|/proc|threading\.local", source)


def test_an_unverifiable_hand_off_says_when_to_retry():
    class Down:
        def mark(self, key, ttl):
            raise StoreUnavailable("OperationalError: database is locked")

    clock = FakeClock(100.0)
    state = SecurityState(Down(), retry_after=5, monotonic=clock)
    with pytest.raises(HandoffUnverifiable) as first:
        state.use_once("iss|jti", 60)
    assert first.value.retry_after == 5
    clock.advance(3.5)
    with pytest.raises(HandoffUnverifiable) as backing_off:  # not asked again: the time left
        state.use_once("iss|jti", 60)
    assert backing_off.value.retry_after == 2


def test_under_gevent_a_sign_out_waiting_for_the_stores_write_lock_holds_only_itself(gunicorn, tmp_path):
    """Something else holds the store's write lock (an operator's sqlite3 shell, a backup): a sign-out
    waits up to the busy timeout, and under the gevent worker, where one OS thread runs every request,
    it must wait in a thread of its own, not hold the worker (SECURITY.md)."""
    import time

    import requests

    from conftest import user_headers

    state = tmp_path / "state"
    server = gunicorn(workers=1, GATEWAY_STATE_DIR=str(state), GATEWAY_COOKIE_SECURE="false")
    http = requests.Session()
    who = user_headers("ann@acme.example")
    page = http.get(server.url + "/", headers=who, timeout=10)
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    holder = sqlite3.connect(state / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answer: dict = {}

    def sign_out():
        answer["status"] = http.post(server.url + "/logout", data={"csrf_token": csrf}, headers=who,
                                     allow_redirects=False, timeout=30).status_code

    signing_out = threading.Thread(target=sign_out)
    try:
        signing_out.start()
        signing_out.join(1)  # the sign-out is now waiting for the lock
        assert signing_out.is_alive(), answer
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
            assert time.monotonic() - started < 0.5
        assert signing_out.is_alive()  # still waiting: the others were served meanwhile
    finally:
        holder.rollback()
        holder.close()
    signing_out.join(10)
    assert answer["status"] == 303
    db = sqlite3.connect(state / DB_NAME)
    try:  # recorded once the lock was let go
        assert [key[:4] for key, in db.execute("SELECT key FROM marks")] == ["sid:"]
    finally:
        db.close()
