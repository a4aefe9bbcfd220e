"""Revocations without Redis: one SQLite file per host, answers remembered while nothing changes.

Two ``SqliteState`` objects on one file stand for two worker processes (or two instances on one
host): each keeps its own remembered answers, as a process does.
"""
import os
import sqlite3

from conftest import FakeClock
from gateway.identity.revocations import CHECK_SECONDS, SqliteState


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
    a._data_version = (monotonic(), a._data_version[1])  # as if SQLite's count had just been read
    assert a.marked("sid:s1") is True


def test_a_mark_whose_counter_could_not_move_is_seen_by_its_own_process(tmp_path, monkeypatch):
    a, _, _ = pair(tmp_path)
    assert a.marked("sid:s1") is False

    def broken():
        raise OSError("read-only file system")

    monkeypatch.setattr(a._changes, "bump", broken)
    assert a.mark("sid:s1", 600) is True
    assert a.marked("sid:s1") is True
