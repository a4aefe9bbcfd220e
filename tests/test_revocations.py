"""Revocations without Redis: one SQLite file per host, answers remembered while nothing changes.

Two ``SqliteState`` objects on one file stand for two worker processes (or two instances on one
host): each keeps its own remembered answers, as a process does.
"""
import errno
import itertools
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from conftest import FakeClock
from gateway.identity.hoststate import CHECK_SECONDS, SqliteState

ROOT = Path(__file__).resolve().parent.parent


def pair(tmp_path, path_b=None):
    clock = FakeClock(1000.0)  # the wall clock marks expire by
    monotonic = FakeClock(50.0)  # the clock remembered answers and counter checks go by
    db = tmp_path / "state.db"
    a = SqliteState(str(db), clock=clock, monotonic=monotonic)
    b = SqliteState(str(path_b or db), clock=clock, monotonic=monotonic)
    return a, b, monotonic


def test_a_mark_in_another_process_is_seen_at_once(tmp_path):
    a, b, _ = pair(tmp_path)
    assert a.marked("sid:s1") is False  # remembered: not revoked
    assert b.mark("sid:s1", 600) is True
    assert a.marked("sid:s1") is True


def test_through_a_symlinked_path_too(tmp_path):
    link = tmp_path / "link.db"
    os.symlink(tmp_path / "state.db", link)
    a, b, _ = pair(tmp_path, path_b=link)
    assert a.marked("sid:s1") is False
    b.mark("sid:s1", 600)
    assert a.marked("sid:s1") is True


def test_a_removed_counter_file_delays_a_revocation_by_a_second_at_most(tmp_path):
    """Found by review: a temp cleaner removing <db>.changes made logouts invisible to the other workers."""
    a, b, monotonic = pair(tmp_path)
    assert a.marked("sid:s1") is False
    os.unlink(tmp_path / "state.db.changes")
    assert b.mark("sid:s1", 600) is True  # recorded, and a new counter file made
    monotonic.advance(CHECK_SECONDS + 0.01)
    assert a.marked("sid:s1") is True


def test_a_writer_that_never_moves_the_counter_is_seen_within_a_check_interval(tmp_path):
    a, _, monotonic = pair(tmp_path)
    assert a.marked("sid:s1") is False
    with sqlite3.connect(tmp_path / "state.db") as other:  # an older instance on the same file
        other.execute("INSERT INTO marks (key, until) VALUES (?, ?)", ("sid:s1", 2000.0))
    assert a.marked("sid:s1") is False  # remembered for now...
    monotonic.advance(CHECK_SECONDS + 0.01)
    assert a.marked("sid:s1") is True  # ...not for longer


def test_an_answer_outlives_the_check_interval_while_nothing_is_written(tmp_path, monkeypatch):
    """Returning users come back less often than once a second: their answers must still be there."""
    a, _, monotonic = pair(tmp_path)
    assert a.marked("sid:s1") is False
    monotonic.advance(CHECK_SECONDS * 30)
    asked = []
    real = a._connect

    def counting():
        db = real()
        return type("Db", (), {"execute": lambda _, sql, *args: (asked.append(sql), db.execute(sql, *args))[1]})()

    monkeypatch.setattr(a, "_connect", counting)
    assert a.marked("sid:s1") is False
    assert asked == ["PRAGMA data_version"]  # the once-a-second check, not the mark itself


def test_a_counter_file_made_again_with_the_same_count_still_reads_as_a_change(tmp_path):
    a, b, monotonic = pair(tmp_path)
    assert b.mark("sid:other", 600) is True  # the count is 1
    assert a.marked("sid:s1") is False
    os.unlink(tmp_path / "state.db.changes")
    with sqlite3.connect(tmp_path / "state.db") as other:  # and a write that moves nothing but SQLite
        other.execute("INSERT INTO marks (key, until) VALUES (?, ?)", ("sid:s1", 2000.0))
    b._changes.bump()  # a new file, counted to 1 again
    monotonic.advance(CHECK_SECONDS + 0.01)
    a._version = (monotonic(), a._version[1])  # as if SQLite's count had just been read
    assert a.marked("sid:s1") is True


