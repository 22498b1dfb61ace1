"""Differential fuzz suite: every backend of `attention()` and every public softmax kernel
against the reference (docs/conventions.md §2, §3, §5), on out, lse, the gradients of q,
k, v and the gradients through `merge`. Profiles (tests/conftest.py): "ci" (default,
derandomised, part of `make test`) and "deep" (`make fuzz`, randomised, >= 20,000 examples).
Every finding is pinned with @example (and has its regression test in
tests/test_contract_regressions.py)."""
from __future__ import annotations

import math

import pytest
import torch
from fuzz_cases import (
    LOWP_FLOOR,
    TOL,
    Case,
    assert_lowp,
    assert_same,
    cases,
    head_bias,
    naive_lowp,
)
from hypothesis import example, given
from hypothesis import strategies as st

from attnlab import masks as M
from attnlab.ops.softmax import (
    attention,
    attention_reference,
    block_sparse_attention,
    decode_attention,
    decode_numba,
    flash_attention,
    merge,
)
from attnlab.ops.softmax import fused_calls as FC

BACKENDS = ["reference", "flash", "block_sparse", "decode", "sdpa", "auto"]
EXACT = (torch.float32, torch.float64)
GRAD_TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-3},  # gradients sum Nk terms
            torch.float64: {"atol": 1e-9, "rtol": 1e-9}}


def _pin(**kw) -> Case:
    """A hand-written case for @example (findings of the issue and of the deep runs)."""
    base = {"B": 1, "Hq": 2, "Hkv": 1, "Nq": 4, "Nk": 9, "D": 8, "Dv": 8,
            "dtype": torch.float32, "layout": "contiguous", "mask_name": "none", "mask": None,
            "q_pos": None, "kv_pos": None, "mod_name": "none", "score_mod": None,
            "sink": None, "bad": [], "seed": 0}
    base.update(kw)
    return Case(**base)


def _grads(out, lse, leaves, want_lse_grad: bool):
    g = torch.Generator().manual_seed(1)
    loss = (out.float() * torch.randn(out.shape, generator=g)).sum()
    if want_lse_grad:
        loss = loss + (lse.float() * torch.randn(lse.shape, generator=g)).sum()
    used = [t for t in leaves if t.requires_grad]
    return torch.autograd.grad(loss, used, allow_unused=True) if used else []


def _compare(case: Case, got_out, got_lse, q, k, v, what: str) -> None:
    """got (out, lse or None) vs the reference on the same inputs (conventions §5)."""
    kw = case.kwargs()
    if case.dtype in EXACT:
        ref_out, ref_lse = attention_reference(q, k, v, return_lse=True, **kw)
        assert_same(got_out, ref_out, f"{what} out", **TOL[case.dtype])
        if got_lse is not None:
            assert got_lse.dtype == ref_lse.dtype, f"{what}: lse dtype {got_lse.dtype}"
            assert_same(got_lse, ref_lse, f"{what} lse", **TOL[case.dtype])
        return
    qd, kd, vd = (t.detach().double() for t in (q, k, v))
    ref_out, ref_lse = attention_reference(qd, kd, vd, return_lse=True, **kw)
    naive_out, naive_lse = naive_lowp(q.detach(), k.detach(), v.detach(), case)
    loose = {"atol": math.inf, "rtol": math.inf}  # pattern only; the bound is below
    assert_same(got_out, ref_out, f"{what} out", **loose)
    assert_lowp(got_out, ref_out, naive_out, case.dtype, LOWP_FLOOR[case.dtype], f"{what} out")
    if got_lse is not None:
        assert got_lse.dtype == torch.float32
        assert_same(got_lse, ref_lse, f"{what} lse", **loose)
        assert_lowp(got_lse, ref_lse, naive_lse, torch.float32, LOWP_FLOOR[case.dtype],
                    f"{what} lse")


def _compare_grads(case: Case, fn, q, k, v) -> None:
    """Gradients of q, k, v (and through lse when every row has a key) vs the reference."""
    kw = case.kwargs()
    out, lse = fn(q, k, v)
    ref_out, ref_lse = attention_reference(q, k, v, return_lse=True, **kw)
    with_lse = lse is not None and bool(torch.isfinite(ref_lse).all())
    got = _grads(out, lse, (q, k, v), with_lse)
    want = _grads(ref_out, ref_lse, (q, k, v), with_lse)
    for name, a, b in zip("qkv", got, want):
        if b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        torch.testing.assert_close(a, b, **GRAD_TOL[case.dtype], msg=lambda m, n=name: f"d{n}: {m}")


@given(case=cases(), backend=st.sampled_from(BACKENDS), grad=st.booleans())
@example(  # finding 5: NaN only in masked-out keys (the sdpa path returned all-NaN)
    case=_pin(mask_name="causal", mask=M.causal(), Nq=9, bad=[(1, (0, 0, 8, 0), math.nan)]),
    backend="auto", grad=False)
