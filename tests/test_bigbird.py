"""BigBird ITC mask: block structure, seeded random blocks, lowering, exact attention."""
import pytest
import torch

from attnlab import masks as M
from attnlab.masks.bigbird import BigBirdConfig, bigbird_block_table
from attnlab.ops.softmax import attention, attention_reference
from attnlab.ops.softmax.block_sparse import block_sparse_attention

CONFIGS = [  # (N, b, window_blocks, globals, random, causal)
    (64, 8, 3, (0,), 2, False),
    (61, 8, 3, (0, 7), 1, False),  # ragged last block, last block global
    (129, 16, 5, (), 3, False),
    (64, 8, 2, (0,), 2, True),
    (63, 8, 3, (1,), 2, True),
    (7, 4, 1, (0,), 1, True),
]


def brute_force(N, b, w, glob, table_rand, causal):
    """The BigBird rule written out per token pair."""
    out = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        for j in range(N):
            bi, bj = i // b, j // b
            if causal:
                win = 0 <= bi - bj < w
            else:
                win = abs(bi - bj) <= w // 2
            ok = win or bi in glob or bj in glob or bool(table_rand[bi, bj])
            out[i, j] = ok and (j <= i or not causal)
    return out


@pytest.mark.parametrize("N,b,w,glob,r,causal", CONFIGS)
def test_dense_mask_follows_the_rule_and_random_blocks_are_disjoint(N, b, w, glob, r, causal):
    m = M.bigbird(N, b, w, glob, r, causal=causal, seed=3)
    cfg, t = m.bigbird
    assert not (t["window"] & t["random"]).any() and not (t["global"] & t["random"]).any()
    assert not (t["window"] & t["global"]).any()
    nb = cfg.n_blocks
    for row in range(nb):  # min(r, #candidates) random blocks, never fewer
        if row in glob:
            assert not t["random"][row].any()
            continue
        cand = ~(t["window"][row] | t["global"][row])
        if causal:
            cand &= torch.arange(nb) <= row
        assert int(t["random"][row].sum()) == min(r, int(cand.sum()))
    expect = brute_force(N, b, w, set(glob), t["random"], causal)
    assert torch.equal(m.to_dense(N, N), expect)
    assert expect.any(-1).all()  # no row is degenerate


@pytest.mark.parametrize("N,b,w,glob,r,causal", CONFIGS)
def test_native_block_layout_equals_generic_lowering(N, b, w, glob, r, causal):
    m = M.bigbird(N, b, w, glob, r, causal=causal, seed=1)
    sizes = [s for s in (b, 2 * b, 4 * b) if s <= N]
    native = [m.block_layout(N, N, s) for s in sizes]  # memoised from the block table
    m._layouts.clear()
    for s, lay in zip(sizes, native):
        assert torch.equal(lay.kind, M.block_layout(m, N, N, s).kind), s
    # other block sizes go through the generic lowering and stay consistent with dense
    lay = M.block_layout(m, N, N, 4, 8)
    dense = m.to_dense(N, N)
    for qb in range(lay.n_q_blocks):
        full, part = lay.blocks(qb)
        for kb in range(lay.n_kv_blocks):
            tile = dense[qb * 4:(qb + 1) * 4, kb * 8:(kb + 1) * 8]
            assert (kb in full) == bool(tile.all()) and (kb in part) == bool(
                tile.any() and not tile.all())


def test_seed_fixes_the_pattern_and_density_is_linear():
    a = M.bigbird(512, 16, 3, (0,), 2, seed=5).to_dense(512, 512)
    b = M.bigbird(512, 16, 3, (0,), 2, seed=5).to_dense(512, 512)
    c = M.bigbird(512, 16, 3, (0,), 2, seed=6).to_dense(512, 512)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # visible blocks per non-global query block: 3 window + 1 global + 2 random
    for n in (1024, 2048):
        lay = M.bigbird(n, 16, 3, (0,), 2).block_layout(n, n, 16)
        per_row = (lay.kind[0, 0] != M.EMPTY).sum(-1)[1:]
        assert per_row.max() <= 6 and per_row.min() >= 5  # edge rows have 2 window blocks


