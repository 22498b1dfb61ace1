"""Public entry point of Mamba-2's SSD (Dao & Gu 2024), with validation and layouts.

Layouts (attnlab heads-first, conventions §1 style): x (B, H, N, P), dt (B, H, N) (Δ after
softplus, ≥ 0), A (H,) (≤ 0), B and C (B, G, N, S) with head h reading group
h // (H // G) (Mamba-2's n_groups, the SSM analogue of GQA), D (H,) optional skip.
State (B, H, S, P) — Mamba-2 stores (B, H, P, S); transpose to convert.
`mode`: "chunked" (default), "quadratic" or "recurrent"; all agree to conventions §5 tolerances.
fp16/bf16 inputs are computed in float32 (exp(±cumulative log decay) overflows fp16 and
loses bf16's few mantissa bits) and the outputs cast back to the input dtype.
"""
from __future__ import annotations

import torch

from ..._checks import check_positive_int, check_tensor
from ..linear.checks import check_finite_fast as check_finite
from .forms import LOG_DECAY_FLOOR, chunked, quadratic, recurrent

MODES = ("chunked", "quadratic", "recurrent")
LOW_PRECISION = (torch.float16, torch.bfloat16)


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        *, D: torch.Tensor | None = None, mode: str = "chunked", chunk_size: int = 64,
        initial_state: torch.Tensor | None = None, output_final_state: bool = False):
    """y_t = C_t h_t + D x_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t B_tᵀ x_t.

    Returns y (B, H, N, P), or (y, final_state (B, H, S, P)) with output_final_state=True.
    Cost: chunked O(N·C·(S + P) + N·S·P) per head; quadratic O(N²·(S + P)).
    Raises ValueError for A > 0 or Δ < 0 (decays outside (0, 1]), non-finite inputs,
    mismatched shapes, chunk_size < 1.
    """
    check_tensor("x", x, 4)
    check_tensor("dt", dt, 3)
    check_tensor("A", A, 1)
    check_tensor("B", B, 4)
    check_tensor("C", C, 4)
    Bt, H, N, P = x.shape
    if tuple(dt.shape) != (Bt, H, N):
        raise ValueError(f"dt has shape {tuple(dt.shape)}; expected (B, H, N) = {(Bt, H, N)}")
    if tuple(A.shape) != (H,):
        raise ValueError(f"A has shape {tuple(A.shape)}; expected (H,) = {(H,)}")
    G, S = B.shape[1], B.shape[-1]
    if B.shape[0] != Bt or B.shape[2] != N:
        raise ValueError(f"B has shape {tuple(B.shape)}; expected (B, G, N, S) with B={Bt}, N={N}")
    if tuple(C.shape) != tuple(B.shape):
        raise ValueError(f"C has shape {tuple(C.shape)}; expected the shape of B {tuple(B.shape)}")
    if G < 1 or H % G:
        raise ValueError(f"heads ({H}) must be divisible by groups of B/C ({G})")
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_finite(name, t)
    if bool((A > 0).any()):
        raise ValueError(f"A must be <= 0 so that decays exp(dt·A) lie in (0, 1]; got max "
                         f"{float(A.max()):.3g}")
    if bool((dt < 0).any()):
        raise ValueError(f"dt must be >= 0 (a step size after softplus); got min {float(dt.min()):.3g}")
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {list(MODES)}")
    check_positive_int("chunk_size", chunk_size)
    if D is not None:
        check_tensor("D", D, 1)
        if tuple(D.shape) != (H,):
            raise ValueError(f"D has shape {tuple(D.shape)}; expected (H,) = {(H,)}")
    R = H // G
    out_dtype = x.dtype
    if out_dtype in LOW_PRECISION:  # decays and exp(±cum) need float32 range and precision
        x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
        D = None if D is None else D.float()
        initial_state = None if initial_state is None else initial_state.float()
    if initial_state is None:
        h0 = x.new_zeros(Bt, G, R, S, P)
    else:
        check_tensor("initial_state", initial_state, 4)
        if tuple(initial_state.shape) != (Bt, H, S, P):
            raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}; expected "
                             f"(B, H, S, P) = {(Bt, H, S, P)}")
        h0 = initial_state.to(x.dtype).reshape(Bt, G, R, S, P)  # (B, G, R, S, P)
    log_a = (dt * A[:, None]).clamp(min=LOG_DECAY_FLOOR).reshape(Bt, G, R, N)  # (B, G, R, N)
    v = (x * dt.unsqueeze(-1)).reshape(Bt, G, R, N, P)  # (B, G, R, N, P): Δ·x
    q, k = C.unsqueeze(2), B.unsqueeze(2)  # (B, G, 1, N, S)
    if mode == "chunked":
        y, hN = chunked(q, k, v, log_a, h0, chunk_size)
    elif mode == "quadratic":
        y, hN = quadratic(q, k, v, log_a, h0)
    else:
        y, hN = recurrent(q, k, v, log_a, h0)
    y = y.reshape(Bt, H, N, P)  # (B, H, N, P)
    if D is not None:
        y = y + D[:, None, None] * x
    y = y.to(out_dtype)
    return (y, hN.reshape(Bt, H, S, P).to(out_dtype)) if output_final_state else y
