"""Paged KV cache and paged attention: kernel == reference == contiguous attention,
fork + copy-on-write, prefix caching, swap, refusal before writing, bad input."""
import pytest
import torch

from attnlab.cache.block_allocator import BlockAllocator, PoolExhaustedError
from attnlab.cache.paged import PagedKVCache
from attnlab.masks import causal
from attnlab.ops.paged import paged_attention, paged_attention_reference
from attnlab.ops.softmax import attention_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}  # conventions §5: exact algorithm in float32


def filled_cache(lens, n_layers=2, hkv=2, d=8, bs=4, num_blocks=96, seed=0, shuffle=True):
    """A cache holding random K/V for sequences 0..len(lens)-1; physical blocks shuffled so
    block tables are not contiguous."""
    g = torch.Generator().manual_seed(seed)
    c = PagedKVCache(n_layers, hkv, d, num_blocks, bs)
    if shuffle:  # hand out blocks in a scrambled order
        perm = torch.randperm(num_blocks, generator=g).tolist()
        c.allocator._free_plain = perm
    for s, L in enumerate(lens):
        c.add_sequence(s)
        slots = c.reserve(s, L)
        for layer in range(n_layers):
            c.write(layer, slots, torch.randn(hkv, L, d, generator=g),
                    torch.randn(hkv, L, d, generator=g))
    c.check_invariants()
    return c


@pytest.mark.parametrize("hq,hkv", [(4, 2), (4, 4), (4, 1)])
@pytest.mark.parametrize("bpc", [1, 3, None])
def test_paged_decode_matches_reference_and_contiguous(hq, hkv, bpc):
    lens = [1, 7, 63, 129]
    c = filled_cache(lens, hkv=hkv)
    q = torch.randn(len(lens), hq, 1, 8, generator=torch.Generator().manual_seed(1))
    tables, sl = c.tables_tensor(list(range(len(lens)))), torch.tensor(lens)
    out, lse = paged_attention(q, c.k_pool[1], c.v_pool[1], tables, sl, blocks_per_chunk=bpc,
                               return_lse=True)
    ref, ref_lse = paged_attention_reference(q, c.k_pool[1], c.v_pool[1], tables, sl,
                                             return_lse=True)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(lse, ref_lse, **TOL)
    for b, L in enumerate(lens):  # against plain attention over a contiguous copy
        k, v = c.gather(b, 1)
        exp = attention_reference(q[b:b + 1], k[None], v[None])
        torch.testing.assert_close(out[b:b + 1], exp, **TOL)


@pytest.mark.parametrize("nq,L", [(7, 7), (7, 63), (63, 129), (1, 16)])
def test_paged_prefill_chunk_is_bottom_right_causal(nq, L):
    c = filled_cache([L], hkv=2)
    q = torch.randn(1, 4, nq, 8, generator=torch.Generator().manual_seed(2))
    out = paged_attention(q, c.k_pool[0], c.v_pool[0], c.tables_tensor([0]), torch.tensor([L]),
                          blocks_per_chunk=2)
    k, v = c.gather(0, 0)
    torch.testing.assert_close(out, attention_reference(q, k[None], v[None], mask=causal()), **TOL)


def test_contiguous_blocks_are_read_in_place_and_match():
    c = filled_cache([100], shuffle=False)
    assert c.block_table(0) == list(range(25))  # consecutive: the view path
    q = torch.randn(1, 4, 1, 8)
    out = paged_attention(q, c.k_pool[0], c.v_pool[0], c.tables_tensor([0]), torch.tensor([100]),
                          blocks_per_chunk=4)
    ref = paged_attention_reference(q, c.k_pool[0], c.v_pool[0], c.tables_tensor([0]),
                                    torch.tensor([100]))
    torch.testing.assert_close(out, ref, **TOL)


def test_fork_copy_on_write_keeps_parent_intact():
    c = filled_cache([10], n_layers=1)  # 10 tokens, bs 4: last block half full
    k_parent, v_parent = (t.clone() for t in c.gather(0, 0))
    c.fork(0, 1)
    assert c.block_table(1) == c.block_table(0)
    assert all(c.allocator.ref[b] == 2 for b in c.block_table(0))
    slots = c.reserve(1, 3)  # divergent write into the shared last block
    c.write(0, slots, torch.full((2, 3, 8), 7.0), torch.full((2, 3, 8), -7.0))
    c.check_invariants()
    t0, t1 = c.block_table(0), c.block_table(1)
    assert t0[:2] == t1[:2] and t0[2] != t1[2]  # only the last block was copied
    k0, v0 = c.gather(0, 0)
    torch.testing.assert_close(k0, k_parent, atol=0, rtol=0)
    torch.testing.assert_close(v0, v_parent, atol=0, rtol=0)
    k1, _ = c.gather(1, 0)
    torch.testing.assert_close(k1[:, :10], k_parent, atol=0, rtol=0)  # copied history
    assert bool((k1[:, 10:] == 7.0).all())
    c.free(0)
    assert all(c.allocator.ref[b] == 1 for b in c.block_table(1))
    c.check_invariants()


