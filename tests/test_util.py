"""The shared helpers: the LRU every cache uses and the atomic write every file goes through."""
from __future__ import annotations

import pytest

from qatie.util import LRU, atomic_write, atomic_write_text


def test_lru_evicts_least_recently_used_by_count_and_by_size():
    evicted = []
    lru = LRU(3, on_evict=lambda k, v: evicted.append(k))
    for k in "abc":
        lru.put(k, k)
    assert lru.get("a") == "a"  # a is now the most recent
    lru.put("d", "d")
    assert evicted == ["b"] and lru.get("b") is None and len(lru) == 3
    sized = LRU(10, max_bytes=5, size=len)
    sized.put("x", "aaa")
    sized.put("y", "bbb")  # 6 > 5: x goes
    assert sized.get("x") is None and sized.get("y") == "bbb"
    sized.put("z", "cccccccc")  # alone over the budget: kept (it is the one in use)
    assert len(sized) == 1 and sized.get("z") == "cccccccc"


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = atomic_write_text(tmp_path / "out.json", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