def test_a_mark_whose_counter_could_not_move_is_seen_by_its_own_process(tmp_path, monkeypatch):
    a, _, _ = pair(tmp_path)
    assert a.marked("sid:s1") is False

    def broken():
        raise OSError("read-only file system")

    monkeypatch.setattr(a._changes, "bump", broken)
    assert a.mark("sid:s1", 600) is True
    assert a.marked("sid:s1") is True


# ------------------------------------------------ the file removed, replaced or damaged
# Found by review on real workers: each of these left logouts invisible to a worker for good.
def alone(tmp_path):
    """One process's state, alone in this process: as in a worker, its connection is the only one
    to the file here (connections of one process share what SQLite keeps per file)."""
    monotonic = FakeClock(50.0)
    return SqliteState(str(tmp_path / "state.db"), clock=FakeClock(1000.0), monotonic=monotonic), monotonic



def _mark_in_another_process(db, key):
    """A mark written by a fresh process (another instance, a restarted worker): SQLite shares a
    file's locks and shared memory between the connections of one process, so this must not be one."""
    subprocess.run([sys.executable, "-c", (
        "import sys; from gateway.identity.hoststate import SqliteState; "
        f"assert SqliteState({str(db)!r}).mark({key!r}, 600)")], check=True, cwd=ROOT, timeout=60)


def _remove_database(db):
    for suffix in ("", "-wal", "-shm"):
        (db.parent / (db.name + suffix)).unlink(missing_ok=True)


def test_a_removed_database_is_made_again_and_its_marks_seen(tmp_path):
    a, monotonic = alone(tmp_path)
    assert a.marked("sid:s1") is False
    _remove_database(tmp_path / "state.db")  # a temp cleaner: the default path is in the temp directory
    _mark_in_another_process(tmp_path / "state.db", "sid:s1")  # e.g. a restarted worker's logout
    monotonic.advance(CHECK_SECONDS + 0.01)
    assert a.marked("sid:s1") is True


def test_a_worker_forked_after_the_database_was_removed_still_has_its_table(tmp_path):
    db = tmp_path / "state.db"
    master = SqliteState(str(db))  # gunicorn's master (the app is preloaded), before the workers fork
    _remove_database(db)
    fork = multiprocessing.get_context("fork")
    worker = fork.Process(target=lambda: sys.exit(0 if master.mark("sid:s1", 600) else 3))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0  # not "no such table: marks" (a StoreUnavailable: logouts not recorded)