@example(  # finding 4: NaN in a query: the row is NaN on every backend
    case=_pin(bad=[(0, (0, 1, 2, 3), math.nan)]), backend="sdpa", grad=False)
@example(  # finding 12: Nk = 0 through sdpa, Nq = 0 through decode
    case=_pin(Nk=0), backend="sdpa", grad=False)
@example(case=_pin(Nq=0, Nk=4096), backend="auto", grad=False)
@example(  # finding 2: interleaved q/k/v with lse (auto picks a backend that has lse)
    case=_pin(layout="interleaved", Nq=33, Nk=33), backend="auto", grad=True)
@example(  # finding 9: float64 block-sparse gradients
    case=_pin(dtype=torch.float64, mask_name="window(3)", mask=M.sliding_window(3), Nq=9),
    backend="block_sparse", grad=True)
@example(  # finding 11: Dv != D with lse
    case=_pin(Dv=3, Nq=9), backend="auto", grad=True)
@example(  # deep-run finding (test oracle): fp16 with a NaN value hidden by the mask
    case=_pin(Hq=1, Nq=7, Nk=9, D=1, Dv=1, dtype=torch.float16, mask_name="causal",
              mask=M.causal(), bad=[(2, (0, 0, 3, 0), math.nan)]), backend="reference",
    grad=False)
@example(  # deep-run finding: bf16 out rounded before the sink's rescale (two roundings)
    case=_pin(Hq=3, Nq=5, Nk=70, dtype=torch.bfloat16, mod_name="bias", score_mod=head_bias,
              sink=torch.tensor([-math.inf, -math.inf, -1.0]), seed=813), backend="reference",
    grad=False)
def test_every_backend_equals_the_reference(case, backend, grad):
    grad = grad and case.finite and case.dtype in EXACT
    q, k, v = case.tensors(grad)
    kw = case.kwargs()
    if backend == "sdpa" and (case.score_mod is not None or case.sink is not None):
        with pytest.raises(ValueError, match="does not support"):
            attention(q, k, v, backend=backend, **kw)
        return
    with_lse = backend != "sdpa"
    res = attention(q, k, v, backend=backend, return_lse=with_lse, **kw)
    out, lse = res if with_lse else (res, None)
    assert out.dtype == q.dtype and out.shape == (case.B, case.Hq, case.Nq, case.Dv)
    _compare(case, out, lse, q, k, v, backend)
    if grad:
        _compare_grads(case, lambda *t: attention(*t, backend=backend, return_lse=with_lse, **kw)
                       if with_lse else (attention(*t, backend=backend, **kw), None), q, k, v)


KERNELS = ["flash", "block_sparse_fused", "block_sparse_fused32", "block_sparse_tiled",
           "block_sparse_auto",
           "decode_matmul", "decode_torch", "decode_fused", "decode_numba", "decode_auto"]


def _lowp_mode(mode: str, fn):
    """Run `fn()` with the block-sparse fused path's low-precision compute mode forced."""
    old, FC.LOWP_COMPUTE = FC.LOWP_COMPUTE, mode
    try:
        return fn()
    finally:
        FC.LOWP_COMPUTE = old


def _kernel(name: str, case: Case, qb: int, kb: int, grad: bool):
    """The public kernel `name` with small blocks, or None where it does not apply."""
    kw = case.kwargs()
    if name == "flash":
        return lambda *t: flash_attention(*t, q_block=qb, kv_block=kb, return_lse=True, **kw)
    if name.startswith("block_sparse"):
        impl = name.split("_")[-1]
        # the fused kernel computes float16/bfloat16 in their own dtype ("fused") or widened
        # to float32 ("fused32", the path of CPUs that emulate them); "auto" lets it choose
        mode = {"fused": "native", "fused32": "float32"}.get(impl, "auto")
        impl = "fused" if impl == "fused32" else impl
        if impl == "fused" and (case.Dv != case.D or case.score_mod is not None):
            return None
        return lambda *t: _lowp_mode(mode, lambda: block_sparse_attention(
            *t, q_block=qb, kv_block=kb, impl=impl, return_lse=True, **kw))
    impl = name.split("_")[-1]
    if impl == "fused" and (case.Dv != case.D or grad):
        return None
    if impl == "numba" and (grad or case.dtype != torch.float32 or case.layout != "contiguous"
                            or not decode_numba.available()):
        return None
    return lambda *t: decode_attention(*t, chunk=kb, impl=impl, return_lse=True, **kw)


@given(case=cases(), kernel=st.sampled_from(KERNELS), qb=st.integers(1, 16),
       kb=st.integers(1, 16), grad=st.booleans())
@example(  # finding 1: decode with a q whose last dim is not unit-stride
    case=_pin(layout="interleaved", Nq=4, Nk=64), kernel="decode_torch", qb=1, kb=16,
    grad=False)
