"""The numba split-KV kernel == torch split-KV == reference; auto picks it only where it
applies (float32, contiguous, no grad) and falls back to the torch path otherwise."""
import pytest
import torch
from softmax_cases import MASKS, TOL, make_mask, rand_qkv

from attnlab import masks as M
from attnlab.ops.softmax import attention_reference, kv_native
from attnlab.ops.softmax import decode_numba as dn
from attnlab.ops.softmax.decode import decode_attention

pytest.importorskip("numba", reason="numba not installed (optional extra 'fast'); the "
                    "numba decode path is not available, the torch path is used")

SHAPES = [  # B, Hq, Hkv, Nq, Nk, D   (GQA groups 4, 1, 2; batch 1 and 2)
    (2, 8, 2, 1, 1, 16), (1, 4, 4, 3, 7, 8), (2, 4, 2, 3, 129, 16), (1, 8, 2, 1, 5000, 32),
]


def _check(q, k, v, mask, chunk):
    out, lse = decode_attention(q, k, v, mask=mask, chunk=chunk, impl="numba", return_lse=True)
    ref, ref_lse = attention_reference(q, k, v, mask=mask, return_lse=True)
    tor, tor_lse = decode_attention(q, k, v, mask=mask, chunk=chunk, impl="torch",
                                    return_lse=True)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(lse, ref_lse, **TOL)
    torch.testing.assert_close(out, tor, **TOL)
    torch.testing.assert_close(lse, tor_lse, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", MASKS)
def test_numba_matches_reference_and_torch(shape, mask):
    q, k, v = rand_qkv(*shape)
    _check(q, k, v, make_mask(mask, shape[3], shape[4]), chunk=48)


def test_numba_every_chunk_count_and_dv():
    q, k, v = rand_qkv(2, 8, 2, 3, 37, 16, Dv=8)  # Dv != D
    for chunk in range(1, 38):
        _check(q, k, v, M.causal(), chunk)


def test_numba_fully_masked_rows_give_zero_and_neg_inf():
    q, k, v = rand_qkv(2, 4, 2, 3, 70, 8)
    keep = torch.rand(2, 4, 3, 70, generator=torch.Generator().manual_seed(1)) > 0.5
    keep[0, 1, 2] = False  # one row sees no key
    keep[1, :, 0] = False  # query 0 of batch 1 sees no key in any head
    _check(q, k, v, keep, chunk=16)
    out, lse = decode_attention(q, k, v, mask=keep, chunk=16, impl="numba", return_lse=True)
    assert bool((out[0, 1, 2] == 0).all()) and lse[0, 1, 2] == float("-inf")
    assert bool((out[1, :, 0] == 0).all()) and bool(torch.isneginf(lse[1, :, 0]).all())


def test_numba_masked_keys_are_not_read_and_nan_is_reported():
    q, k, v = rand_qkv(1, 2, 1, 1, 64, 8)
    k2, v2 = k.clone(), v.clone()
    k2[..., :40, :] = float("nan")  # outside the window of the last query
    v2[..., :40, :] = float("nan")
    out = decode_attention(q, k2, v2, mask=M.sliding_window(16), chunk=8, impl="numba")
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=M.sliding_window(16)),
                               **TOL)
    with pytest.raises(ValueError, match="NaN or inf"):
        decode_attention(q, k2, v2, chunk=8, impl="numba", check_finite=True)
    got = decode_attention(q, k2, v2, chunk=8, impl="numba", return_lse=True)
    want = attention_reference(q, k2, v2, return_lse=True)  # visible NaN: rows are NaN
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL, equal_nan=True)


def _count_numba_calls(monkeypatch):
    calls = []
    real = dn.decode_numba
    monkeypatch.setattr(dn, "decode_numba", lambda *a: calls.append(1) or real(*a))
    return calls


def test_auto_uses_numba_when_it_applies(monkeypatch):
    calls = _count_numba_calls(monkeypatch)
    q, k, v = rand_qkv(2, 8, 2, 2, 100, 16)  # Nq = 2: the fp32 kernel of decode_numba
    out = decode_attention(q, k, v, chunk=32)
    assert calls == [1]
    torch.testing.assert_close(out, attention_reference(q, k, v), **TOL)


@pytest.mark.skipif(not kv_native.available(), reason="the native kernel does not build here")
def test_auto_sends_single_token_fp32_decode_to_the_native_kernel(monkeypatch):
    calls = _count_numba_calls(monkeypatch)
    native = []
    real = kv_native.run
    monkeypatch.setattr(kv_native, "run", lambda *a: native.append(1) or real(*a))
    q, k, v = rand_qkv(2, 8, 2, 1, 100, 16)
    out = decode_attention(q, k, v, chunk=32)
    assert calls == [] and native == [1]
    torch.testing.assert_close(out, attention_reference(q, k, v), **TOL)


def test_auto_falls_back_to_torch_with_grad_fp16_noncontiguous_or_forced(monkeypatch):
    calls = _count_numba_calls(monkeypatch)
    q, k, v = rand_qkv(2, 8, 2, 2, 100, 16, grad=True)
    out = decode_attention(q, k, v, chunk=32)  # grad required: differentiable torch path
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    with pytest.raises(ValueError, match="impl 'numba'"):
        decode_attention(q, k, v, impl="numba")
    with torch.no_grad():  # no grad needed: numba applies even to leaf tensors with grad
        torch.testing.assert_close(decode_attention(q, k, v, chunk=32), out.detach(), **TOL)
    assert calls == [1]
    q, k, v = rand_qkv(1, 4, 2, 1, 50, 8)
    decode_attention(q.half(), k.half(), v.half())  # not float32
    kt = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided last dim
    vt = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(decode_attention(q, kt, vt), attention_reference(q, k, v), **TOL)
    decode_attention(q, k, v, impl="torch")  # forced torch path
    assert calls == [1]
    with pytest.raises(ValueError, match="impl 'numba'"):
        decode_attention(q, kt, v, impl="numba")