def test_prefix_caching_shares_full_prompt_blocks_and_survives_free():
    c = PagedKVCache(1, 1, 2, num_blocks=16, block_size=4)
    prompt = list(range(11))  # two full blocks + 3 tokens
    c.add_sequence("a", prompt)
    slots = c.reserve("a", 11, tokens=prompt)
    c.write(0, slots, torch.randn(1, 11, 2), torch.randn(1, 11, 2))
    c.register_full_blocks("a")
    ka, _ = c.gather("a", 0)
    assert c.add_sequence("b", prompt) == 8  # two blocks reused, 3 tokens left to run
    assert c.block_table("b") == c.block_table("a")[:2]
    assert c.add_sequence("c", [99] + prompt[1:]) == 0  # different first block: no reuse
    c.free("a")
    c.free("b")
    c.check_invariants()
    assert c.add_sequence("d", prompt + [5]) == 8  # freed but not evicted: still a hit
    kd = c.gather("d", 0)[0]
    torch.testing.assert_close(kd, ka[:, :8], atol=0, rtol=0)
    c.check_invariants()


def test_eviction_drops_hash_and_reuses_lru_block():
    a = BlockAllocator(2)
    (b0,) = a.allocate(1)
    a.register(b0, 123)
    a.decref(b0)
    assert a.lookup(123) == b0
    got = a.allocate(2)  # needs both: the cached block is evicted
    assert sorted(got) == [0, 1] and a.lookup(123) is None
    a.check_invariants()


def test_refusal_before_write_leaves_state_unchanged():
    c = filled_cache([8, 8], n_layers=1, num_blocks=5)  # 4 blocks used, 1 free
    before = [c.gather(s, 0)[0].clone() for s in (0, 1)]
    tables = [c.block_table(s) for s in (0, 1)]
    with pytest.raises(PoolExhaustedError, match="pool exhausted"):
        c.reserve(0, 9)  # needs 3 blocks
    assert c.seq_len(0) == 8 and [c.block_table(s) for s in (0, 1)] == tables
    for s in (0, 1):
        torch.testing.assert_close(c.gather(s, 0)[0], before[s], atol=0, rtol=0)
    c.check_invariants()


def test_swap_out_and_in_restores_content():
    c = filled_cache([13, 6], n_layers=2)
    k, v = (t.clone() for t in c.gather(0, 1))
    other = c.gather(1, 1)[0].clone()
    saved = c.swap_out(0)
    assert not c.has_sequence(0) and saved.length == 13
    c.swap_in(0, saved)
    c.check_invariants()
    torch.testing.assert_close(c.gather(0, 1)[0], k, atol=0, rtol=0)
    torch.testing.assert_close(c.gather(0, 1)[1], v, atol=0, rtol=0)
    torch.testing.assert_close(c.gather(1, 1)[0], other, atol=0, rtol=0)


def test_memory_accounting():
    c = filled_cache([5, 16], n_layers=2, hkv=2, d=8, bs=4, num_blocks=10, shuffle=False)
    per_token = 2 * 2 * 2 * 8 * 4  # K+V · layers · Hkv · D · fp32 bytes
    assert c.nbytes == 10 * 4 * per_token == c.k_pool.nbytes + c.v_pool.nbytes
    assert c.reserved_nbytes == 6 * 4 * per_token
    assert c.used_nbytes == 21 * per_token  # waste: 3 slots in sequence 0's last block


