"""ratelimit/memory.py: what a reload asks of the in-process store (its GCRA is in test_gcra.py)."""

from __future__ import annotations

from guardproxy.ratelimit.gcra import parse_rate
from guardproxy.ratelimit.memory import MemoryStore


def test_retain_forgets_only_the_keys_it_is_told_to() -> None:
    store = MemoryStore(max_keys=10, clock=lambda: 0)
    rate = parse_rate("1/minute")
    assert store.check(["keep:a", "drop:b"], [rate, rate], [True, True]) == [0, 0]
    store.retain(lambda key: key.startswith("keep:"))
    assert len(store) == 1
    assert store.check(["drop:b"], [rate], [True]) == [0]  # a fresh budget
    assert store.check(["keep:a"], [rate], [True]) != [0]  # the spent one kept


def test_retain_nothing_empties_the_store() -> None:
    store = MemoryStore(max_keys=10, clock=lambda: 0)
    rate = parse_rate("5/minute")
    store.check(["a", "b", "c"], [rate] * 3, [True] * 3)
    store.retain(lambda key: False)
    assert len(store) == 0
