"""Revocations without Redis: one SQLite file per host, answers remembered while nothing changes.

Two ``SqliteState`` objects on one file stand for two worker processes (or two instances on one
host): each keeps its own remembered answers, as a process does.
"""
import os
import sqlite3

from conftest import FakeClock
from gateway.identity.revocations import ANSWER_SECONDS, SqliteState


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
    monotonic.advance(ANSWER_SECONDS + 0.01)
    assert a.marked("sid:s1") is True


def test_a_writer_that_never_moves_the_counter_is_seen_within_the_answer_lifetime(tmp_path):
    a, _, monotonic = pair(tmp_path)
    assert a.marked("sid:s1") is False
    with sqlite3.connect(tmp_path / "state.db") as other:  # an older instance on the same file
        other.execute("INSERT INTO marks (key, until) VALUES (?, ?)", ("sid:s1", 2000.0))
    assert a.marked("sid:s1") is False  # remembered for now...
    monotonic.advance(ANSWER_SECONDS + 0.01)
    assert a.marked("sid:s1") is True  # ...not for longer