# R = G·Nq == 4 takes the specialised kernel (4 rows per K/V read, block exp, p·V four keys
# per pass); other R the generic one. Odd lengths leave partial key blocks and 4-key groups.
_NUMBA_SHAPES = [  # B, Hq, Hkv, Nq, Nk, D
    (1, 32, 8, 1, 1001, 128), (2, 8, 2, 2, 77, 16),  # R = 4
    (1, 3, 1, 1, 203, 32), (2, 10, 2, 1, 131, 8),  # R = 3, 5: generic kernel
]
# tiny chunks only on the short caches (a 1001-key cache in 1-key chunks adds nothing
# the short shapes do not cover, at 1000 merges per call)
_NUMBA_CASES = [(shape, chunk) for shape in _NUMBA_SHAPES for chunk in (1, 7, 33, 100, 8192)
                if shape[4] <= 500 or chunk >= 33]


@pytest.mark.parametrize(("shape", "chunk"), _NUMBA_CASES)
@pytest.mark.parametrize("mask", MASKS)
def test_numba_fast_and_generic_rows_match_torch(shape, mask, chunk):
    q, k, v = rand_qkv(*shape)
    _check(q, k, v, make_mask(mask, shape[3], shape[4]), chunk)


def test_numba_fast_path_wide_score_range_and_masked_nan_values():
    q, k, v = rand_qkv(1, 8, 2, 1, 300, 16)
    q = q * 30.0  # scores spread over tens of units: exercises the exp range reduction
    _check(q, k, v, None, chunk=64)
    keep = torch.rand(1, 8, 1, 300, generator=torch.Generator().manual_seed(2)) > 0.3
    keep[..., 5:9] = False  # 4 consecutive keys masked for every row of the group
    k2, v2 = k.clone(), v.clone()
    k2[..., 5:9, :] = float("nan")
    v2[..., 5:9, :] = float("nan")
    out = decode_attention(q, k2, v2, mask=keep, chunk=64, impl="numba")
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=keep), **TOL)


def test_block_exp_accuracy_and_special_values():
    import numpy as np
    dn._kernel()
    x = np.concatenate([-np.logspace(-8, np.log10(87.0), 4000), -np.linspace(0, 86.9, 4000),
                        [0.0, -1e-30, -87.0, -88.0, -200.0, -np.inf, np.nan]]).astype(np.float32)
    ib = np.empty(x.size, dtype=np.int32)
    p = np.empty_like(x)
    dn._EXP(x, x.size, ib, ib.view(np.float32), p)
    want = np.exp(x.astype(np.float64))
    ok = x >= -87.0
    rel = np.abs(p[ok] - want[ok]) / want[ok]
    assert rel.max() <= 1e-6
    assert p[x == 0][0] == 1.0 and bool((p[(x < -87.0)] == 0).all())  # −inf and underflow → 0
    assert np.isnan(p[-1])


# R == 4 p·V pass: one value-row load updates the 4 accumulator rows. Dv of 1, 8, 24, 40
# and 129 (odd, not a multiple of a 16-lane vector) and cache lengths that leave partial
# key blocks (KEY_BLOCK = 32) in every chunk; Dv != D.
@pytest.mark.parametrize("Dv", [1, 8, 24, 40, 129])
@pytest.mark.parametrize("mask", ["none", "causal", "window", "bool"])
@pytest.mark.parametrize("chunk", [1, 7, 33, 8192])
def test_numba_fast_path_value_widths_and_partial_blocks(Dv, mask, chunk):
    q, k, v = rand_qkv(2, 8, 2, 1, 97, 16, Dv=Dv)  # R = 4: G = 4, Nq = 1
    _check(q, k, v, make_mask(mask, 1, 97), chunk)


def test_numba_fast_path_masked_keys_no_row_sees_are_not_read():
    q, k, v = rand_qkv(1, 4, 1, 1, 71, 8, Dv=24)  # R = 4, one KV head
    keep = torch.rand(1, 4, 1, 71, generator=torch.Generator().manual_seed(3)) > 0.4
    keep[..., 32:45] = False  # a run of keys across a key-block boundary, hidden from all rows
    k2, v2 = k.clone(), v.clone()
    v2[..., 32:45, :] = float("nan")  # would poison every row if it were read
    k2[..., 32:45, :] = float("inf")
    for chunk in (7, 33, 8192):
        out = decode_attention(q, k2, v2, mask=keep, chunk=chunk, impl="numba")
        torch.testing.assert_close(out, attention_reference(q, k, v, mask=keep), **TOL)


@pytest.mark.parametrize("G", [4, 2])  # the R == 4 kernel and the generic one
def test_numba_nan_score_survives_a_masked_key_after_it(G):
    """Finding 6 of issue 12: a NaN score followed by a masked key in the same key block
    lost the NaN (the masked −inf replaced it in the running max) and the row came back
    0 / −inf; conventions §2 wants the row NaN."""
    q, k, v = rand_qkv(1, G, 1, 1, 6, 8)
    k[0, 0, 2] = float("nan")  # visible key 2 gives a NaN score
    keep = torch.ones(1, 1, G, 6, dtype=torch.bool)
    keep[..., 3:] = False  # keys after the NaN are masked
    o, lse = dn.decode_numba(q.reshape(1, 1, G, 8), k, v, 8 ** -0.5, 6, keep)
    assert bool(torch.isnan(lse).all()), lse
    assert bool(torch.isnan(o).all())
