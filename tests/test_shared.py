"""The shared Redis tier against a real redis-server: encrypted, locked, fail-soft."""
import time

import redis as redis_lib

from conftest import JWT_SHAPE, SECRET_KEY, FakeClock, free_port
from gateway.shared import Shared

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnRJZCI6ImEifQ.c2lnbmF0dXJl"


def make(url, **kw):
    return Shared(url, SECRET_KEY, namespace="partner-a", **kw)


def test_tokens_round_trip_and_are_encrypted_at_rest(redis_server):
    shared = make(redis_server.url)
    shared.put_token("acme", "sales", TOKEN, expires_at=FakeClock().now + 60)
    assert shared.get_token("acme", "sales") == TOKEN
    raw = redis_lib.Redis.from_url(redis_server.url)
    values = [raw.get(k) for k in raw.keys("*")]
    assert values and all(TOKEN.encode() not in v and not JWT_SHAPE.search(v) for v in values)
    assert all(b"acme" not in k or k.endswith(b"}:token") for k in raw.keys("*"))


def test_entries_expire_with_the_token(redis_server):
    shared = make(redis_server.url)
    shared.put_token("acme", "sales", TOKEN, expires_at=FakeClock().now + 5)
    raw = redis_lib.Redis.from_url(redis_server.url)
    ttl = raw.pttl(next(iter(raw.keys("*token*"))))
    assert 0 < ttl <= 5000  # (0.2 s here was a flake on a loaded machine: gone before it was read)


def test_an_entry_moved_to_another_key_or_another_secret_does_not_decrypt(redis_server):
    shared = make(redis_server.url)
    shared.put_token("acme", "sales", TOKEN, expires_at=FakeClock().now + 60)
    raw = redis_lib.Redis.from_url(redis_server.url)
    [key] = raw.keys("*{acme/sales}:token")
    raw.set(key.replace(b"acme/sales", b"acme/other"), raw.get(key))
    assert shared.get_token("acme", "other") is None
    other_secret = Shared(redis_server.url, SECRET_KEY + "-rotated", namespace="partner-a")
    assert other_secret.get_token("acme", "sales") is None


def test_partners_sharing_a_redis_do_not_see_each_other(redis_server):
    make(redis_server.url).put_token("acme", "sales", TOKEN, expires_at=FakeClock().now + 60)
    other = Shared(redis_server.url, SECRET_KEY, namespace="partner-b")
    assert other.get_token("acme", "sales") is None


def test_lock_is_exclusive_and_released_only_by_its_holder(redis_server):
    a, b = make(redis_server.url), make(redis_server.url)
    held = a.acquire("acme", "sales")
    assert held and b.acquire("acme", "sales") is None
    held.release()
    again = b.acquire("acme", "sales")
    assert again
    held.release()  # a second release by the old holder does not free b's lock
    assert a.acquire("acme", "sales") is None
    again.release()


def test_a_live_holder_keeps_its_lock_past_the_lease_and_a_dead_one_loses_it(redis_server, monkeypatch):
    redis = redis_lib

    from gateway import shared

    monkeypatch.setattr(shared, "LOCK_LEASE", 1.0)
    monkeypatch.setattr(shared, "LOCK_RENEW", 0.2)
    a, b = make(redis_server.url), make(redis_server.url)
    held = a.acquire("acme", "sales")
    time.sleep(2.0)  # twice the lease: renewed meanwhile by its holder
    assert b.acquire("acme", "sales") is None
    held.release()
    # A holder that died mid-fetch (its process killed: nobody renews) loses the lock with its lease.
    redis.Redis.from_url(redis_server.url).set(b.key("acme/sales", "lock"), "dead-holder", px=1000)
    assert b.acquire("acme", "sales") is None
    time.sleep(1.2)
    assert b.acquire("acme", "sales")


def test_shared_rate_window(redis_server):
    a, b = make(redis_server.url), make(redis_server.url)
    assert [a.admit("p", 3), b.admit("p", 3), a.admit("p", 3)] == [0, 0, 0]
    wait = b.admit("p", 3)
    assert 59 < wait <= 60


def test_redis_down_fails_soft_and_logs_once(caplog):
    clock = [100.0]
    shared = make(f"redis://127.0.0.1:{free_port()}/0", monotonic=lambda: clock[0])
    assert shared.get_token("acme", "sales") is None
    assert not shared.available
    shared.put_token("acme", "sales", TOKEN, expires_at=FakeClock().now + 60)  # skipped, no error
    assert shared.admit("p", 3) is None
    clock[0] += 6
    assert shared.get_token("acme", "sales") is None
    warnings = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_redis_coming_back_is_used_again(redis_server):
    clock = [100.0]
    shared = make(redis_server.url, monotonic=lambda: clock[0])
    redis_server.stop()
    assert shared.get_token("acme", "sales") is None and not shared.available
    redis_server.start()
    clock[0] += 6
    shared.put_token("acme", "sales", TOKEN, expires_at=FakeClock().now + 60)
    assert shared.get_token("acme", "sales") == TOKEN


def test_a_long_error_is_cut_in_the_shared_tiers_lines():
    # A Sentinel's MasterNotFoundError carries the repr of every client it tried: over 1,000 characters.
    from gateway.sharedtier import describe

    reason, _ = describe(redis_lib.RedisError("No master found for 'mymaster' : " + "Redis<Connection<x>> " * 80))
    assert len(reason) < 400 and reason.startswith("RedisError: No master found"), reason


def test_a_failed_call_never_logs_the_password_a_reply_repeats(caplog):
    from conftest import NotRedis

    password = "Shared-Pa55-never-logged"
    other = NotRedis(answer=lambda args: b"-ERR unknown command, with args beginning with: '" + args[-1] + b"'\r\n")
    try:
        shared = make(other.url.replace("redis://", f"redis://:{password}@"))
        assert shared.get_token("acme", "sales") is None and not shared.available
    finally:
        other.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("redis" in line for line in lines), lines
    assert not any(password in line or password[:10] in line for line in lines), lines
