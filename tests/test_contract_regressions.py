"""One regression test per finding of the `attention()` contract issue (each failed before
the backends became records over one validated call; docs/conventions.md §1, §2, §3, §6).
The fuzz suite (tests/fuzz/) pins the same findings with @example."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from softmax_cases import TOL, rand_qkv

from attnlab import masks as M
from attnlab.ops.softmax import (
    BACKENDS,
    attention,
    attention_reference,
    block_sparse_attention,
    decode_attention,
    flash_attention,
    merge,
)

ALL = ["reference", "flash", "block_sparse", "decode", "sdpa", "auto"]
WITH_LSE = ["reference", "flash", "block_sparse", "decode", "auto"]


def same(got, want, **tol):
    """Equal element by element, NaN and ±inf included."""
    torch.testing.assert_close(got, want, equal_nan=True, **(tol or TOL))


def test_1_decode_accepts_a_q_whose_last_dim_is_strided():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 4, 4, 3 * 16, generator=g)
    q = qkv[..., 0::3]  # (1, 4, 4, 16), last-dim stride 3
    k, v = torch.randn(1, 2, 4096, 16, generator=g), torch.randn(1, 2, 4096, 16, generator=g)
    for impl in ("auto", "torch", "fused", "matmul"):
        same(decode_attention(q, k, v, mask=M.causal(), impl=impl),
             attention_reference(q, k, v, mask=M.causal()))
    same(attention(q, k, v, mask=M.causal()), attention_reference(q, k, v, mask=M.causal()))


def test_2_strided_inputs_with_lse_are_exact_and_sdpa_refuses_lse():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 4, 33, 3 * 16, generator=g, requires_grad=True)
    q, k, v = qkv[..., 0::3], qkv[..., 1::3], qkv[..., 2::3]  # interleaved views
    for backend in WITH_LSE:
        out, lse = attention(q, k, v, mask=M.causal(), backend=backend, return_lse=True)
        ref, ref_lse = attention_reference(q, k, v, mask=M.causal(), return_lse=True)
        same(out, ref)
        same(lse, ref_lse)
        (ga,) = torch.autograd.grad((out * ref.detach()).sum() + lse.sum(), qkv)
        (gb,) = torch.autograd.grad((ref * ref.detach()).sum() + ref_lse.sum(), qkv)
        same(ga, gb, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match=r"backend 'sdpa' does not support return_lse"):
        attention(q, k, v, backend="sdpa", return_lse=True)


@pytest.mark.parametrize("backend", ["flash", "block_sparse", "decode", "auto"])
def test_3_lse_is_differentiable_so_merged_halves_backpropagate_exactly(backend):
    q, k, v = rand_qkv(1, 4, 2, 16, 32, 8, grad=True)
    kw = {"q_pos": torch.arange(16, 32), "backend": backend, "return_lse": True}
    o1, l1 = attention(q, k[:, :, :16], v[:, :, :16], kv_pos=torch.arange(16), **kw)
    o2, l2 = attention(q, k[:, :, 16:], v[:, :, 16:], kv_pos=torch.arange(16, 32), **kw)
    assert l1.requires_grad and l2.requires_grad
    out, _ = merge(o1, l1, o2, l2)
    ref = attention_reference(q, k, v)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        same(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ALL)
def test_4_a_nan_query_poisons_its_row_on_every_backend(backend):
    q, k, v = rand_qkv(1, 2, 1, 5, 7, 8)
    q[0, 1, 2, 3] = math.nan
    out = attention(q, k, v, backend=backend)
    assert torch.isnan(out[0, 1, 2]).all() and torch.isfinite(out[0, 0]).all()
    same(out, attention_reference(q, k, v))
    if backend != "sdpa":
        lse = attention(q, k, v, backend=backend, return_lse=True)[1]
        assert math.isnan(lse[0, 1, 2]) and torch.isfinite(lse[0, 0]).all()
    with pytest.raises(ValueError, match=r"scale \(nan\) must be a finite float > 0"):
        attention(q, k, v, backend=backend, scale=math.nan)


@pytest.mark.parametrize("backend", ALL)
def test_5_nan_in_masked_out_keys_never_reaches_the_output(backend):
    q, k, v = rand_qkv(1, 2, 1, 6, 6, 8)
    k[0, 0, 5], v[0, 0, 5] = math.nan, math.inf  # key 5: seen only by the last query
    mask = M.causal()
    out = attention(q, k, v, mask=mask, backend=backend)
    want = attention_reference(q, k, v, mask=mask)
    assert torch.isfinite(out[:, :, :5]).all()
    same(out, want)
    pad = torch.ones(6, 6, dtype=torch.bool)
    pad[:, 5] = False  # a padding slot holding NaN
    same(attention(q, k, v, mask=pad, backend=backend), attention_reference(q, k, v, mask=pad))


def test_6_a_nan_score_followed_by_a_masked_key_keeps_the_row_nan():
    """The numba kernel's running max let a later −inf (masked) score overwrite a NaN; the
    public decode path must still give the reference's NaN row (checked with and without
    numba: `auto` uses it for float32 contiguous inputs without grad when installed)."""
    q, k, v = rand_qkv(1, 4, 2, 1, 64, 16)
    k[0, 0, 4, 0] = math.nan  # visible to every query of KV head 0
    keep = torch.ones(1, 64, dtype=torch.bool)
    keep[0, 5::2] = False  # masked keys follow the NaN inside its key block
    for impl in ("auto", "torch", "matmul"):
        out, lse = decode_attention(q, k, v, mask=keep, chunk=16, impl=impl, return_lse=True)
        want, want_lse = attention_reference(q, k, v, mask=keep, return_lse=True)
        assert torch.isnan(lse[0, :2]).all() and torch.isfinite(lse[0, 2:]).all()
        same(out, want)
        same(lse, want_lse)


def test_7_a_mask_named_causal_is_not_treated_as_causal():
    q, k, v = rand_qkv(1, 2, 2, 32, 32, 8)
    liar = M.Mask(lambda b, h, i, j: (i - j) % 2 == 0, "causal")
    for backend in ALL:
        same(attention(q, k, v, mask=liar, backend=backend),
             attention_reference(q, k, v, mask=liar))
    assert not liar.is_causal and M.causal().is_causal


def test_8_document_mask_never_wraps_negative_positions():
    ids = torch.tensor([0, 0, 1, 1])
    m = M.document(ids)
    dense = m.to_dense(6, 4)  # Nq > Nk: rows 0, 1 sit at positions -2, -1
    assert not dense[:2].any()
    assert dense[2:].tolist() == [[True, True, False, False], [True, True, False, False],
                                  [False, False, True, True], [False, False, True, True]]
    q, k, v = rand_qkv(1, 1, 1, 6, 4, 8)
    out, lse = attention(q, k, v, mask=m, return_lse=True)
    assert (out[0, 0, :2] == 0).all() and torch.isneginf(lse[0, 0, :2]).all()


def test_9_float64_block_sparse_backward():
    q, k, v = (t.double().detach().requires_grad_() for t in rand_qkv(1, 2, 1, 9, 9, 8))
    for fn in (lambda *t: attention(*t, mask=M.sliding_window(3)),
               lambda *t: block_sparse_attention(*t, mask=M.sliding_window(3), impl="fused")):
        out = fn(q, k, v)
        ref = attention_reference(q, k, v, mask=M.sliding_window(3))
        same(out, ref, atol=1e-10, rtol=1e-10)
        for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)),
                        torch.autograd.grad(ref.sum(), (q, k, v))):
            same(a, b, atol=1e-10, rtol=1e-10)
    _, lse = attention(q, k, v, mask=M.sliding_window(3), return_lse=True)
    assert lse.dtype == torch.float64


def test_10_decode_with_every_key_masked_backpropagates():
    q, k, v = rand_qkv(1, 2, 1, 2, 40, 8, grad=True)
    none = torch.zeros(2, 40, dtype=torch.bool)
    out, lse = decode_attention(q, k, v, mask=none, chunk=8, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all() and out.grad_fn is not None
    out.sum().backward()
    assert (q.grad == 0).all() and (k.grad == 0).all() and (v.grad == 0).all()


@pytest.mark.parametrize("backend", WITH_LSE)
def test_11_lse_with_dv_different_from_d(backend):
    q, k, v = rand_qkv(1, 4, 2, 9, 9, 16, Dv=8)
    out, lse = attention(q, k, v, backend=backend, return_lse=True)
    ref, ref_lse = attention_reference(q, k, v, return_lse=True)
    same(out, ref)
    same(lse, ref_lse)


DEGENERATE = r"""
import torch
from attnlab.ops.softmax import attention
for backend in ("reference", "flash", "block_sparse", "decode", "sdpa", "auto"):
    lse = backend != "sdpa"
    for nq, nk in ((0, 5), (0, 4096), (3, 0), (0, 0)):
        q, k, v = torch.randn(1, 2, nq, 8), torch.randn(1, 1, nk, 8), torch.randn(1, 1, nk, 8)
        res = attention(q, k, v, backend=backend, return_lse=lse)
        out, l = res if lse else (res, None)
        assert out.shape == (1, 2, nq, 8) and (out == 0).all(), (backend, nq, nk)
        assert l is None or (l.shape == (1, 2, nq) and torch.isneginf(l).all())
    try:
        attention(torch.randn(1, 0, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8),
                  backend=backend)
    except ValueError as e:
        assert "q heads (0) must be >= 1" in str(e), e
    else:
        raise AssertionError("Hq = 0 accepted")
