"""Block-sparse executor (fused and tiled) vs the reference; skipping; memory; bad input."""
import pytest
import torch
from softmax_cases import MASKS, SHAPES, TOL, check_against_reference, make_mask, rand_qkv

from attnlab import masks as M
from attnlab.analysis.allocations import measure_allocations
from attnlab.masks.memo import STRUCTURE_MEMO, Memo
from attnlab.ops.softmax import attention_reference
from attnlab.ops.softmax import block_sparse as BS
from attnlab.ops.softmax import fused_calls as FC
from attnlab.ops.softmax.block_sparse import block_kinds, block_sparse_attention, runs
from attnlab.ops.softmax.contract import nonfinite


@pytest.mark.parametrize("impl", ["fused", "tiled"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", MASKS)
def test_block_sparse_matches_reference(impl, shape, mask):
    q, k, v = rand_qkv(*shape, grad=True)
    check_against_reference(block_sparse_attention, q, k, v,
                            make_mask(mask, shape[3], shape[4]),
                            fast_kw={"q_block": 16, "kv_block": 8, "impl": impl})


def test_block_sparse_batch_and_head_dependent_masks():
    """Per-batch document ids and a per-head predicate: the union layout stays exact."""
    docs = torch.tensor([[0] * 10 + [1] * 30, [0] * 25 + [1] * 15])
    per_head = M.Mask(lambda b, h, q, k: (q - k).abs() <= h + 1, "band_by_head", uses_head=True)
    for mask in (M.document(docs) & M.causal(), per_head):
        for impl in ("fused", "tiled"):
            q, k, v = rand_qkv(2, 4, 2, 40, 40, 8, grad=True)
            check_against_reference(block_sparse_attention, q, k, v, mask,
                                    fast_kw={"q_block": 8, "kv_block": 8, "impl": impl})


def test_block_sparse_positions_from_a_cache():
    q, k, v = rand_qkv(1, 4, 2, 3, 50, 8, grad=True)
    check_against_reference(block_sparse_attention, q, k, v, M.sliding_window(11),
                            q_pos=torch.arange(47, 50), kv_pos=torch.arange(50),
                            fast_kw={"q_block": 2, "kv_block": 4})


def test_block_sparse_dv_differs_uses_tiles():
    q, k, v = rand_qkv(2, 2, 1, 33, 33, 16, Dv=8, grad=True)
    check_against_reference(block_sparse_attention, q, k, v, M.sliding_window(6),
                            fast_kw={"q_block": 8, "kv_block": 8})
    with pytest.raises(ValueError, match="v head_dim"):
        block_sparse_attention(q, k, v, mask=M.causal(), impl="fused")


def test_window_rows_are_one_contiguous_run():
    kinds = block_kinds(M.sliding_window(64), 1, 1, 256, 256, 32, 32)
    plan = BS.tile_plan(kinds, 256, 256, 32, 32)
    for _, _, ks in plan.rows:
        assert len(runs(ks)) == 1
    # W = 2 blocks: per query block the diagonal and the window's lower edge are PARTIAL,
    # the block between them FULL (the first two query blocks have no lower edge)
    assert int((kinds == M.PARTIAL).sum()) == 8 + 6
    assert int((kinds == M.FULL).sum()) == 7
    assert int((kinds == M.EMPTY).sum()) == 64 - 21


def test_empty_blocks_are_never_read():
    """NaN in keys/values of EMPTY blocks cannot reach the result: they are not read."""
    q, k, v = rand_qkv(1, 2, 2, 64, 64, 8)
    k2, v2 = k.clone(), v.clone()
    k2[..., :16, :] = float("nan")  # every query of the last 32 rows has these keys masked
    v2[..., :16, :] = float("nan")
    mask = M.sliding_window(8)
    for impl in ("fused", "tiled"):
        out = block_sparse_attention(q[:, :, 32:], k2, v2, mask=mask, impl=impl, q_block=16,
                                     kv_block=16, q_pos=torch.arange(32, 64))
        want = attention_reference(q[:, :, 32:], k, v, mask=mask, q_pos=torch.arange(32, 64))
        torch.testing.assert_close(out, want, **TOL)


def counted_window(w: int):
    """A sliding-window Mask that records how many entries each evaluation covers."""
    calls = []
    base = M.sliding_window(w)

    def fn(b, h, q, k):
        calls.append(q.numel() * k.numel())
        return base(b, h, q, k)

    return M.Mask(fn, "counted_window", kv_bounds=base._kv_bounds), base, calls


def test_mask_evaluated_only_on_partial_blocks():
    mask, _, calls = counted_window(16)
    q, k, v = rand_qkv(1, 1, 1, 256, 256, 8)
    layout = M.block_layout(mask, 256, 256, 32, 32)  # lowering itself is memoised
    calls.clear()
    block_sparse_attention(q, k, v, mask=mask, q_block=32, kv_block=32)
    n_partial = layout.counts()["partial"]
    assert sum(calls) == n_partial * 32 * 32


def test_block_sparse_memory_is_linear():
    N = 2048  # the tiled engine joins contiguous blocks into segments of up to 1024 keys
    q, k, v = rand_qkv(1, 2, 2, N, N, 16, grad=True)
    for impl in ("fused", "tiled"):
        rep = measure_allocations(lambda impl=impl: block_sparse_attention(
            q, k, v, mask=M.causal(), q_block=64, kv_block=64, impl=impl).sum().backward())
        assert rep.largest_numel < N * N // 4, rep


def test_block_sparse_fp16_runs_fused():
    q, k, v = rand_qkv(1, 2, 2, 40, 40, 16)
    ref64 = attention_reference(q.double(), k.double(), v.double(), mask=M.sliding_window(9))
    naive = attention_reference(q.half(), k.half(), v.half(), mask=M.sliding_window(9))
    out = block_sparse_attention(q.half(), k.half(), v.half(), mask=M.sliding_window(9),
                                 q_block=16, kv_block=16)
    assert out.dtype == torch.float16
    assert (out.double() - ref64).abs().max() <= 2 * (naive.double() - ref64).abs().max() + 1e-6


def test_block_sparse_bad_input():
    q, k, v = rand_qkv(1, 2, 1, 8, 8, 8)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="q_block"):
            block_sparse_attention(q, k, v, mask=M.causal(), q_block=bad)
        with pytest.raises(ValueError, match="kv_block"):
            block_sparse_attention(q, k, v, mask=M.causal(), kv_block=bad)
    with pytest.raises(ValueError, match="impl"):
        block_sparse_attention(q, k, v, mask=M.causal(), impl="cuda")
    with pytest.raises(ValueError, match=r"\(Nq, Nk\) = \(8, 8\)"):
        block_sparse_attention(q, k, v, mask=torch.ones(8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="q_pos"):
        block_sparse_attention(q, k, v, mask=M.causal(), q_pos=torch.arange(5))
    for impl in ("fused", "tiled"):
        bad = q.clone()
        bad[0, 1, 3, 0] = float("nan")
        with pytest.raises(ValueError, match=r"q contains NaN or inf \(first at index"):
            block_sparse_attention(bad, k, v, mask=M.causal(), impl=impl, check_finite=True)
        got = block_sparse_attention(bad, k, v, mask=M.causal(), impl=impl, return_lse=True)
        want = attention_reference(bad, k, v, mask=M.causal(), return_lse=True)
        for a, b in zip(got, want):  # docs/conventions.md §2: row (0, 1, 3) is NaN
            torch.testing.assert_close(a, b, **TOL, equal_nan=True)


def test_window_blocks_are_batched_into_few_calls_and_stay_exact():
    """Interior blocks of a window share run length, offset and mask: one batched call."""
    mask = M.sliding_window(20)
    kinds = block_kinds(mask, 2, 4, 200, 200, 8, 8)
    plan = BS.tile_plan(kinds, 200, 200, 8, 8)
    tm = BS.make_tile_mask(mask, 2, 4, 200, 200)
    items = list(BS._schedule(plan, tm, 2, 2, 2, 16, torch.float32))
    assert max(len(it.q0s) for it in items) > 10 and len(items) < 25 // 2
    q, k, v = rand_qkv(2, 4, 2, 200, 200, 16, grad=True)
    check_against_reference(block_sparse_attention, q, k, v, mask,
                            fast_kw={"q_block": 8, "kv_block": 8})
    old = BS.BATCH_COPY_BYTES
    try:  # a small copy budget splits the batches; same answer
        BS.BATCH_COPY_BYTES = 2 * 2 * 2 * 32 * 16 * 4 * 3  # K+V, B, Hkv, run, D, fp32, 3 blocks
        assert max(len(it.q0s) for it in BS._schedule(plan, tm, 2, 2, 2, 16, torch.float32)) == 3
        check_against_reference(block_sparse_attention, q, k, v, mask,
                                fast_kw={"q_block": 8, "kv_block": 8})
    finally:
        BS.BATCH_COPY_BYTES = old


@pytest.mark.parametrize("mask", ["causal", "window", "window_global", "document_causal",
                                  "prefix_lm"])
def test_full_stretches_split_into_unmasked_calls(mask, monkeypatch):
    """Long FULL stretches become unmasked runs merged with the masked ones: same answer."""
    monkeypatch.setattr(BS, "SPLIT_FULL_MIN", 8)
    m = make_mask(mask, 129, 129)
    ks = BS.tile_plan(block_kinds(M.causal(), 1, 1, 129, 129, 8, 8), 129, 129, 8, 8).rows[-2][2]
    assert runs(ks) == [(0, 120, []), (120, 128, [(120, 128)])]  # unmasked + diagonal
    q, k, v = rand_qkv(2, 4, 2, 129, 129, 16, grad=True)
    check_against_reference(block_sparse_attention, q, k, v, m,
                            fast_kw={"q_block": 8, "kv_block": 8, "impl": "fused"})


def test_fused_schedule_memoised_on_the_mask():
    """A layer calls again with the same Mask: the second call evaluates no predicate and
    gives the same output and gradients; the memo stays bounded; calls with explicit
    positions are never memoised."""
    mask, base, calls = counted_window(16)
    q, k, v = rand_qkv(1, 4, 2, 200, 200, 8)
    first = block_sparse_attention(q, k, v, mask=mask, q_block=32, kv_block=32, impl="fused")
    assert calls
    calls.clear()
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    again = block_sparse_attention(qg, kg, vg, mask=mask, q_block=32, kv_block=32, impl="fused")
    assert calls == []  # schedule (masks included) came from the memo
    assert torch.equal(first, again.detach())
    again.square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    attention_reference(*ref, mask=base).square().sum().backward()
    for got, want in zip((qg, kg, vg), ref):
        torch.testing.assert_close(got.grad, want.grad, **TOL)
    mask._layouts.max_entries = 6
    for n in (40, 72, 104, 136, 168):  # more shapes: the oldest entries are dropped
        q2, k2, v2 = rand_qkv(1, 4, 2, n, n, 8)
        out = block_sparse_attention(q2, k2, v2, mask=mask, q_block=32, kv_block=32)
        torch.testing.assert_close(out, attention_reference(q2, k2, v2, mask=base),
                                   **TOL)
    assert len(mask._layouts) == 6
    n_kept = len(mask._layouts)
    calls.clear()
    pos = torch.arange(200)
    block_sparse_attention(q, k, v, mask=mask, q_block=32, kv_block=32, q_pos=pos, kv_pos=pos)
    assert calls  # explicit positions: evaluated again, not memoised
    assert len(mask._layouts) == n_kept


def test_fresh_identical_masks_share_layout_and_schedule(monkeypatch):
    """The memo is keyed by the mask's structure: `sliding_window(16)` built afresh per call
    reuses the plan and schedule; another window or a user mask that merely carries the
    name does not."""
    STRUCTURE_MEMO.clear()
    built, orig = [], BS._schedule

    def counting(*a):
        built.append(1)
        yield from orig(*a)

    monkeypatch.setattr(BS, "_schedule", counting)
    q, k, v = rand_qkv(1, 2, 2, 96, 96, 8)
    want = attention_reference(q, k, v, mask=M.sliding_window(16))
    for _ in range(3):
        out = block_sparse_attention(q, k, v, mask=M.sliding_window(16), q_block=32, kv_block=32)
        torch.testing.assert_close(out, want, **TOL)
    assert len(built) == 1
    block_sparse_attention(q, k, v, mask=M.sliding_window(17), q_block=32, kv_block=32)
    assert len(built) == 2
    named = M.Mask(lambda b, h, qi, ki: qi >= ki, "sliding_window(16)")
    out = block_sparse_attention(q, k, v, mask=named, q_block=32, kv_block=32)
    assert len(built) == 3
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=M.causal()), **TOL)


