"""Naive float32 reference for SSD: the unrolled sum, term by term.

y_i = Σ_{j≤i} (a_{j+1}···a_i) (C_i · B_j) Δ_j x_j + (a_1···a_i) C_i h0 + D x_i,
with a_t = exp(max(Δ_t A, LOG_DECAY_FLOOR)) and the products of decays formed directly
(no log-space cumulative sums). O(N²·(S + P)) per head; use on small inputs only.
"""
from __future__ import annotations

import torch

from .forms import LOG_DECAY_FLOOR


def ssd_reference(x, dt, A, B, C, *, D=None, initial_state=None):
    """Returns (y (B, H, N, P), final state (B, H, S, P)), float32."""
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    Bt, H, N, P = x.shape
    G, S = B.shape[1], B.shape[-1]
    R = H // G
    h0 = torch.zeros(Bt, H, S, P) if initial_state is None else initial_state.float()
    a = torch.exp((dt * A[:, None]).clamp(min=LOG_DECAY_FLOOR))  # (B, H, N) per-step decays
    y = torch.zeros(Bt, H, N, P)
    hN = torch.zeros(Bt, H, S, P)
    for h in range(H):
        g = h // R
        for i in range(N):
            acc = torch.prod(a[:, h, : i + 1], -1)[:, None] * (C[:, g, i, None, :] @ h0[:, h]).squeeze(1)
            for j in range(i + 1):
                decay = torch.prod(a[:, h, j + 1: i + 1], -1)  # (B,) empty product = 1
                w = decay * (C[:, g, i] * B[:, g, j]).sum(-1) * dt[:, h, j]  # (B,)
                acc = acc + w[:, None] * x[:, h, j]
            y[:, h, i] = acc
        hN[:, h] = torch.prod(a[:, h], -1)[:, None, None] * h0[:, h]
        for j in range(N):
            decay = torch.prod(a[:, h, j + 1:], -1) * dt[:, h, j]  # (B,)
            hN[:, h] += decay[:, None, None] * B[:, g, j, :, None] * x[:, h, j, None, :]
    if D is not None:
        y = y + D.float()[:, None, None] * x
    return y, hN
