"""Bounded, lock-free memo dicts for the per-request path.

Used where every request asks the same question again (rules for a user, a
verified session cookie, a rendered page, a placeholder): one dict look-up
instead of recomputing. Single dict operations are atomic under the GIL, so
no lock is needed: a racing reader sees an entry or a miss, never half of one.
When full, the memo forgets everything rather than tracking which entry was
least recently used; that keeps ``get`` to one look-up and costs one burst of
recomputation per ``maxsize`` distinct keys.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Hashable


class Memo:
    __slots__ = ("_data", "_maxsize", "_ttl", "_clock")

    def __init__(self, maxsize: int, ttl: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._data: dict = {}
        self._maxsize = maxsize
        self._ttl = ttl  # seconds an entry is used for, or None for as long as it stays
        self._clock = clock

    def get(self, key: Hashable) -> Any:
        """The remembered value, or None."""
        if self._ttl is None:
            return self._data.get(key)
        item = self._data.get(key)
        if item is None:
            return None
        if self._clock() >= item[1]:
            self._data.pop(key, None)
            return None
        return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        if len(self._data) >= self._maxsize:
            self._data.clear()
        self._data[key] = value if self._ttl is None else (value, self._clock() + self._ttl)

    def __len__(self) -> int:
        return len(self._data)
