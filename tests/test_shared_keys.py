"""Cluster-safe keys: every key one command or script touches hashes to one slot.

The keys are not taken from the code's own key functions: every command the store sends to a
real redis-server is recorded, and the server itself says which arguments are keys
(``COMMAND GETKEYS``), so a command or script that reached a second key would be seen.
"""
import redis as redis_lib
from redis.crc import key_slot

from conftest import FakeClock, SECRET_KEY
from gateway.shared import Shared

KEYLESS = {"PING", "SCRIPT", "CLIENT", "HELLO", "AUTH", "SELECT"}


class Recording(redis_lib.Redis):
    """A plain client that remembers every command it sends (through its public execute_command)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple] = []

    def execute_command(self, *args, **options):
        self.sent.append(args)
        return super().execute_command(*args, **options)


def keys_sent(raw, recording) -> list[list[bytes]]:
    """For each command sent, the keys the server says it touches."""
    found = []
    for args in recording.sent:
        name = str(args[0]).split()[0].upper()
        if name in KEYLESS:
            continue
        found.append([k if isinstance(k, bytes) else k.encode() for k in raw.command_getkeys(*args)])
    recording.sent.clear()
    return found


def every_operation(shared: Shared) -> dict[str, None]:
    """Each of the store's operations once; the name of each, in order."""
    shared.put_token("acme", "sales", "t", expires_at=FakeClock().now + 60)
    yield "put_token"
    shared.get_token("acme", "sales")
    yield "get_token"
    shared.delete_token("acme", "sales", "t")
    yield "delete_token"
    held = shared.acquire("acme", "sales")
    yield "acquire"
    held.release()
    yield "release"
    shared.mark("sid:s-1", 60)
    yield "mark"
    shared.marked("sid:s-1")
    yield "marked"
    shared.admit("zipteams", 5)
    yield "admit"
    shared.set_backoff("zipteams", 3)
    yield "set_backoff"
    shared.backoff_until("zipteams")
    yield "backoff_until"


def test_no_command_or_script_spans_slots_and_a_pairs_keys_share_one(redis_server):
    raw = redis_lib.Redis.from_url(redis_server.url)
    recording = Recording.from_url(redis_server.url)
    # As on a cluster (its URL), through a plain client that can record what is sent.
    shared = Shared(redis_server.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0], SECRET_KEY,
                    namespace="partner-a", client=recording)
    slots_of: dict[str, set[int]] = {}
    for name in every_operation(shared):
        touched = keys_sent(raw, recording)
        assert touched, f"{name} sent no keyed command"
        for keys in touched:
            assert len(keys) == 1, f"{name} touched {keys} in one command"
        slots_of[name] = {key_slot(key) for keys in touched for key in keys}
    assert all(len(slots) == 1 for slots in slots_of.values()), slots_of
    pair = set().union(*(slots_of[n] for n in ("put_token", "get_token", "delete_token", "acquire", "release")))
    budget = set().union(*(slots_of[n] for n in ("admit", "set_backoff", "backoff_until")))
    assert len(pair) == 1 and len(budget) == 1, (pair, budget)


def test_the_slot_check_sees_keys_in_different_slots(redis_server):
    """The check can fail: two keys without a shared tag land in different slots."""
    raw = redis_lib.Redis.from_url(redis_server.url)
    recording = Recording.from_url(redis_server.url)
    recording.mset({"zg:x:token:acme/sales": 1, "zg:x:lock:acme/sales": 2})
    [keys] = keys_sent(raw, recording)
    assert len({key_slot(k) for k in keys}) == 2


def test_keys_keep_the_partner_namespace_outside_the_tag():
    a = Shared("redis://127.0.0.1:1/0", SECRET_KEY, namespace="partner-a")
    b = Shared("redis://127.0.0.1:1/0", SECRET_KEY, namespace="partner-b")
    assert a.key("acme/sales", "token") != b.key("acme/sales", "token")
    assert a.key("acme/sales", "token").startswith("zg:") and "{acme/sales}:token" in a.key("acme/sales", "token")
    assert key_slot(a.key("acme/sales", "token").encode()) == key_slot(a.key("acme/sales", "lock").encode())


def test_marks_from_before_the_hash_tags_still_count_on_a_single_server(redis_server):
    """A session signed out, or a hand-off used, before the upgrade stays so after it."""
    raw = redis_lib.Redis.from_url(redis_server.url)
    shared = Shared(redis_server.url, SECRET_KEY, namespace="partner-a")
    raw.set(shared.key("x", "y").split("{")[0] + "state:sid:old-session", b"1", px=60_000)
    raw.set(shared.key("x", "y").split("{")[0] + "state:jti:iss|old-jti", b"1", px=60_000)
    assert shared.marked("sid:old-session") and not shared.marked("sid:other")
    assert shared.mark("jti:iss|old-jti", 60) is False
    assert shared.mark("jti:iss|new-jti", 60) is True and shared.mark("jti:iss|new-jti", 60) is False
