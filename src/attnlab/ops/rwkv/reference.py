"""Naive float32 references for RWKV's WKV operators.

- `wkv4_reference`: the defining ratio of sums, term by term, without any max shift —
  obviously correct, valid only while e^{k} and e^{u + k} stay inside fp32 range.
- `wkv6_reference`: the defining recurrence one token at a time with explicit products.
"""
from __future__ import annotations

import torch

from .wkv6 import LOG_DECAY_FLOOR


def wkv4_reference(w, u, k, v):
    """(B, H, N, D) output of RWKV-4's WKV from a zero state."""
    w, u, k, v = (t.float() for t in (w, u, k, v))
    B, H, N, D = k.shape
    out = torch.zeros(B, H, N, D)
    for t in range(N):
        num = torch.exp(u + k[:, :, t]) * v[:, :, t]  # (B, H, D): the current token's bonus
        den = torch.exp(u + k[:, :, t])
        for i in range(t):
            e = torch.exp(-(t - 1 - i) * w + k[:, :, i])
            num = num + e * v[:, :, i]
            den = den + e
        out[:, :, t] = num / den
    return out


def wkv6_reference(r, k, v, log_w, u, initial_state=None):
    """(out (B, H, N, Dv), final state (B, H, D, Dv)) of RWKV-6's WKV."""
    r, k, v, log_w, u = (t.float() for t in (r, k, v, log_w, u))
    B, H, N, D = k.shape
    S = torch.zeros(B, H, D, v.shape[-1]) if initial_state is None else initial_state.float()
    w = torch.exp(log_w.clamp(min=LOG_DECAY_FLOOR))
    out = []
    for t in range(N):
        kv = torch.einsum("bhd,bhe->bhde", k[:, :, t], v[:, :, t])
        out.append(torch.einsum("bhd,bhde->bhe", r[:, :, t], S + u[None, :, :, None] * kv))
        S = torch.einsum("bhd,bhde->bhde", w[:, :, t], S) + kv
    return torch.stack(out, 2), S