def test_memo_is_bounded_in_entries_and_bytes():
    memo = Memo(max_entries=3, max_bytes=100)
    for i in range(5):
        memo.put(i, str(i), 10)
    assert memo.keys() == [2, 3, 4]
    memo.get(2)  # recently used: kept
    memo.put("big", "x", 80)
    assert memo.keys() == [4, 2, "big"] and memo.nbytes == 100  # 3 was the oldest
    memo.put("more", "z", 15)  # over 100 bytes: the oldest go until it fits
    assert memo.keys() == ["big", "more"] and memo.nbytes == 95
    memo.put("huge", "y", 101)  # alone over the budget: not kept
    assert "huge" not in memo


def test_large_schedules_stay_lazy(monkeypatch):
    monkeypatch.setattr(BS, "SCHEDULE_MEMO_BYTES", 1)
    STRUCTURE_MEMO.clear()
    mask = M.causal()
    q, k, v = rand_qkv(1, 2, 2, 96, 96, 8)
    block_sparse_attention(q, k, v, mask=mask, q_block=32, kv_block=32, impl="fused")
    assert not [key for key in STRUCTURE_MEMO if "fused schedule" in key]


def test_result_check_one_reduction_then_elementwise():
    from attnlab.ops.softmax.flash import check_result

    lse = torch.zeros(1, 1, 4)
    huge = torch.full((1, 1, 4, 2), 3e38)  # finite entries whose sum overflows
    check_result(huge, lse)  # no error: the elementwise test clears it
    for bad in (float("nan"), float("inf")):
        out = torch.zeros(1, 1, 4, 2)
        out[0, 0, 2, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            check_result(out, lse)
    with pytest.raises(ValueError, match="NaN or inf"):
        check_result(torch.zeros(1, 1, 4, 2), torch.tensor([[[0.0, float("nan"), 0, 0]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["native", "float32", "auto"])
def test_stacked_window_blocks_as_views_every_dtype(dtype, mode, monkeypatch):
    """Stacked interior blocks read K/V through strided views with (B, Hkv) folded into the
    kernel's heads: batch 2, GQA groups of 2, a per-head mask, odd length; low precision
    computed natively or widened to float32 (conventions §5: error ≤ 2× the naive path's
    in the same dtype, against float64). Gradients flow in every mode."""
    monkeypatch.setattr(FC, "LOWP_COMPUTE", mode)
    per_head = M.Mask(lambda b, h, q, k: (k <= q) & (q - k <= 6 + 3 * h), "band_by_head",
                      uses_head=True)
    for mask in (M.sliding_window(13), per_head):
        q, k, v = rand_qkv(2, 4, 2, 203, 203, 16)
        ref64 = attention_reference(q.double(), k.double(), v.double(), mask=mask,
                                    return_lse=True)
        lq, lk, lv = (t.to(dtype).requires_grad_() for t in (q, k, v))
        out, lse = block_sparse_attention(lq, lk, lv, mask=mask, q_block=8, kv_block=8,
                                          return_lse=True)
        assert out.dtype == dtype and lse.dtype == torch.float32
        items = list(BS._schedule(BS.tile_plan(block_kinds(mask, 2, 4, 203, 203, 8, 8), 203,
                                               203, 8, 8),
                                  BS.make_tile_mask(mask, 2, 4, 203, 203), 2, 2, 2, 16,
                                  torch.float32))
        assert max(len(it.q0s) for it in items) > 5  # the view path ran
        if dtype == torch.float32:
            torch.testing.assert_close(out.double(), ref64[0], **TOL)
            torch.testing.assert_close(lse.double(), ref64[1], **TOL)
        else:
            naive = attention_reference(lq.detach(), lk.detach(), lv.detach(), mask=mask)
            err = (out.double() - ref64[0]).abs().max()
            assert err <= 2 * (naive.double() - ref64[0]).abs().max() + 1e-3
            assert (lse.double() - ref64[1]).abs().max() <= 2e-2
        out.float().sum().backward()
        assert all(t.grad.dtype == dtype and bool(torch.isfinite(t.grad).all())
                   for t in (lq, lk, lv))


def test_low_precision_compute_dtype_choice(monkeypatch):
    """float32/float64 compute in their own dtype; float16/bfloat16 in their own dtype or in
    float32, forced or measured once per process (the answer is memoised)."""
    assert FC.compute_dtype(torch.float32) == torch.float32
    assert FC.compute_dtype(torch.float64) == torch.float64
    monkeypatch.setattr(FC, "LOWP_COMPUTE", "float32")
    assert FC.compute_dtype(torch.bfloat16) == torch.float32
    monkeypatch.setattr(FC, "LOWP_COMPUTE", "native")
    assert FC.compute_dtype(torch.float16) == torch.float16
    monkeypatch.setattr(FC, "LOWP_COMPUTE", "auto")
    monkeypatch.setattr(FC, "_LOWP_FAST", {})
    first = FC.compute_dtype(torch.bfloat16)
    assert first in (torch.bfloat16, torch.float32)
    assert set(FC._LOWP_FAST) == {torch.bfloat16}
    monkeypatch.setattr(FC, "_FLASH", None)  # measured once: not called again
    assert FC.compute_dtype(torch.bfloat16) == first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nonfinite_probe_low_precision(dtype):
    """The aminmax probe sees NaN and ±inf anywhere and never overflows on finite data."""
    big = torch.full((4096,), 60000.0 if dtype == torch.float16 else 3e38).to(dtype)
    assert not nonfinite(big, big)  # a float16 sum would overflow to inf here
    for bad in (float("nan"), float("inf"), -float("inf")):
        for pos in (0, 2047, 4095):
            t = torch.randn(4096).to(dtype)
            t[pos] = bad
            assert nonfinite(torch.randn(3).to(dtype), t)


def test_default_blocks_follow_the_mask_structure():
    """Narrow sliding windows get small blocks (less waste in the partial blocks); wide
    windows, causal and masks without a window keep 128 × 128."""
    assert FC.default_blocks(M.sliding_window(512).window) == FC.NARROW_BLOCKS
    assert FC.default_blocks(M.sliding_window(4096).window) == FC.BLOCKS
    assert FC.default_blocks(M.causal().window) == FC.BLOCKS
    assert FC.default_blocks(None) == FC.BLOCKS
    q, k, v = rand_qkv(1, 2, 2, 300, 300, 16, grad=True)  # default blocks, exact
    check_against_reference(block_sparse_attention, q, k, v, M.sliding_window(40))
