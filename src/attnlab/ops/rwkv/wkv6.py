"""RWKV-6 ("Finch"; Peng et al. 2024, "Eagle and Finch") WKV: a matrix-valued state per
head with data-dependent per-channel decay.

    o_t = r_t (S_{t−1} + diag(u) k_tᵀ v_t),      S_t = diag(w_t) S_{t−1} + k_tᵀ v_t
with w_t = exp(log_w_t) ∈ (0, 1] chosen per token and channel (log_w ≤ 0 is the input, as
in flash-linear-attention's `chunk_rwkv6`), u the bonus of the current token.
- chunked: inside a chunk of C tokens the pair weight Σ_d r_{t,d} k_{i,d} e^{β_{t−1,d} − β_{i,d}}
  (β = cumulative log decay, exponents ≤ 0: stable) is formed on a (C, C, D) table; the
  state crosses chunk borders — O(N·C·D·(1 + Dv/D)) time, O(N·C·D) memory;
- parallel: the same with one chunk of N tokens — O(N²·D);
- recurrent: one update per token — O(N·D·Dv), the decode form.
Layouts: r, k, log_w (B, H, N, D), v (B, H, N, Dv), u (H, D), state S (B, H, D, Dv).
fp16/bf16 inputs are computed in float32 and cast back.
"""
from __future__ import annotations

import torch

from ..._checks import check_positive_int, check_tensor
from ..linear.checks import check_finite_fast as check_finite

MODES = ("chunked", "parallel", "recurrent")
# Per-step log decays are floored at −80 (factor 1.8e-35, zero against any fp32 state of
# magnitude < 1e30) so that cumulative sums never meet −inf − (−inf).
LOG_DECAY_FLOOR = -80.0


def _chunk(r, k, v, lw, u, S):
    """One chunk of T tokens from state S (B, H, D, Dv); returns (out, S_end)."""
    T = k.shape[2]
    beta = lw.cumsum(2)  # (B, H, T, D): log decay applied after token i, through i
    beta_prev = beta - lw  # (B, H, T, D): through t − 1 (0 at the chunk start)
    # pair exponents β_{t−1} − β_i for i < t (≤ 0); masked to −inf elsewhere
    Ex = beta_prev.unsqueeze(3) - beta.unsqueeze(2)  # (B, H, T, T, D)
    past = torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1)[None, None, :, :, None]
    Wt = torch.exp(Ex.masked_fill(~past, float("-inf")))  # (B, H, T, T, D)
    A = (r.unsqueeze(3) * k.unsqueeze(2) * Wt).sum(-1)  # (B, H, T, T)
    A = A + torch.diag_embed((r * u[None, :, None, :] * k).sum(-1))  # bonus on the diagonal
    out = A @ v + (r * torch.exp(beta_prev)) @ S  # (B, H, T, Dv)
    to_end = torch.exp(beta[:, :, -1:] - beta)  # (B, H, T, D): decay from i to chunk end
    S_end = torch.exp(beta[:, :, -1]).unsqueeze(-1) * S + (k * to_end).transpose(-1, -2) @ v
    return out, S_end


def _recurrent(r, k, v, lw, u, S):
    w = torch.exp(lw)
    outs = []
    for t in range(k.shape[2]):
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, D, Dv)
        outs.append((r[:, :, t, None, :] @ (S + u[None, :, :, None] * kv)).squeeze(2))
        S = w[:, :, t, :, None] * S + kv
    return torch.stack(outs, 2), S


def wkv6(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor,
         u: torch.Tensor, *, mode: str = "chunked", chunk_size: int = 16,
         initial_state: torch.Tensor | None = None, output_final_state: bool = False):
    """RWKV-6 WKV; returns out (B, H, N, Dv) or (out, S (B, H, D, Dv)).

    Raises ValueError for log_w > 0 (decays outside (0, 1]), non-finite r/k/v/u, NaN log_w,
    mismatched shapes and chunk_size < 1. log_w may be −inf (decay exactly 0).
    """
    for name, t in (("r", r), ("k", k), ("v", v), ("log_w", log_w)):
        check_tensor(name, t, 4)
    check_tensor("u", u, 2)
    for name, t in (("r", r), ("k", k), ("v", v), ("u", u)):
        check_finite(name, t)
    B, H, N, D = k.shape
    Dv = v.shape[-1]
    for name, t in (("r", r), ("log_w", log_w)):
        if tuple(t.shape) != (B, H, N, D):
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected the shape of k "
                             f"{(B, H, N, D)}")
    if tuple(v.shape[:3]) != (B, H, N):
        raise ValueError(f"v has shape {tuple(v.shape)}; expected (B, H, N, Dv) with "
                         f"(B, H, N) = {(B, H, N)}")
    if tuple(u.shape) != (H, D):
        raise ValueError(f"u has shape {tuple(u.shape)}; expected (H, D) = {(H, D)}")
    if bool(torch.isnan(log_w).any()) or bool((log_w > 0).any()):
        raise ValueError("log_w must be <= 0 and not NaN (decays exp(log_w) in (0, 1]); got "
                         f"max {float(log_w.nan_to_num(nan=float('inf')).max()):.3g}")
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {list(MODES)}")
    check_positive_int("chunk_size", chunk_size)
    out_dtype = k.dtype
    if out_dtype in (torch.float16, torch.bfloat16):  # decay products need float32 range
        r, k, v, log_w, u = (t.float() for t in (r, k, v, log_w, u))
        if isinstance(initial_state, torch.Tensor):
            initial_state = initial_state.float()
    if initial_state is None:
        S = k.new_zeros(B, H, D, Dv)
    else:
        check_tensor("initial_state", initial_state, 4)
        if tuple(initial_state.shape) != (B, H, D, Dv):
            raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}; expected "
                             f"(B, H, D, Dv) = {(B, H, D, Dv)}")
        S = initial_state.to(k.dtype)
    lw = log_w.clamp(min=LOG_DECAY_FLOOR)
    if mode == "recurrent":
        out, S = _recurrent(r, k, v, lw, u, S)
    else:
        C = N if mode == "parallel" else chunk_size
        outs = []
        for s in range(0, N, C):
            o, S = _chunk(r[:, :, s:s + C], k[:, :, s:s + C], v[:, :, s:s + C],
                          lw[:, :, s:s + C], u, S)
            outs.append(o)
        out = torch.cat(outs, 2)  # (B, H, N, Dv)
    out = out.to(out_dtype)
    return (out, S.to(out_dtype)) if output_final_state else out
