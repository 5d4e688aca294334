"""ObjectMemo: values kept per live object, recomputed for a new object, bounded by a limit."""

from __future__ import annotations

import gc

from heterogui.memo import ObjectMemo


class Thing:
    pass


def test_a_value_is_computed_once_per_live_object_and_key():
    memo, calls = ObjectMemo(), []

    def compute(tag):
        calls.append(tag)
        return [tag]

    a, b = Thing(), Thing()
    first = memo.get(a, "k", lambda: compute("a"))
    assert memo.get(a, "k", lambda: compute("again")) is first
    assert memo.get(b, "k", lambda: compute("b")) == ["b"]
    assert memo.get(a, "other", lambda: compute("other")) == ["other"]
    assert calls == ["a", "b", "other"]
    del a
    gc.collect()
    memo.get(Thing(), "k", lambda: compute("new"))  # a dead object's entries go at insertion
    assert len(memo._items) == 2


def test_a_limit_keeps_the_most_recently_used():
    memo, things = ObjectMemo(limit=2), [Thing() for _ in range(3)]
    for i, t in enumerate(things):
        memo.get(t, "k", lambda i=i: i)
    assert memo.get(things[0], "k", lambda: "recomputed") == "recomputed"
    assert memo.get(things[2], "k", lambda: "again") == 2
