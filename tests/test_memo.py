"""The one cache abstraction: bounded, oldest out first, per-memo or per-entry expiry."""
from gateway.memo import Memo


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_when_full_the_oldest_entry_goes_first():
    memo = Memo(3)
    for n in range(3):
        memo.put(n, f"v{n}")
    assert [memo.get(n) for n in range(3)] == ["v0", "v1", "v2"]
    memo.put(3, "v3")
    assert len(memo) == 3 and memo.get(0) is None and [memo.get(n) for n in (1, 2, 3)] == ["v1", "v2", "v3"]
    memo.put(2, "v2'")  # replacing a key pushes nothing out
    assert len(memo) == 3 and memo.get(1) == "v1" and memo.get(2) == "v2'"


def test_entries_expire_after_ttl():
    clock = Clock()
    memo = Memo(10, ttl=300, clock=clock)
    memo.put("cookie", {"sid": "a"})
    clock.now += 299.9
    assert memo.get("cookie") == {"sid": "a"}
    clock.now += 0.1
    assert memo.get("cookie") is None and len(memo) == 0


def test_an_entry_can_name_its_own_expiry():
    clock = Clock()
    memo = Memo(10, clock=clock)
    memo.put("token", "t1", until=clock.now + 5)
    memo.put("forever", "x")
    clock.now += 4.9
    assert memo.get("token") == "t1" and list(memo.values()) == ["t1", "x"]
    clock.now += 0.1
    assert memo.get("token") is None and memo.get("forever") == "x" and list(memo.values()) == ["x"]


def test_a_miss_is_none_or_the_default():
    assert Memo(2).get("nothing") is None and Memo(2, ttl=1).get("nothing", 0) == 0
    assert Memo(2).pop("nothing") is None


def test_get_or_make_makes_once_and_never_remembers_a_miss():
    memo, made = Memo(4), []

    def make(value):
        made.append(value)
        return value

    assert memo.get_or_make("a", lambda: make("A")) == "A"
    assert memo.get_or_make("a", lambda: make("other")) == "A"
    assert memo.get_or_make("b", lambda: make(None)) is None and len(memo) == 1
    assert memo.get_or_make("b", lambda: make(False)) is False  # a falsy answer is an answer
    assert memo.get_or_make("b", lambda: make("never")) is False
    assert made == ["A", None, False]


def test_with_admit_on_repeat_an_answer_is_remembered_from_its_second_making():
    made = []
    memo = Memo(10, admit_on_repeat=True)

    def make(key):
        made.append(key)
        return f"v{key}"

    assert memo.get_or_make("a", lambda: make("a")) == "va" and len(memo) == 0  # first sighting: not kept
    assert memo.get_or_make("a", lambda: make("a")) == "va" and len(memo) == 1  # second: kept
    assert memo.get_or_make("a", lambda: make("a")) == "va"
    assert made == ["a", "a"]


def test_a_flood_of_one_time_keys_pushes_no_regular_out():
    """The per-user memos' point: a crawl or a burst of new users must not evict the regulars
    (without admit_on_repeat the flood takes every place; the second half shows it)."""
    for admit_on_repeat, regulars_kept in ((True, True), (False, False)):
        memo = Memo(10, admit_on_repeat=admit_on_repeat)
        for _ in range(2):
            for n in range(5):
                memo.get_or_make(("regular", n), lambda n=n: n)
        for n in range(1000):
            memo.get_or_make(("once", n), lambda n=n: n)
        assert all(memo.get(("regular", n)) == n for n in range(5)) is regulars_kept
        assert len(memo) <= 10


def test_the_keys_seen_once_are_bounded_too():
    memo = Memo(10, admit_on_repeat=True)
    memo.get_or_make("early", lambda: 1)
    for n in range(10):  # ten newer first sightings push "early" out of the ones remembered
        memo.get_or_make(n, lambda: 1)
    memo.get_or_make("early", lambda: 1)
    assert memo.get("early") is None  # counted as a first sighting again
    memo.get_or_make("early", lambda: 1)
    assert memo.get("early") == 1
