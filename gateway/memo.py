"""The gateway's one cache abstraction: a bounded, lock-free dict with optional expiry.

Used where the same question comes again and again (a verified session cookie, the rule
matches of a user, a rendered page, a placeholder, a verified assertion) and for the
token cache's entries. Single dict operations are atomic under the GIL, so no lock is
needed: a racing reader sees an entry or a miss, never half of one. When full, the
oldest entry goes first (insertion order; ``OrderedDict.popitem``, constant time, where
deleting a plain dict's first key scans the slots already emptied: 2 µs per put at 4,096
entries, 8 at 16,384), so a burst of new keys pushes out old ones one at a time instead
of wiping the memo. Entries expire ``ttl`` seconds after they were put, or at the time
``put`` names (``until``), by the memo's clock.

A memo of per-user answers can ask for a second sighting (``admit_on_repeat``): ``get_or_make``
then remembers a key's answer only the second time it is made within the last ``maxsize``
first sightings (only the key's hash is kept until then). A flood of one-time visitors (a crawl,
a burst of new users) then pushes no regular user out; a returning user is remembered from
the second visit on (docs/performance.md, "Issue #24").

Why not cachetools (a dependency already): its caches need a lock for threads, and on
the per-request path the lock and the bookkeeping of an LRU order cost more than the
answers they keep (profiled with bench/app_cost.py --profile).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

_FOREVER = float("inf")


class Memo:
    __slots__ = ("_data", "_maxsize", "_ttl", "_clock", "_seen_once")

    def __init__(self, maxsize: int, ttl: float | None = None, clock: Callable[[], float] = time.monotonic,
                 admit_on_repeat: bool = False):
        self._data: OrderedDict = OrderedDict()  # key -> (value, expires at), oldest first
        self._maxsize = max(1, maxsize)
        self._ttl = ttl  # seconds an entry is used for, or None: until pushed out or ``until``
        self._clock = clock
        # Hashes of keys made once and not yet remembered (``admit_on_repeat``), oldest first.
        self._seen_once: OrderedDict | None = OrderedDict() if admit_on_repeat else None

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The remembered value, or ``default``."""
        item = self._data.get(key)
        if item is None:
            return default
        if item[1] is not _FOREVER and self._clock() >= item[1]:
            self._data.pop(key, None)
            return default
        return item[0]

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The remembered value, or ``make()``'s, remembered (None, a miss, is not)."""
        value = self.get(key)
        if value is None:
            value = make()
            if value is not None and self._admit(key):
                self.put(key, value)
        return value

    def _admit(self, key: Hashable) -> bool:
        """Whether to remember ``key``'s answer now: always, or on its second sighting."""
        seen = self._seen_once
        if seen is None:
            return True
        mark = hash(key)  # a collision only admits a key one sighting early
        if seen.pop(mark, None) is not None:
            return True
        seen[mark] = True
        if len(seen) > self._maxsize:
            try:
                seen.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                pass
        return False

    def put(self, key: Hashable, value: Any, until: float | None = None) -> None:
        data = self._data
        if key not in data:
            while len(data) >= self._maxsize:
                try:
                    data.popitem(last=False)  # the oldest
                except KeyError:
                    break  # another thread emptied it meanwhile
        if until is None:
            until = _FOREVER if self._ttl is None else self._clock() + self._ttl
        data[key] = (value, until)

    def pop(self, key: Hashable) -> Any:
        item = self._data.pop(key, None)
        return None if item is None else item[0]

    def values(self) -> Iterator[Any]:
        """The entries that have not expired (a snapshot)."""
        now = self._clock()
        return iter([value for value, until in list(self._data.values()) if until is _FOREVER or until > now])

    def __len__(self) -> int:
        return len(self._data)