def test_a_symlink_pointed_elsewhere_later_does_not_split_the_workers(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    link = tmp_path / "state.db"
    os.symlink(tmp_path / "one" / "state.db", link)
    master = SqliteState(str(link))
    os.remove(link)
    os.symlink(tmp_path / "two" / "state.db", link)
    assert master.path == str(tmp_path / "one" / "state.db")  # what every worker forked from it opens


def test_a_truncated_counter_file_reads_as_a_change_not_a_crash(tmp_path):
    # In a child process: reading a memory map of a truncated file kills the process (SIGBUS).
    db = tmp_path / "state.db"
    code = ("from gateway.identity.hoststate import SqliteState; import os; "
            f"a = SqliteState({str(db)!r}); b = SqliteState({str(db)!r}); "
            "assert a.marked('sid:s1') is False; "
            f"os.truncate({str(db) + '.changes'!r}, 0); "
            "assert a.marked('sid:s1') is False; assert b.mark('sid:s1', 600); assert a.marked('sid:s1') is True")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_an_unreadable_counter_makes_every_check_ask_sqlite(tmp_path):
    """Found by review: a counter that could not be opened switched revocation checks off."""
    a, b, monotonic = pair(tmp_path)
    assert a.marked("sid:s1") is False
    os.remove(tmp_path / "state.db.changes")
    os.mkdir(tmp_path / "state.db.changes")  # cannot be opened again, even by root
    monotonic.advance(CHECK_SECONDS + 0.01)
    assert a.marked("sid:s1") is False
    assert b.mark("sid:s1", 600) is True  # recorded; the counter could not be moved (logged)
    assert a.marked("sid:s1") is True  # at once: asked SQLite, not a remembered answer


def test_a_logout_just_after_the_files_were_removed_is_not_lost(tmp_path):
    """Found by review: a mark written within a second of the removal went into the removed file."""
    a, _ = alone(tmp_path)
    assert a.marked("sid:s1") is False  # checked the files just now
    _remove_database(tmp_path / "state.db")
    assert a.mark("sid:s1", 600) is True
    seen = subprocess.run([sys.executable, "-c", (
        "from gateway.identity.hoststate import SqliteState; "
        f"print(SqliteState({str(tmp_path / 'state.db')!r}, clock=lambda: 1000.0).marked('sid:s1'))")],
        cwd=ROOT, timeout=60, capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == "True"  # a fresh worker, on the file at the path


def test_a_counter_at_its_largest_value_wraps_instead_of_failing_every_logout(tmp_path):
    a, b, _ = pair(tmp_path)
    (tmp_path / "state.db.changes").write_bytes(b"\xff" * 8)
    assert a.marked("sid:s1") is False
    assert b.mark("sid:s1", 600) is True  # was a 500: struct.error past 2**64 - 1
    assert a.marked("sid:s1") is True
    assert (tmp_path / "state.db.changes").read_bytes() == bytes(8)


def descriptors_on(path) -> int:
    """How many of this process's descriptors are open on ``path`` (removed files included)."""
    fds = "/proc/self/fd"
    return sum(os.readlink(f"{fds}/{fd}").startswith(str(path)) for fd in os.listdir(fds)
               if os.path.islink(f"{fds}/{fd}"))


def test_a_counter_file_replaced_again_and_again_keeps_two_descriptors_at_most(tmp_path):
    a, _, monotonic = pair(tmp_path)
    counter = tmp_path / "state.db.changes"
    for _ in range(10):
        os.remove(counter)
        monotonic.advance(CHECK_SECONDS + 0.01)
        a.marked("sid:s1")  # opens the new file
    assert descriptors_on(counter) <= 3  # a's current and retired ones, and b's first (b never looked again)


def test_a_counter_that_cannot_be_opened_at_start_is_not_a_crash(tmp_path):
    os.mkdir(tmp_path / "state.db.changes")
    a, b, _ = pair(tmp_path)  # starts (was: IsADirectoryError at start-up)
    assert b.mark("sid:s1", 600) is True
    assert a.marked("sid:s1") is True


def test_threads_opening_the_counter_again_at_once_close_nothing_twice(tmp_path):
    """Found by review: two threads reopening at once closed one descriptor number twice,
    which by then could belong to an unrelated file."""
    ticks = itertools.count()
    a = SqliteState(str(tmp_path / "state.db"), clock=FakeClock(1000.0),
                    monotonic=lambda: next(ticks) * (CHECK_SECONDS + 1))  # every read re-checks the file
    counter = tmp_path / "state.db.changes"
    errors = []

    def reader():
        for _ in range(300):
            try:
                a._changes.read()
            except OSError as exc:
                errors.append(exc)

    def deleter():
        for _ in range(300):
            counter.unlink(missing_ok=True)

    with open(tmp_path / "unrelated", "w") as unrelated:
        threads = [threading.Thread(target=reader) for _ in range(8)] + [threading.Thread(target=deleter)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        os.fstat(unrelated.fileno())  # still open
        unrelated.write("x")
    assert not [e for e in errors if e.errno == errno.EBADF]
    assert descriptors_on(counter) <= 2
