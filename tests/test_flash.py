"""Tiled online-softmax attention (FlashAttention-2) vs the reference; memory; bad input."""
import pytest
import torch
from softmax_cases import MASKS, SHAPES, TOL, check_against_reference, make_mask, rand_qkv

from attnlab import masks as M
from attnlab.analysis.allocations import measure_allocations
from attnlab.ops.softmax import attention_reference
from attnlab.ops.softmax.flash import flash_attention


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", MASKS)
def test_flash_matches_reference(shape, mask):
    q, k, v = rand_qkv(*shape, grad=True)
    check_against_reference(flash_attention, q, k, v, make_mask(mask, shape[3], shape[4]),
                            fast_kw={"q_block": 16, "kv_block": 32})


@pytest.mark.parametrize("q_block,kv_block", [(1, 1), (7, 5), (64, 13), (200, 300)])
def test_flash_block_sizes_and_dv(q_block, kv_block):
    q, k, v = rand_qkv(2, 4, 2, 37, 53, 16, Dv=8, grad=True)
    check_against_reference(flash_attention, q, k, v, M.causal(),
                            fast_kw={"q_block": q_block, "kv_block": kv_block})


def test_flash_explicit_positions_and_scale():
    q, k, v = rand_qkv(1, 2, 1, 5, 40, 8, grad=True)
    q_pos, kv_pos = torch.arange(35, 40), torch.arange(40)
    check_against_reference(flash_attention, q, k, v, M.sliding_window(7), q_pos=q_pos,
                            kv_pos=kv_pos, scale=0.3)


def test_flash_never_allocates_nn():
    """The largest tensor created in forward + backward is a tile, far below (N, N); the
    same probe sees the reference's (H, N, N) scores, so it can fail."""
    N = 512
    q, k, v = rand_qkv(1, 2, 2, N, N, 16, grad=True)
    flash = measure_allocations(lambda: flash_attention(
        q, k, v, mask=M.causal(), q_block=64, kv_block=64).sum().backward())
    ref = measure_allocations(lambda: attention_reference(
        q, k, v, mask=M.causal()).sum().backward())
    assert ref.largest_numel >= 2 * N * N
    assert flash.largest_numel < N * N // 8, flash
    assert flash.peak_bytes < ref.peak_bytes / 5, (flash, ref)


def test_flash_low_precision_error_bound():
    """conventions §5: in float16 the error vs a float64 reference is <= 2x the naive path's."""
    q, k, v = rand_qkv(1, 2, 2, 63, 63, 16)
    ref64 = attention_reference(q.double(), k.double(), v.double(), mask=M.causal())
    naive = attention_reference(q.half(), k.half(), v.half(), mask=M.causal()).double()
    fast = flash_attention(q.half(), k.half(), v.half(), mask=M.causal(), q_block=16,
                           kv_block=16)
    assert fast.dtype == torch.float16
    err_fast = (fast.double() - ref64).abs().max()
    err_naive = (naive - ref64).abs().max()
    assert err_fast <= 2 * err_naive + 1e-6, (err_fast, err_naive)


def test_flash_float64():
    q, k, v = [t.double() for t in rand_qkv(1, 2, 1, 9, 20, 8)]
    out = flash_attention(q, k, v, mask=M.causal(), q_block=4, kv_block=4)
    assert out.dtype == torch.float64
    # the reference computes in float32; a float64 dense softmax checks the tiles to 1e-12
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / 8 ** 0.5
    s = s.masked_fill(~M.causal().to_dense(9, 20), float("-inf"))
    want = torch.softmax(s, -1) @ v.repeat_interleave(2, 1)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -3])
def test_flash_rejects_block_sizes(bad):
    q, k, v = rand_qkv(1, 1, 1, 4, 4, 8)
    with pytest.raises(ValueError, match="q_block"):
        flash_attention(q, k, v, q_block=bad)
    with pytest.raises(ValueError, match="kv_block"):
        flash_attention(q, k, v, kv_block=bad)
    with pytest.raises(TypeError, match="q_block"):
        flash_attention(q, k, v, q_block=2.0)


def test_flash_mask_shape_and_nonfinite_policy():
    """Bad masks raise; NaN/inf data follow docs/conventions.md §2 (equal to the reference,
    non-finite entries included) unless check_finite=True asks for a ValueError."""
    q, k, v = rand_qkv(1, 2, 2, 6, 9, 8)
    with pytest.raises(ValueError, match=r"\(Nq, Nk\) = \(6, 9\)"):
        flash_attention(q, k, v, mask=torch.ones(6, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        flash_attention(q, k, v, mask=torch.ones(6, 9))
    for i, name in enumerate("qkv"):
        bad = [x.clone() for x in (q, k, v)]
        bad[i][0, 0, 2, 1] = float("nan")
        with pytest.raises(ValueError, match=rf"{name} contains NaN or inf \(first at index "
                                             rf"\(0, 0, 2, 1\)"):
            flash_attention(*bad, check_finite=True)
        for mask in (None, M.causal()):
            got = flash_attention(*bad, mask=mask, return_lse=True)
            want = attention_reference(*bad, mask=mask, return_lse=True)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **TOL, equal_nan=True)
    inf_k = k.clone()
    inf_k[0, 1, 3, 0] = float("inf")
    for sign in (1.0, -1.0):  # score +inf: lse +inf, out NaN; score -inf: acts as masked
        qs = q.clone()
        qs[0, 1, :, 0] = sign
        got = flash_attention(qs, inf_k, v, return_lse=True)
        want = attention_reference(qs, inf_k, v, return_lse=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL, equal_nan=True)


def test_flash_rejects_integer_dtype():
    q, k, v = [t.long() for t in rand_qkv(1, 1, 1, 3, 3, 4)]
    with pytest.raises(TypeError, match="dtype"):
        flash_attention(q, k, v)


def test_flash_lse_empty_rows():
    q, k, v = rand_qkv(1, 1, 1, 6, 3, 4)
    out, lse = flash_attention(q, k, v, mask=M.causal(), return_lse=True)
    assert torch.isneginf(lse[0, 0, :3]).all() and (out[0, 0, :3] == 0).all()
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=M.causal()), **TOL)
