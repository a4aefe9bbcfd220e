"""Token state per worker process: what gunicorn's master makes before it forks (preload) is
each worker's own copy afterwards, and nothing in it is held at fork time."""
import os
import select
import signal
from pathlib import Path

from gateway.tokens.breaker import CircuitBreaker
from gateway.tokens.budget import RateLimiter

TOKENS = Path(__file__).resolve().parent.parent / "gateway" / "tokens"


def in_child(job, bound: float = 20.0) -> int:
    """Run ``job`` in a forked child (as gunicorn forks a worker from the preloaded master); its
    exit code. A child still running after ``bound`` seconds is killed and counts as hung (-1):
    a guard against hanging the suite on a lock held at fork, not a timing assumption."""
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            job()
            code = 0
        finally:
            os.write(done_w, b"x")
            os._exit(code)
    os.close(done_w)
    finished, _, _ = select.select([done_r], [], [], bound)
    os.close(done_r)
    if not finished:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return -1
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_breaker_opened_in_a_forked_worker_stays_that_worker_s_own():
    master_copy = CircuitBreaker(1, 30)  # made before the fork, like create_app under preload

    def open_it():
        master_copy.failure()
        assert master_copy.state == CircuitBreaker.OPEN

    assert in_child(open_it) == 0
    assert master_copy.state == CircuitBreaker.CLOSED  # nor in any other worker


def test_each_forked_worker_counts_its_own_share_of_the_budget():
    # 10 a minute for 2 workers: 5 each, 4 of them for first tokens.
    master_copy = RateLimiter(10, shared=None, name="p", workers=2, clock=lambda: 1000.0)

    def use_share():
        assert [master_copy.admit() for _ in range(5)] == [0.0] * 4 + [60.0]

    assert in_child(use_share) == 0
    assert in_child(use_share) == 0  # the second worker's share is untouched by the first's
    assert [master_copy.admit() for _ in range(5)] == [0.0] * 4 + [60.0]


def test_a_worker_forked_from_a_freshly_made_app_takes_every_token_lock(make_app):
    """create_app (the master, under preload) leaves no token lock held: a worker forked from it
    counts in its window, backs off, and opens and closes its breaker without waiting."""
    app = make_app(GATEWAY_BREAKER_FAILURES="1")
    limiter, breaker = app.extensions["limiter"], app.extensions["breaker"]

    def use_everything():
        assert limiter.admit() == 0.0
        limiter.back_off(5)
        assert limiter.backoff_left() > 0
        breaker.failure()
        assert breaker.state == CircuitBreaker.OPEN
        breaker.success()

    assert in_child(use_everything) == 0


def test_the_token_state_uses_no_shared_memory_file_lock_or_fork_hook():
    forbidden = ("mmap", "fcntl", "flock", "register_at_fork", "/proc/")
    found = {(path.name, word) for path in TOKENS.glob("*.py") for word in forbidden
             if word in path.read_text()}
    assert found == set()
