"""Implied attention matrices of RWKV's WKV (for head analysis), O(N²·D) memory per row.

- RWKV-4: each channel c is its own normalised "head": for t ≥ i,
  α_{t,i,c} ∝ e^{−(t−1−i)·w_c + k_{i,c}} (i < t),  ∝ e^{u_c + k_{t,c}} (i = t),
  rows summing to 1, so WKV4(k, v)_{t,c} = Σ_i α_{t,i,c} v_{i,c} exactly. Returned as
  (B, H, D, N, N); log-space with a per-row max shift, so it is finite wherever e^{k} is not.
- RWKV-6: per head, unnormalised, A_{t,i} = Σ_d r_{t,d} e^{β_{t−1,d} − β_{i,d}} k_{i,d} (i < t),
  A_{t,t} = Σ_d r_{t,d} u_d k_{t,d}, β the cumulative log decay; WKV6(r, k, v) = A v from a
  zero state. Returned as (B, H, N, N).
"""
from __future__ import annotations

import torch

from ..._checks import check_tensor
from .wkv6 import LOG_DECAY_FLOOR


def wkv4_matrix(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, H, D, N, N) per-channel weights of RWKV-4's WKV; w, u (H, D), k (B, H, N, D)."""
    check_tensor("k", k, 4)
    _, H, N, D = k.shape
    for name, t in (("w", w), ("u", u)):
        check_tensor(name, t, 2)
        if tuple(t.shape) != (H, D):
            raise ValueError(f"{name} must have shape (H, D) = {(H, D)}, got {tuple(t.shape)}")
    w, u, k = w.float(), u.float(), k.float()
    t = torch.arange(N, device=k.device)
    gap = (t[:, None] - 1 - t[None, :]).float()  # (N, N): t − 1 − i
    kc = k.permute(0, 1, 3, 2)  # (B, H, D, N)
    logits = -gap * w[None, :, :, None, None] + kc.unsqueeze(-2)  # (B, H, D, N, N): i < t
    diag = (u[None, :, :, None] + kc)  # (B, H, D, N): the bonus of i = t
    logits = logits.masked_fill(torch.ones(N, N, dtype=torch.bool, device=k.device).triu(),
                                float("-inf"))  # no future keys, diagonal set next
    eye = torch.eye(N, dtype=torch.bool, device=k.device)  # (N, N)
    logits = torch.where(eye, diag.unsqueeze(-1), logits)  # (B, H, D, N, N)
    return torch.softmax(logits, dim=-1)  # max-shifted: finite wherever the ratio is


def wkv6_matrix(r: torch.Tensor, k: torch.Tensor, log_w: torch.Tensor,
                u: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) matrix A with WKV6(r, k, v, log_w, u) = A @ v from a zero state."""
    for name, t in (("r", r), ("k", k), ("log_w", log_w)):
        check_tensor(name, t, 4)
    if r.shape != k.shape or log_w.shape != k.shape:
        raise ValueError(f"r, k, log_w must share shape (B, H, N, D), got {tuple(r.shape)}, "
                         f"{tuple(k.shape)}, {tuple(log_w.shape)}")
    _, H, N, D = k.shape
    check_tensor("u", u, 2)
    if tuple(u.shape) != (H, D):
        raise ValueError(f"u must have shape (H, D) = {(H, D)}, got {tuple(u.shape)}")
    r, k, u = r.float(), k.float(), u.float()
    lw = log_w.float().clamp(min=LOG_DECAY_FLOOR)
    beta = lw.cumsum(2)  # (B, H, N, D): decay through token i
    beta_prev = beta - lw  # (B, H, N, D): through t − 1
    A = torch.diag_embed((r * u[None, :, None, :] * k).sum(-1))  # (B, H, N, N): bonus
    for t in range(1, N):  # row by row: O(N·D) memory per row, exponents ≤ 0
        wt = torch.exp(beta_prev[:, :, t:t + 1] - beta[:, :, :t])  # (B, H, t, D)
        A[:, :, t, :t] = ((r[:, :, t:t + 1] * wt) * k[:, :, :t]).sum(-1)  # (B, H, t)
    return A
