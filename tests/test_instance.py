"""State shared by the workers of one instance: memory mapped before fork, a lock no dead worker holds."""
import os
import select
import signal
import threading

from gateway.tokens.breaker import CircuitBreaker
from gateway.tokens.instance import InstanceState


def in_child(job) -> int:
    """Run ``job`` in a forked child (as gunicorn forks a worker from the preloaded master); its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            job()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_breaker_opened_in_a_forked_worker_is_open_in_the_other():
    instance = InstanceState()
    master_view = CircuitBreaker(1, 30, instance=instance)  # made before the fork, like create_app
    assert in_child(lambda: master_view.failure()) == 0
    assert master_view.state == CircuitBreaker.OPEN
    assert in_child(lambda: master_view.success()) == 0
    assert master_view.state == CircuitBreaker.CLOSED


def test_the_rate_window_is_one_for_every_forked_worker():
    instance = InstanceState(window_capacity=16)

    def use_three():
        assert [instance.admit(5, 1000.0) for _ in range(3)] == [0.0, 0.0, 0.0]

    assert in_child(use_three) == 0
    assert in_child(use_three) != 0  # the second worker finds 3 of 5 used: only 2 left
    assert instance.admit(5, 1000.0) == 60.0
    assert instance.admit(5, 1060.0) == 0.0  # the oldest has left the minute


def test_a_worker_killed_while_holding_the_lock_does_not_leave_the_instance_locked():
    instance = InstanceState()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            instance.lock.__enter__()
            os.write(ready_w, b"x")
            signal.pause()  # holds the lock until killed
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"  # the child holds it now
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    got = threading.Event()

    def take():
        with instance.lock:
            got.set()

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(timeout=10)  # a guard against hanging the suite, not a timing assumption
    assert got.is_set(), "the dead worker's lock was never released"


def test_the_lock_excludes_other_processes():
    instance = InstanceState()
    held_r, held_w = os.pipe()
    done_r, done_w = os.pipe()
    with instance.lock:
        pid = os.fork()
        if pid == 0:
            try:
                os.write(held_w, b"?")
                with instance.lock:
                    os.write(done_w, b"!")
            finally:
                os._exit(0)
        assert os.read(held_r, 1) == b"?"
        # The child is blocked on the lock we hold: nothing arrives until we let go (a child
        # that got in would have written long before this bound).
        got_in, _, _ = select.select([done_r], [], [], 2.0)
        assert not got_in, "the child got the lock while the parent held it"
    assert os.read(done_r, 1) == b"!"
    os.waitpid(pid, 0)
