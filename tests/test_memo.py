"""The bounded memo dicts used on the per-request path."""
from gateway.memo import Memo


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_remembers_until_full_then_forgets_everything():
    memo = Memo(3)
    for n in range(3):
        memo.put(n, f"v{n}")
    assert [memo.get(n) for n in range(3)] == ["v0", "v1", "v2"]
    memo.put(3, "v3")  # full: starts over rather than growing
    assert len(memo) == 1 and memo.get(0) is None and memo.get(3) == "v3"


def test_entries_expire_after_ttl():
    clock = Clock()
    memo = Memo(10, ttl=300, clock=clock)
    memo.put("cookie", {"sid": "a"})
    clock.now += 299.9
    assert memo.get("cookie") == {"sid": "a"}
    clock.now += 0.1
    assert memo.get("cookie") is None and len(memo) == 0


def test_a_miss_is_none():
    assert Memo(2).get("nothing") is None and Memo(2, ttl=1).get("nothing") is None
