"""RWKV WKV: RWKV-4 and RWKV-6 parallel == chunked == recurrent == reference (outputs and
states), gradients of the chunked paths, overflow at the edge of fp32, bad input."""
import pytest
import torch
from torch.testing import assert_close

from attnlab.ops.rwkv import WKV4State, wkv4, wkv4_reference, wkv6, wkv6_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}
LONG_TOL = {"atol": 1e-4, "rtol": 1e-3}  # conventions §5: longer recurrences


def make4(B=2, H=2, N=13, D=4, seed=0, kscale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(H, D, generator=g) * 2
    u = torch.randn(H, D, generator=g)
    k = torch.randn(B, H, N, D, generator=g) * kscale
    v = torch.randn(B, H, N, D, generator=g)
    return w, u, k, v


def assert_wkv4_states_close(s1: WKV4State, s2: WKV4State, **tol):
    """(a, b) rescaled to a common max exponent: the content independent of how p is chosen."""
    m = torch.maximum(s1.p, s2.p)
    for x1, x2 in ((s1.a, s2.a), (s1.b, s2.b)):
        assert_close(x1 * torch.exp(s1.p - m), x2 * torch.exp(s2.p - m), **tol)


@pytest.mark.parametrize("N", [1, 7, 63])
def test_wkv4_modes_match_reference(N):
    w, u, k, v = make4(N=N)
    ref = wkv4_reference(w, u, k, v)
    outs = {}
    for mode in ("parallel", "chunked", "recurrent"):
        outs[mode] = wkv4(w, u, k, v, mode=mode, chunk_size=8, output_final_state=True)
        assert_close(outs[mode][0], ref, **TOL)
    for mode in ("chunked", "recurrent"):
        assert_wkv4_states_close(outs[mode][1], outs["parallel"][1], **TOL)


def test_wkv4_state_carries_across_calls():
    w, u, k, v = make4(N=40, seed=1)
    whole, st = wkv4(w, u, k, v, output_final_state=True, chunk_size=16)
    a, sa = wkv4(w, u, k[:, :, :23], v[:, :, :23], output_final_state=True)
    b, sb = wkv4(w, u, k[:, :, 23:], v[:, :, 23:], initial_state=sa, output_final_state=True,
                 mode="recurrent")
    assert_close(torch.cat([a, b], 2), whole, **TOL)
    assert_wkv4_states_close(sb, st, **TOL)


def test_wkv4_chunked_gradients_match_reference():
    w, u, k, v = make4(N=11, seed=2)
    leaves = [t.clone().requires_grad_() for t in (w, u, k, v)]
    out = wkv4(*leaves, chunk_size=4)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    rl = [t.clone().requires_grad_() for t in (w, u, k, v)]
    (wkv4_reference(*rl) * g).sum().backward()
    for a, b in zip(leaves, rl):
        assert_close(a.grad, b.grad, **TOL)


def test_wkv4_extreme_keys_stay_finite():
    """|k| up to 1e30 (e^k overflows fp32 for k > 88.7): the running-max form stays finite
    and chunked == recurrent; with k ±500 the outputs are the exp-weighted choice."""
    w, u, k, v = make4(N=33, seed=3)
    k = k.clone()
    k[:, :, ::4] = 1e30
    k[:, :, 1::4] = -1e30
    rec = wkv4(w, u, k, v, mode="recurrent")
    chk = wkv4(w, u, k, v, chunk_size=8)
    assert torch.isfinite(rec).all() and torch.isfinite(chk).all()
    assert_close(chk, rec, **TOL)
    k2 = torch.full_like(k, -500.0)
    k2[:, :, 5] = 500.0  # one dominant key: every later output copies its value
    out = wkv4(w, u, k2, v, chunk_size=8)
    assert torch.isfinite(out).all()
    assert_close(out[:, :, 6:], v[:, :, 5:6].expand_as(out[:, :, 6:]), **TOL)


def make6(B=2, H=2, N=13, D=4, Dv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, H, N, D, generator=g)
    k = torch.randn(B, H, N, D, generator=g) * 0.5
    v = torch.randn(B, H, N, Dv, generator=g)
    log_w = -torch.exp(torch.randn(B, H, N, D, generator=g) - 1)  # RWKV-6: w = exp(−exp(x))
    u = torch.randn(H, D, generator=g)
    S0 = torch.randn(B, H, D, Dv, generator=g)
    return r, k, v, log_w, u, S0


@pytest.mark.parametrize("N", [1, 7, 63, 129])
def test_wkv6_modes_match_reference(N):
    r, k, v, lw, u, S0 = make6(N=N)
    ref, ref_S = wkv6_reference(r, k, v, lw, u, S0)
    tol = LONG_TOL if N > 63 else TOL
    for mode in ("parallel", "chunked", "recurrent"):
        if mode == "parallel" and N > 63:
            continue  # the (N, N, D) table of the parallel form is for short sequences
        out, S = wkv6(r, k, v, lw, u, mode=mode, chunk_size=8, initial_state=S0,
                      output_final_state=True)
        assert_close(out, ref, **tol)
        assert_close(S, ref_S, **tol)


def test_wkv6_chunked_gradients_match_reference():
    r, k, v, lw, u, S0 = make6(N=19, seed=4)
    leaves = [t.clone().requires_grad_() for t in (r, k, v, lw, u, S0)]
    out, S = wkv6(*leaves[:5], chunk_size=8, initial_state=leaves[5], output_final_state=True)
    g = torch.randn_like(out)
    ((out * g).sum() + S.sum()).backward()
    rl = [t.clone().requires_grad_() for t in (r, k, v, lw, u, S0)]
    ro, rS = wkv6_reference(*rl[:5], rl[5])
    ((ro * g).sum() + rS.sum()).backward()
    for a, b in zip(leaves, rl):
        assert_close(a.grad, b.grad, **TOL)


def test_wkv6_extreme_decays_stay_finite():
    """log_w at −3e38 and −inf (decay 0: the state resets) and large r, k: finite, modes agree."""
    r, k, v, lw, u, S0 = make6(N=33, seed=5)
    lw = lw.clone()
    lw[:, :, ::7] = -3e38
    lw[:, 0, 3] = float("-inf")
    r = r * 1e15
    outs = [wkv6(r, k, v, lw, u, mode=m, chunk_size=8, initial_state=S0) / 1e15
            for m in ("chunked", "recurrent", "parallel")]
    for o in outs:
        assert torch.isfinite(o).all()
        assert_close(o, outs[0], **LONG_TOL)


def test_bad_input():
    w, u, k, v = make4()
    with pytest.raises(ValueError, match="w must be >= 0"):
        wkv4(-w, u, k, v)
    with pytest.raises(ValueError, match="chunk_size \\(0\\)"):
        wkv4(w, u, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="u has shape"):
        wkv4(w, u[:1], k, v)
    kk = k.clone()
    kk[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="k contains NaN"):
        wkv4(w, u, kk, v)
    r, k6, v6, lw, u6, S0 = make6()
    with pytest.raises(ValueError, match="log_w must be <= 0"):
        wkv6(r, k6, v6, -lw, u6)
    with pytest.raises(ValueError, match="initial_state has shape"):
        wkv6(r, k6, v6, lw, u6, initial_state=S0[:, :, :2])
    with pytest.raises(ValueError, match="mode"):
        wkv6(r, k6, v6, lw, u6, mode="gpt")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_the_naive_path(dtype):
    """conventions §5: against float64, chunked WKV in fp16/bf16 errs at most 2x the parallel
    (GPT-mode) form in the same dtype; both keep their exponent sums in float32."""
    w, u, k, v = make4(N=41, seed=9)
    ref4 = wkv4(w.double(), u.double(), k.double(), v.double(), mode="parallel")
    low = [t.to(dtype) for t in (w, u, k, v)]
    e_naive = float((wkv4(*low, mode="parallel").double() - ref4).abs().max())
    fast = wkv4(*low, chunk_size=8)
    assert fast.dtype == dtype
    assert float((fast.double() - ref4).abs().max()) <= 2 * e_naive
    r, k6, v6, lw, u6, _ = make6(N=41, seed=9)
    ref6 = wkv6(*(t.double() for t in (r, k6, v6, lw, u6)), mode="parallel")
    low6 = [t.to(dtype) for t in (r, k6, v6, lw, u6)]
    e_naive6 = float((wkv6(*low6, mode="parallel").double() - ref6).abs().max())
    e_fast6 = float((wkv6(*low6, chunk_size=8).double() - ref6).abs().max())
    assert e_fast6 <= 2 * e_naive6, (e_fast6, e_naive6)


@pytest.mark.parametrize("N", [1, 5, 17])
def test_implied_matrices_reproduce_reference(N):
    from attnlab.ops.rwkv import wkv4_matrix, wkv6_matrix

    g = torch.Generator().manual_seed(N)
    B, H, D = 2, 3, 4
    k, v, r = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    w, u = torch.rand(H, D, generator=g), torch.randn(H, D, generator=g)
    P = wkv4_matrix(w, u, k)  # (B, H, D, N, N)
    torch.testing.assert_close(P.sum(-1), torch.ones(B, H, D, N))
    y = torch.einsum("bhdti,bhid->bhtd", P, v)
    torch.testing.assert_close(y, wkv4_reference(w, u, k, v), atol=1e-5, rtol=1e-4)
    log_w = -torch.exp(torch.randn(B, H, N, D, generator=g) - 1)
    A = wkv6_matrix(r, k, log_w, u)  # (B, H, N, N)
    torch.testing.assert_close(A @ v, wkv6_reference(r, k, v, log_w, u)[0], atol=1e-5,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="u must have shape"):
        wkv6_matrix(r, k, log_w, u[:, :2])
    with pytest.raises(ValueError, match="w must have shape"):
        wkv4_matrix(w[:1], u, k)
    with pytest.raises(ValueError, match="share shape"):
        wkv6_matrix(r[..., :2], k, log_w, u)
