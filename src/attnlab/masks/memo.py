"""Bounded memo for work derived from a mask's structure (block layouts, kernel schedules).

A mask built by a factory has a structural `key` (factory + parameters), so an identical
mask built afresh on every call (`sliding_window(512)` inside a layer's forward) finds the
layout and schedule that an earlier call derived. Entries are keyed by the structure plus
everything the work depends on (shapes, block sizes, dtype); the memo keeps at most
`max_entries` entries and `max_bytes` bytes, dropping the least recently used. A user
predicate (key None) memoises on its own object, under the same bounds.
"""
from __future__ import annotations

from collections import OrderedDict


class Memo:
    """Least-recently-used memo bounded in entries and in bytes."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 * 2 ** 20):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()  # key -> (value, nbytes)
        self.nbytes = 0

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(list(self._items))

    def keys(self) -> list:
        return list(self._items)

    def get(self, key, default=None):
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key, value, nbytes: int = 0) -> None:
        """Keep `value` unless it alone exceeds the byte budget; evict the oldest to fit."""
        if nbytes > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while len(self._items) > self.max_entries or self.nbytes > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    # dict-style access for tests and callers that prefill entries
    def __getitem__(self, key):
        return self._items[key][0]

    def __setitem__(self, key, value) -> None:
        self.put(key, value)


# work derived from masks with a structural key, shared by every mask object of that key
STRUCTURE_MEMO = Memo(max_entries=64, max_bytes=256 * 2 ** 20)


def memo_for(mask) -> tuple[Memo, tuple]:
    """(memo, key prefix) for `mask`: the shared structural memo when the mask has a key,
    else the mask object's own memo."""
    if mask.key is None:
        return mask._layouts, ()
    return STRUCTURE_MEMO, (mask.key,)