def test_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        PagedKVCache(1, 1, 4, 8, block_size=0)
    with pytest.raises(ValueError, match="num_blocks"):
        PagedKVCache(1, 1, 4, 0)
    with pytest.raises(ValueError, match="budget"):
        PagedKVCache.from_memory(1, 1, 4, budget_bytes=100, block_size=16)
    c = filled_cache([3], n_layers=1, num_blocks=8)
    with pytest.raises(ValueError, match="not a live sequence"):
        c.fork(7, 8)
    with pytest.raises(ValueError, match="already exists"):
        c.fork(0, 0)
    slots = c.reserve(0, 1)
    c.free(0)
    with pytest.raises(ValueError, match="not a live sequence"):
        c.free(0)  # double free
    with pytest.raises(ValueError, match="not owned"):
        c.write(0, slots, torch.zeros(2, 1, 8), torch.zeros(2, 1, 8))  # freed block
    a = BlockAllocator(2)
    with pytest.raises(ValueError, match="double free"):
        a.decref(0)
    c2 = filled_cache([4], n_layers=1)
    q = torch.randn(1, 3, 1, 8)
    with pytest.raises(ValueError, match="divisible"):
        paged_attention(q, c2.k_pool[0], c2.v_pool[0], c2.tables_tensor([0]), torch.tensor([4]))
    with pytest.raises(ValueError, match="seq_lens"):
        paged_attention(torch.randn(1, 2, 1, 8), c2.k_pool[0], c2.v_pool[0],
                        c2.tables_tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="block_tables entries"):
        paged_attention(torch.randn(1, 2, 1, 8), c2.k_pool[0], c2.v_pool[0],
                        torch.tensor([[1000]]), torch.tensor([4]))


@pytest.mark.parametrize("L", [1, 7, 63, 129])
@pytest.mark.parametrize("bpc", [1, 3, None])
def test_single_sequence_decode_shuffled_and_in_place(L, bpc):
    """Batch 1 takes the unmasked fused path with the tail trimmed; both table layouts."""
    for shuffle in (True, False):
        c = filled_cache([L], hkv=2, shuffle=shuffle, seed=L)
        q = torch.randn(1, 4, 1, 8, generator=torch.Generator().manual_seed(L))
        out, lse = paged_attention(q, c.k_pool[1], c.v_pool[1], c.tables_tensor([0]),
                                   torch.tensor([L]), blocks_per_chunk=bpc, return_lse=True)
        k, v = c.gather(0, 1)
        ref, ref_lse = attention_reference(q, k[None], v[None], return_lse=True)
        torch.testing.assert_close(out, ref, **TOL)
        torch.testing.assert_close(lse, ref_lse, **TOL)


def test_tiny_lm_on_a_paged_view_equals_contiguous_and_forks():
    """The KVCache view: chunked prefill + decode on the pool == contiguous cache; a fork
    then diverges without changing the parent's logits."""
    from attnlab.grill.answers._tiny import tiny_lm

    m = tiny_lm(seed=0)
    toks = torch.randint(0, 101, (2, 45), generator=torch.Generator().manual_seed(0))
    c = PagedKVCache(2, 2, 16, num_blocks=40, block_size=8)
    for s in ("a", "b"):
        c.add_sequence(s)
    view = c.batch_view(["a", "b"])
    cont = m.new_cache(2, 60)
    with torch.no_grad():
        for lo, hi in ((0, 29), (29, 30), (30, 45)):
            torch.testing.assert_close(m(toks[:, lo:hi], view), m(toks[:, lo:hi], cont), **TOL)
        c.check_invariants()
        c.fork("a", "a2")  # 45 tokens: the last block (5 of 8) is shared
        nxt = torch.tensor([[7], [9]])
        ref = m(torch.cat([toks[:1], nxt[:1]], 1))[:, -1]
        got_child = m(nxt[1:], c.batch_view(["a2"]))[:, -1]  # child diverges (CoW)
        got_parent = m(nxt[:1], c.batch_view(["a"]))[:, -1]
        torch.testing.assert_close(got_parent, ref, **TOL)
        alt = m(torch.cat([toks[:1], nxt[1:]], 1))[:, -1]
        torch.testing.assert_close(got_child, alt, **TOL)
    c.check_invariants()
    with pytest.raises(ValueError, match="equal lengths"):
        c.batch_view(["a", "b"])


@pytest.mark.parametrize("nq", [1, 5])
def test_value_head_dim_differs(nq):
    g = torch.Generator().manual_seed(5)
    kp, vp = torch.randn(2, 8, 4, 8, generator=g), torch.randn(2, 8, 4, 6, generator=g)
    q = torch.randn(2, 4, nq, 8, generator=g)
    tables, lens = torch.tensor([[3, 1, 2, 0], [5, 6, 7, 4]]), torch.tensor([13, 9])
    out = paged_attention(q, kp, vp, tables, lens, blocks_per_chunk=1)
    ref = paged_attention_reference(q, kp, vp, tables, lens)
    assert out.shape == (2, 4, nq, 6)
    torch.testing.assert_close(out, ref, **TOL)
