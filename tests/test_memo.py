"""The bounded memo the hot path's small caches share."""

from __future__ import annotations

from gateway.memo import Memo


def test_a_memo_remembers_until_full_then_starts_over() -> None:
    memo: Memo[str, int | None] = Memo(3)
    assert memo.remember("a", 1) == 1
    assert memo.remember("none", None) is None  # None is an answer like any other
    assert memo.remember("b", 2) == 2
    assert dict(memo) == {"a": 1, "none": None, "b": 2}
    assert memo.remember("c", 3) == 3  # full: forgotten all at once, then stored
    assert dict(memo) == {"c": 3}
    assert memo.remember("c", 4) == 4 and len(memo) == 1