@example(  # finding 6: NaN score followed by a masked key in the numba kernel's block
    case=_pin(Nq=1, Nk=40, mask_name="bool", mask=torch.arange(40).remainder(2).eq(0)
              .view(1, 40), bad=[(1, (0, 0, 4, 0), math.nan)]),
    kernel="decode_numba", qb=1, kb=16, grad=False)
@example(  # finding 10: every key masked, gradients flow
    case=_pin(mask_name="bool(0)", mask=torch.zeros(4, 9, dtype=torch.bool)),
    kernel="decode_matmul", qb=1, kb=4, grad=True)
@example(  # deep-run finding: a document mask evaluated on zero keys (max() of nothing)
    case=_pin(Nq=1, Nk=0, mask_name="document", mask=M.document(torch.tensor([0, 1]))),
    kernel="flash", qb=1, kb=1, grad=False)
@example(  # deep-run finding (test oracle): bf16, NaN value hidden by ~causal
    case=_pin(B=2, Hq=1, Nq=3, Nk=3, D=1, Dv=1, dtype=torch.bfloat16, mask_name="~causal",
              mask=~M.causal(), bad=[(2, (0, 0, 0, 0), math.nan)]), kernel="flash", qb=1, kb=1,
    grad=False)
@example(  # deep-run finding: bf16 + sink through flash, rounded twice before the fix
    case=_pin(Nq=64, Nk=2, D=4, Dv=4, dtype=torch.bfloat16, mask_name="causal",
              mask=M.causal(), sink=torch.tensor([-1.0, -math.inf]),
              bad=[(0, (0, 0, 0, 0), math.nan)], seed=194), kernel="flash", qb=1, kb=1,
    grad=False)
def test_kernels_with_small_blocks_equal_the_reference(case, kernel, qb, kb, grad):
    grad = grad and case.finite and case.dtype in EXACT
    fn = _kernel(kernel, case, qb, kb, grad)
    if fn is None:
        return
    q, k, v = case.tensors(grad)
    out, lse = fn(q, k, v)
    _compare(case, out, lse, q, k, v, kernel)
    if grad:
        _compare_grads(case, fn, q, k, v)


@given(case=cases(dtypes=EXACT, nonfinite=False), backend=st.sampled_from(
    ["reference", "flash", "block_sparse", "decode", "auto"]), split=st.floats(0, 1))
@example(  # finding 3: lse gradients through merge (they were non-differentiable)
    case=_pin(Nq=8, Nk=8, mask_name="causal", mask=M.causal()), backend="block_sparse",
    split=0.5)
def test_merge_of_key_halves_backpropagates_exactly(case, backend, split):
    """Attention over two disjoint key halves merged with `merge` == attention over all
    keys, in out, lse and the gradients of q, k, v (conventions §3)."""
    if isinstance(case.mask, torch.Tensor) or case.Nk < 2:
        return
    q, k, v = case.tensors(grad=True)
    s = min(max(1, int(split * case.Nk)), case.Nk - 1)
    qp = torch.arange(case.Nq) + (case.Nk - case.Nq) if case.q_pos is None else case.q_pos
    kp = torch.arange(case.Nk) if case.kv_pos is None else case.kv_pos
    kw = {"mask": case.mask, "score_mod": case.score_mod, "q_pos": qp}
    o1, l1 = attention(q, k[:, :, :s], v[:, :, :s], kv_pos=kp[:s], backend=backend,
                       return_lse=True, **kw)
    o2, l2 = attention(q, k[:, :, s:], v[:, :, s:], kv_pos=kp[s:], backend=backend,
                       return_lse=True, **kw)
    out, lse = merge(o1, l1, o2, l2)
    ref, ref_lse = attention_reference(q, k, v, kv_pos=kp, return_lse=True, **kw)
    assert_same(out, ref, "merged out", **TOL[case.dtype])
    assert_same(lse, ref_lse, "merged lse", **TOL[case.dtype])
    got, want = _grads(out, None, (q, k, v), False), _grads(ref, None, (q, k, v), False)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, **GRAD_TOL[case.dtype],
                                   msg=lambda m, n=name: f"d{n} through merge: {m}")


@given(case=cases(nonfinite=True, mods=False), backend=st.sampled_from(BACKENDS))
def test_check_finite_names_the_tensor_and_first_bad_index(case, backend):
    q, k, v = case.tensors()
    first = next(((n, t) for n, t in zip("qkv", (q, k, v)) if not bool(torch.isfinite(t).all())),
                 None)
    if first is None:  # the NaN landed in an empty tensor
        return
    name, t = first
    idx = tuple(int(i) for i in (~torch.isfinite(t)).nonzero()[0])
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or inf \(first at index "
                                         rf"{re_tuple(idx)}"):
        attention(q, k, v, backend=backend, check_finite=True, **case.kwargs())


def re_tuple(idx: tuple) -> str:
    return r"\(" + r", ".join(str(i) for i in idx) + r"\)"