@pytest.mark.parametrize("N,b,w,glob,r,causal", CONFIGS)
def test_attention_with_bigbird_mask_is_exact_against_reference(N, b, w, glob, r, causal):
    torch.manual_seed(0)
    m = M.bigbird(N, b, w, glob, r, causal=causal)
    q, k, v = torch.randn(2, 4, N, 16), torch.randn(2, 2, N, 16), torch.randn(2, 2, N, 8)
    dense = m.to_dense(N, N)
    ref, lse = attention_reference(q, k, v, mask=dense, return_lse=True)
    explicit = []  # per row softmax over the visible keys, written out
    for i in range(N):
        idx = dense[i].nonzero().flatten()
        kk, vv = k.repeat_interleave(2, 1)[:, :, idx], v.repeat_interleave(2, 1)[:, :, idx]
        p = torch.softmax(q[:, :, i:i + 1] @ kk.transpose(-1, -2) / 4.0, -1)
        explicit.append(p @ vv)
    torch.testing.assert_close(ref, torch.cat(explicit, 2), atol=1e-5, rtol=1e-4)
    for backend in ("sdpa", "block_sparse"):
        out = attention(q, k, v, mask=m, backend=backend)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for blk, impl in ((b, "tiled"), (2 * b, "tiled"), (b, "auto")):  # native block sizes
        out, lse2 = block_sparse_attention(q, k, v, mask=m, q_block=blk, kv_block=blk,
                                           impl=impl, return_lse=True)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lse2, lse, atol=1e-5, rtol=1e-4)
    v16 = torch.randn(2, 2, N, 16)  # the fused path needs Dv == D
    torch.testing.assert_close(
        block_sparse_attention(q, k, v16, mask=m, q_block=b, kv_block=b, impl="fused"),
        attention_reference(q, k, v16, mask=dense), atol=1e-5, rtol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match=r"block_size \(64\) must be <= seq_len \(32\)"):
        M.bigbird(32, 64)
    with pytest.raises(ValueError, match=r"window_blocks \(2\) must be odd"):
        M.bigbird(64, 8, 2)
    with pytest.raises(ValueError, match=r"window_blocks \(9\) must be <= n_blocks \(8"):
        M.bigbird(64, 8, 9)
    with pytest.raises(ValueError, match=r"global_blocks entry \(8\) must be in \[0, 8\)"):
        M.bigbird(64, 8, 3, (8,))
    with pytest.raises(ValueError, match=r"global_blocks must not repeat"):
        M.bigbird(64, 8, 3, (1, 1))
    with pytest.raises(ValueError, match=r"random_blocks \(-1\) must be >= 0"):
        M.bigbird(64, 8, 3, (0,), -1)
    with pytest.raises(TypeError, match=r"block_size must be an int"):
        BigBirdConfig(64, 8.0)
    m = M.bigbird(16, 4)
    with pytest.raises(ValueError, match=r"covers positions \[0, 16\)"):
        m.to_dense(17, 17)


def test_tables_are_boolean_and_square():
    t = bigbird_block_table(BigBirdConfig(100, 10, 3, (0,), 2))
    assert all(x.shape == (10, 10) and x.dtype == torch.bool for x in t.values())
    assert torch.equal(t["all"], t["window"] | t["global"] | t["random"])


@pytest.mark.parametrize("N", [7, 63, 129])
@pytest.mark.parametrize("causal", [False, True])
def test_window_plus_global_tokens_on_the_block_sparse_executor(N, causal):
    """Longformer: window | globals, exact against the reference, with gradients."""
    torch.manual_seed(1)
    m = M.sliding_window(5) | M.global_tokens([0, N // 2])
    if causal:
        m = m & M.causal()
    q, k, v = (torch.randn(2, 4, N, 16, requires_grad=True),
               torch.randn(2, 2, N, 16, requires_grad=True),
               torch.randn(2, 2, N, 16, requires_grad=True))
    w = torch.randn(2, 4, N, 16)
    out, lse = attention(q, k, v, mask=m, backend="block_sparse", return_lse=True)
    (out * w).sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    ref, ref_lse = attention_reference(q, k, v, mask=m, return_lse=True)
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-4)
    for g, x in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, x.grad, atol=1e-5, rtol=1e-4)
    dense = m.to_dense(N, N)
    assert dense[:, 0].all() and (dense[0].all() or causal)  # global row and column


def test_global_token_bad_input():
    with pytest.raises(ValueError, match=r"indices must be < seq_len \(8\), got 9"):
        M.global_tokens([0, 9], seq_len=8)
    with pytest.raises(ValueError, match=r"indices must not repeat"):
        M.global_tokens([3, 3])
    with pytest.raises(ValueError, match=r"window \(0\) must be >= 1"):
        M.sliding_window(0)
