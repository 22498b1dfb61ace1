"""Mamba-2 SSD: chunked == quadratic == recurrent == term-by-term reference (outputs, states,
gradients); decays 1 == causal linear attention; time-invariant == a convolution; overflow
and bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from attnlab.ops.linear import linear_attention
from attnlab.ops.ssd import ssd, ssd_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}  # conventions §5 exact algorithms, fp32
LONG_TOL = {"atol": 1e-4, "rtol": 1e-3}  # conventions §5: longer recurrences (N = 129)


def make(Bt=2, H=4, G=2, N=13, P=5, S=6, seed=0, h0=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bt, H, N, P, generator=g)
    dt = F.softplus(torch.randn(Bt, H, N, generator=g))
    A = -torch.rand(H, generator=g) * 2
    B = torch.randn(Bt, G, N, S, generator=g) * 0.5
    C = torch.randn(Bt, G, N, S, generator=g) * 0.5
    D = torch.randn(H, generator=g)
    state = torch.randn(Bt, H, S, P, generator=g) if h0 else None
    return x, dt, A, B, C, D, state


@pytest.mark.parametrize("N", [1, 7, 20])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_all_modes_match_reference(N, G):
    x, dt, A, B, C, D, h0 = make(N=N, G=G, h0=True)
    ref, ref_h = ssd_reference(x, dt, A, B, C, D=D, initial_state=h0)
    for mode in ("chunked", "quadratic", "recurrent"):
        y, h = ssd(x, dt, A, B, C, D=D, mode=mode, chunk_size=4, initial_state=h0,
                   output_final_state=True)
        assert_close(y, ref, **TOL)
        assert_close(h, ref_h, **TOL)


@pytest.mark.parametrize("N,chunk", [(63, 16), (129, 32), (129, 7)])
def test_chunked_equals_quadratic_and_recurrent_long(N, chunk):
    x, dt, A, B, C, _, h0 = make(N=N, seed=1, h0=True)
    q, hq = ssd(x, dt, A, B, C, mode="quadratic", initial_state=h0, output_final_state=True)
    c, hc = ssd(x, dt, A, B, C, mode="chunked", chunk_size=chunk, initial_state=h0,
                output_final_state=True)
    r, hr = ssd(x, dt, A, B, C, mode="recurrent", initial_state=h0, output_final_state=True)
    assert_close(c, q, **LONG_TOL)
    assert_close(r, q, **LONG_TOL)
    assert_close(hc, hq, **LONG_TOL)
    assert_close(hr, hq, **LONG_TOL)


def test_chunked_gradients_match_reference():
    x, dt, A, B, C, D, h0 = make(N=11, seed=2, h0=True)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y, h = ssd(*leaves[:5], D=leaves[5], chunk_size=4, initial_state=leaves[6],
               output_final_state=True)
    w = torch.randn_like(y)
    ((y * w).sum() + h.sum()).backward()
    rl = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    ry, rh = ssd_reference(*rl[:5], D=rl[5], initial_state=rl[6])
    ((ry * w).sum() + rh.sum()).backward()
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "h0"], leaves, rl):
        assert_close(a.grad, b.grad, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


def test_split_with_state_equals_whole():
    x, dt, A, B, C, D, _ = make(N=40, seed=3)
    whole, h = ssd(x, dt, A, B, C, D=D, chunk_size=8, output_final_state=True)
    a, ha = ssd(x[:, :, :17], dt[:, :, :17], A, B[:, :, :17], C[:, :, :17], D=D, chunk_size=8,
                output_final_state=True)
    b, hb = ssd(x[:, :, 17:], dt[:, :, 17:], A, B[:, :, 17:], C[:, :, 17:], D=D, chunk_size=8,
                initial_state=ha, output_final_state=True)
    assert_close(torch.cat([a, b], 2), whole, **TOL)
    assert_close(hb, h, **TOL)


@pytest.mark.parametrize("mode", ["chunked", "quadratic", "recurrent"])
def test_unit_decays_equal_causal_linear_attention(mode):
    """A = 0 (every decay 1): SSD is causal linear attention with q = C, k = B, v = Δ·x."""
    x, dt, A, B, C, _, _ = make(H=4, G=2, N=29, seed=4)
    y = ssd(x, dt, torch.zeros_like(A), B, C, mode=mode, chunk_size=8)
    R = x.shape[1] // B.shape[1]  # heads per B/C group: each head sees its group's B and C
    lin = linear_attention(C.repeat_interleave(R, 1), B.repeat_interleave(R, 1),
                           x * dt.unsqueeze(-1), feature_map="identity", normalize=False,
                           mode="parallel")
    assert_close(y, lin, **TOL)


def test_time_invariant_ssd_is_a_convolution():
    """Constant Δ, B, C: y = K * x with kernel K_m = (C·B) Δ exp(m Δ A) (causal conv)."""
    Bt, H, N, P, S = 2, 3, 31, 4, 5
    g = torch.Generator().manual_seed(5)
    x = torch.randn(Bt, H, N, P, generator=g)
    A = -torch.rand(H, generator=g)
    dt_h = torch.rand(H, generator=g) + 0.1  # per head, constant in time
    b = torch.randn(S, generator=g)
    c = torch.randn(S, generator=g)
    y = ssd(x, dt_h[None, :, None].expand(Bt, H, N).contiguous(), A,
            b.expand(Bt, 1, N, S).contiguous(), c.expand(Bt, 1, N, S).contiguous(), chunk_size=8)
    m = torch.arange(N, dtype=torch.float32)
    K = (c @ b) * dt_h[:, None] * torch.exp(m[None] * dt_h[:, None] * A[:, None])  # (H, N)
    xs = x.permute(0, 3, 1, 2).reshape(Bt * P, H, N)  # (B·P, H, N): channels = heads
    conv = F.conv1d(F.pad(xs, (N - 1, 0)), K.flip(-1)[:, None, :], groups=H)  # (B·P, H, N)
    conv = conv.reshape(Bt, P, H, N).permute(0, 2, 3, 1)  # (B, H, N, P)
    assert_close(y, conv, **TOL)


def test_extreme_inputs_stay_finite():
    """A at −3e38 makes Δ·A overflow to −inf (decay exactly 0, floored at e^-80), x at 1e15:
    every mode stays finite and they still agree (relative to the output scale)."""
    x, dt, _, B, C, D, _ = make(N=33, seed=6)
    A = torch.tensor([-3e38, -1.0, -1e-30, 0.0])
    x = x * 1e15
    outs = []
    for mode in ("chunked", "quadratic", "recurrent"):
        y, h = ssd(x, dt, A, B, C, D=D, mode=mode, chunk_size=8, output_final_state=True)
        assert torch.isfinite(y).all() and torch.isfinite(h).all(), mode
        outs.append((y / 1e15, h / 1e15))
    for y, h in outs[1:]:
        assert_close(y, outs[0][0], **LONG_TOL)
        assert_close(h, outs[0][1], **LONG_TOL)


def test_bad_input():
    x, dt, A, B, C, _, _ = make(N=5)
    with pytest.raises(ValueError, match="A must be <= 0"):
        ssd(x, dt, -A, B, C)
    with pytest.raises(ValueError, match="dt must be >= 0"):
        ssd(x, -dt, A, B, C)
    with pytest.raises(ValueError, match="chunk_size \\(0\\)"):
        ssd(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="heads \\(4\\) must be divisible by groups"):
        ssd(x, dt, A, B[:, :1].repeat(1, 3, 1, 1), C[:, :1].repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="initial_state has shape"):
        ssd(x, dt, A, B, C, initial_state=torch.zeros(2, 4, 5, 5))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        ssd(bad, dt, A, B, C)
    with pytest.raises(ValueError, match="dt has shape"):
        ssd(x, dt[:, :, :3], A, B, C)


def test_factorized_and_exact_chunk_masks_agree():
    """The two intra-chunk paths of the chunked algorithm (row/column-scaled vs exact mask)."""
    from attnlab.ops.ssd.forms import chunked

    x, dt, A, B, C, _, h0 = make(N=45, seed=7, h0=True)
    G, R = B.shape[1], x.shape[1] // B.shape[1]
    log_a = (dt * A[:, None]).reshape(2, G, R, 45)
    v = (x * dt.unsqueeze(-1)).reshape(2, G, R, 45, 5)
    h = h0.reshape(2, G, R, 6, 5)
    y1, s1 = chunked(C.unsqueeze(2), B.unsqueeze(2), v, log_a, h, 8, factorize=True)
    y2, s2 = chunked(C.unsqueeze(2), B.unsqueeze(2), v, log_a, h, 8, factorize=False)
    assert_close(y1, y2, **TOL)
    assert_close(s1, s2, **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_the_naive_path(dtype):
    """conventions §5: against a float64 reference, chunked in fp16/bf16 errs at most 2x the
    quadratic form run in the same dtype (both compute decays in float32 internally)."""
    x, dt, A, B, C, D, _ = make(N=57, seed=8)
    ref = ssd(*(t.double() for t in (x, dt, A, B, C)), D=D.double(), mode="quadratic")
    low = [t.to(dtype) for t in (x, dt, A, B, C)]
    naive = ssd(*low, D=D.to(dtype), mode="quadratic")
    fast = ssd(*low, D=D.to(dtype), chunk_size=16)
    assert fast.dtype == dtype
    err_naive = float((naive.double() - ref).abs().max())
    err_fast = float((fast.double() - ref).abs().max())
    assert err_fast <= 2 * err_naive, (err_fast, err_naive)
