"""A bounded memo: remembered answers of a pure function, forgotten all at once when full.

The hot path remembers small things whose inputs repeat across a fleet: which
addresses are trusted proxies, a token header's JSON, an edge header's
location, a region decision. Each is a dict lookup on a hit. The bound keeps
a client that varies its inputs from growing memory; dropping everything when
full is cheaper than LRU bookkeeping, and the few inputs that matter come back
within a few requests.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    """A dict of at most ``limit`` entries: :meth:`remember` clears it when full.

    Read it as a dict (``memo.get(key)``); write through :meth:`remember`.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> V:
        """Store ``value`` under ``key`` (emptying the memo first if it is full); return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
