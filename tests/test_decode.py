"""Split-KV decoding vs the reference for every chunk count; GQA read sharing; bad input."""
import pytest
import torch
from softmax_cases import MASKS, TOL, check_against_reference, make_mask, rand_qkv

from attnlab import masks as M
from attnlab.analysis.allocations import measure_allocations
from attnlab.ops.softmax import attention_reference, merge, merge_many
from attnlab.ops.softmax.decode import decode_attention

DECODE_SHAPES = [  # B, Hq, Hkv, Nq, Nk, D
    (1, 8, 2, 1, 129, 16), (2, 4, 1, 3, 63, 8), (2, 4, 4, 1, 7, 8), (1, 2, 1, 5, 3, 8),
]


@pytest.mark.parametrize("shape", DECODE_SHAPES)
@pytest.mark.parametrize("mask", MASKS)
def test_decode_matches_reference(shape, mask):
    q, k, v = rand_qkv(*shape, grad=True)
    check_against_reference(decode_attention, q, k, v, make_mask(mask, shape[3], shape[4]),
                            fast_kw={"chunk": 16})


@pytest.mark.parametrize("shape", DECODE_SHAPES)
@pytest.mark.parametrize("mask", MASKS)
def test_decode_fused_chunks_match_reference(shape, mask):
    """Inference path (torch's fused kernel per chunk): same out and lse as the reference."""
    q, k, v = rand_qkv(*shape)
    check_against_reference(decode_attention, q, k, v, make_mask(mask, shape[3], shape[4]),
                            grads=False, fast_kw={"chunk": 16, "impl": "fused"})


def test_decode_fused_refuses_gradients_and_dv():
    q, k, v = rand_qkv(1, 4, 2, 1, 40, 8, grad=True)
    with pytest.raises(ValueError, match="inference-only"):
        decode_attention(q, k, v, impl="fused")
    q2, k2, v2 = rand_qkv(1, 4, 2, 1, 40, 8, Dv=4)
    with pytest.raises(ValueError, match="v head_dim"):
        decode_attention(q2, k2, v2, impl="fused")
    with pytest.raises(ValueError, match="impl"):
        decode_attention(q2, k2, v2, impl="gpu")
    torch.testing.assert_close(decode_attention(q2, k2, v2, chunk=8),  # auto -> matmul
                               attention_reference(q2, k2, v2), **TOL)


def test_decode_every_chunk_count():
    """Split into 1, 2, ..., Nk chunks: always the reference's answer."""
    q, k, v = rand_qkv(2, 8, 2, 2, 37, 16)
    want, want_lse = attention_reference(q, k, v, mask=M.causal(), return_lse=True)
    for chunk in range(1, 38):
        for impl in ("fused", "matmul"):
            out, lse = decode_attention(q, k, v, mask=M.causal(), chunk=chunk, impl=impl,
                                        return_lse=True)
            torch.testing.assert_close(out, want, **TOL)
            torch.testing.assert_close(lse, want_lse, **TOL)


def test_merge_over_random_key_partitions_equals_full():
    """merge / merge_many of attention over a random partition of the keys == full."""
    g = torch.Generator().manual_seed(3)
    q, k, v = rand_qkv(2, 4, 2, 5, 50, 8)
    want, want_lse = attention_reference(q, k, v, return_lse=True)
    for trial in range(5):
        parts = torch.randint(0, 4, (50,), generator=g)
        outs, lses = [], []
        for p in range(4):
            keep = (parts == p).expand(5, 50)  # (Nq, Nk): keys of part p
            o, lse = attention_reference(q, k, v, mask=keep, return_lse=True)
            outs.append(o)
            lses.append(lse)
        o, lse = merge_many(outs, lses)
        torch.testing.assert_close(o, want, **TOL)
        torch.testing.assert_close(lse, want_lse, **TOL)
        o2, lse2 = outs[0], lses[0]
        for o_p, l_p in zip(outs[1:], lses[1:]):
            o2, lse2 = merge(o2, lse2, o_p, l_p)
        torch.testing.assert_close(o2, want, **TOL)


def test_decode_reads_each_kv_head_once_for_its_group():
    """GQA: no (B, Hq, Nk, D) copy of the cache is made; the largest tensor is a chunk's
    scores or the cache-sized inputs themselves (not counted), never an expanded K."""
    q, k, v = rand_qkv(1, 8, 2, 1, 4096, 32)
    rep = measure_allocations(lambda: decode_attention(q, k, v, chunk=512))
    assert rep.largest_numel <= 8 * 512, rep  # one chunk's scores (Hq·Nq·chunk)
    ref = measure_allocations(lambda: attention_reference(q, k, v))
    assert ref.largest_numel >= 8 * 4096 * 32  # the reference repeats K/V per query head


def test_decode_skips_fully_masked_chunks():
    q, k, v = rand_qkv(1, 2, 1, 1, 64, 8)
    k2, v2 = k.clone(), v.clone()
    k2[..., :40, :] = float("nan")  # outside the window of the last query: never read
    out = decode_attention(q, k2, v2, mask=M.sliding_window(16), chunk=8)
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=M.sliding_window(16)),
                               **TOL)


def test_decode_fp16_and_bad_input():
    q, k, v = rand_qkv(1, 4, 2, 1, 100, 16)
    out = decode_attention(q.half(), k.half(), v.half(), chunk=32)
    assert out.dtype == torch.float16
    ref64 = attention_reference(q.double(), k.double(), v.double())
    naive = attention_reference(q.half(), k.half(), v.half())
    assert (out.double() - ref64).abs().max() <= 2 * (naive.double() - ref64).abs().max() + 1e-6
    for bad in (0, -2):
        with pytest.raises(ValueError, match="chunk"):
            decode_attention(q, k, v, chunk=bad)
    with pytest.raises(ValueError, match=r"\(Nq, Nk\) = \(1, 100\)"):
        decode_attention(q, k, v, mask=torch.ones(1, 99, dtype=torch.bool))
    vb = v.clone()
    vb[0, 1, 50, 3] = float("inf")
    with pytest.raises(ValueError, match=r"v contains NaN or inf \(first at index \(0, 1, 50, 3\)"):
        decode_attention(q, k, vb, check_finite=True)
    out, lse = decode_attention(q, k, vb, return_lse=True)  # column 3 of heads 2, 3 is inf
    want, want_lse = attention_reference(q, k, vb, return_lse=True)
    torch.testing.assert_close(out, want, **TOL, equal_nan=True)
    torch.testing.assert_close(lse, want_lse, **TOL)
