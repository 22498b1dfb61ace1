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
