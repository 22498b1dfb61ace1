"""Regressions of the paged cache's bookkeeping (issue: caches that cannot mix sequences).

Each test reproduces a finding on the earlier code: an untracked reserve misaligning token
ids with positions (so a later prompt got another sequence's K/V from the prefix cache),
duplicate sequence ids in a batch view, and copy-on-write counted once per sharer.
"""
import pytest
import torch

from attnlab.cache.block_allocator import PoolExhaustedError
from attnlab.cache.paged import PagedKVCache


def _write(c: PagedKVCache, seq, slots, value: float) -> None:
    T = slots.shape[0]
    k = torch.full((c.n_kv_heads, T, c.head_dim), value)
    c.write(0, slots, k, k)


def test_untracked_reserve_never_feeds_the_prefix_cache():
    c = PagedKVCache(1, 1, 2, num_blocks=8, block_size=1)
    c.add_sequence(0)
    _write(c, 0, c.reserve(0, 1), 10.0)  # position 0: token id unknown
    _write(c, 0, c.reserve(0, 1, tokens=[1]), 11.0)  # position 1: token 1
    c.register_full_blocks(0)
    c.check_invariants()
    # a new prompt starting with token 1 must not reuse the block of position 0
    assert c.add_sequence(2, [1, 0]) == 0
    assert c.block_table(2) == []


def test_tracked_sequence_shares_and_verifies_contents():
    c = PagedKVCache(1, 1, 2, num_blocks=8, block_size=2)
    c.add_sequence("a", [5, 6, 7])
    _write(c, "a", c.reserve("a", 3, tokens=[5, 6, 7]), 1.0)
    c.register_full_blocks("a")
    assert c.add_sequence("b", [5, 6, 9]) == 2  # first block shared
    assert c.block_table("b")[0] == c.block_table("a")[0]
    # a hash that maps to a block holding other tokens is refused (hashes are only keys)
    first = c.block_table("a")[0]
    c.allocator.content[first] = (None, (9, 9))
    assert c.add_sequence("c", [5, 6, 1]) == 0


def test_batch_view_rejects_duplicate_ids():
    c = PagedKVCache(1, 1, 2, num_blocks=8, block_size=2)
    c.add_sequence(0)
    with pytest.raises(ValueError, match="distinct"):
        c.batch_view([0, 0])


def test_batch_view_counts_copy_on_write_as_reserve_does():
    # parent and child share a partially filled last block; the pool has exactly one free
    # block: the first writer copies (1 block), the last sharer writes in place (0 blocks)
    c = PagedKVCache(1, 1, 2, num_blocks=2, block_size=4)
    c.add_sequence("p")
    _write(c, "p", c.reserve("p", 1), 1.0)
    c.fork("p", "q")
    view = c.batch_view(["p", "q"])
    assert view.blocks_needed(1) == 1
    k = torch.ones(2, 1, 1, 2)
    view.update(0, k, k)  # fits: used to be refused as needing 2 blocks
    c.check_invariants()
    assert c.seq_len("p") == c.seq_len("q") == 2
    assert c.block_table("p") != c.block_table("q")
    with pytest.raises(PoolExhaustedError):
        c.reserve("p", 4)


def test_batched_reserve_needs_token_ids_and_refuses_before_any_change():
    """The engine's one reserve per step: every ask carries its token ids, names its
    sequence once, and a short pool refuses the whole batch with nothing changed."""
    c = PagedKVCache(1, 1, 2, num_blocks=3, block_size=2)
    for s in ("a", "b"):
        c.add_sequence(s, [])
    with pytest.raises(ValueError, match="ids of its n"):
        c.reserve_many([("a", 1, None)])  # untracked: not through the batched path
    with pytest.raises(ValueError, match="ids of its n"):
        c.reserve_many([("a", 2, [1])])
    with pytest.raises(ValueError, match="one ask per sequence"):
        c.reserve_many([("a", 1, [1]), ("a", 1, [2])])
    with pytest.raises(PoolExhaustedError):  # 2 + 2 blocks, 3 free
        c.reserve_many([("a", 3, [1, 2, 3]), ("b", 3, [4, 5, 6])])
    assert (c.seq_len("a"), c.seq_len("b"), c.allocator.n_free) == (0, 0, 3)
    assert c.tokens["a"] == [] and c.tracked["a"]
    c.reserve_many([("a", 3, [1, 2, 3]), ("b", 1, [4])])
    assert c.tokens == {"a": [1, 2, 3], "b": [4]} and c.allocator.n_free == 0
    c.check_invariants()


def test_step_tensors_match_the_tables_and_the_reserved_slots():
    c = PagedKVCache(1, 1, 2, num_blocks=40, block_size=4)
    lens = {"x": 9, "y": 3, "z": 17}
    for s, n in lens.items():
        c.add_sequence(s, [])
        c.reserve(s, n)
    c.fork("x", "w")  # shares x's blocks: w's first write copies the last one
    c.reserve_many([(s, 2, [0, 0]) for s in ("x", "w", "z")])
    ids = ["z", "w", "x"]
    tables, seq_lens, slots, longest = c.step_tensors(ids, 2)
    assert longest == max(c.seq_len(s) for s in ids)
    assert torch.equal(tables, c.tables_tensor(ids))
    assert seq_lens.tolist() == [c.seq_len(s) for s in ids]
    want = torch.cat([c.slots(s, c.seq_len(s) - 2, 2) for s in ids])
    assert torch.equal(slots, want)
    assert c.block_table("w")[-1] != c.block_table("x")[-1]  # copy-on-write happened
    with pytest.raises(ValueError, match="must lie in"):
        c.step_tensors(["y"], 4)  # y holds 3 tokens