print("ok")
"""


def test_12_degenerate_shapes_never_kill_the_process():
    """Run in a child process: a SIGFPE would kill the test runner itself."""
    res = subprocess.run([sys.executable, "-c", DEGENERATE], check=False, capture_output=True,
                         text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])


@pytest.mark.parametrize("backend", ALL)
def test_13_bad_inputs_are_named_at_the_boundary(backend):
    q, k, v = rand_qkv(1, 2, 1, 3, 4, 8)
    call = lambda *t, **kw: attention(*t, backend=backend, **kw)
    with pytest.raises(ValueError, match=r"q head_dim \(0\) must be >= 1"):
        call(q[..., :0], k[..., :0], v)
    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=rf"q dtype \({dtype}\) must be a floating type"):
            call(q.to(dtype), k.to(dtype), v.to(dtype))
    with pytest.raises(ValueError, match=r"mask is on meta but q is on cpu"):
        call(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match=r"mask shape \(1, 1, 1, 3, 4\) must be 2 to 4 dims"):
        call(q, k, v, mask=torch.ones(1, 1, 1, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"q_pos must hold integer positions, got dtype "
                                        r"torch.float32"):
        call(q, k, v, mask=M.causal(), q_pos=torch.tensor([1.5, 2.0, 3.0]))
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match=r"scale \(.*\) must be a finite float > 0"):
            call(q, k, v, scale=bad)
    with pytest.raises(TypeError, match=r"scale must be a float, got Tensor"):
        call(q, k, v, scale=torch.tensor(0.5))


def test_every_backend_is_a_record_and_none_reads_the_mask_name():
    import inspect

    from attnlab.ops.softmax import backends, block_sparse, contract, decode, dispatch, sdpa

    for mod in (backends, block_sparse, contract, decode, dispatch, sdpa):
        assert ".name ==" not in inspect.getsource(mod)
    assert all(rec.name == name for name, rec in BACKENDS.items())
    assert flash_attention is not None


def test_fuzz_finding_document_mask_with_zero_keys():
    """Found by the deep fuzz run: a document mask evaluated on an empty key range raised
    from max() of nothing; zero keys give out 0 and lse -inf (conventions §2)."""
    q, k, v = rand_qkv(1, 1, 1, 1, 0, 4)
    m = M.document(torch.tensor([0, 1]))
    assert m.to_dense(1, 0).shape == (1, 0)
    out, lse = flash_attention(q, k, v, mask=m, q_block=1, kv_block=1, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("backend", WITH_LSE)
def test_fuzz_finding_sink_is_merged_before_rounding_to_low_precision(backend):
    """Found by the deep fuzz run: a bf16 output rounded before the sink's rescale was
    rounded twice; the sink is merged in float32 and the result rounded once."""
    q, k, v = (t.bfloat16() for t in rand_qkv(1, 3, 1, 5, 70, 8))
    sink = torch.tensor([-math.inf, 0.5, -1.0])
    out = attention(q, k, v, sink=sink, backend=backend)
    want = attention_reference(q.float(), k.float(), v.float(), sink=sink).bfloat16()
    assert torch.equal(out, want) or (out.float() - want.float()).abs().max() <= 2 ** -8
    once = attention_reference(q, k, v, sink=sink)  # the oracle rounds once
    assert torch.equal(attention(q, k, v, sink=sink, backend="reference"), once)
