"""The three algorithms of causal linear attention, on already feature-mapped inputs.

With features qf = φ(q), kf = φ(k) the causal output at step t is
    o_t = qf_t S_t / (qf_t · z_t + eps),  S_t = S_{t-1} + kf_tᵀ v_t,  z_t = z_{t-1} + kf_t
(Katharopoulos et al. 2020, eqs. 4–6 and §3.4; eps = 1e-6 as in their reference code).
- parallel: (tril(qf kfᵀ)) v — O(N²·(F + Dv)) time, O(N²) memory;
- chunked: quadratic inside chunks of C tokens, the state carries across chunks —
  O(N·C·(F + Dv) + N·F·Dv) time, all in matmuls (Yang et al. 2024, "Gated Linear
  Attention", §2.2 "chunkwise parallel form");
- recurrent: one state update per token — O(N·F·Dv) time, O(F·Dv) memory, a Python loop.

Layouts: qf (B, Hkv, G, N, F) — the G query heads sharing one key/value head sit on their
own axis (conventions §1 grouping); kf (B, Hkv, N, F); v (B, Hkv, N, Dv). The state is per KV
head: S (B, Hkv, F, Dv), z (B, Hkv, F) (z is None without the normaliser).
Queries and keys are aligned (query t reads keys ≤ t); the public boundary in
`attention.py` handles Nq != Nk and initial states.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class LinearState(NamedTuple):
    """Recurrent state of linear attention: S = Σ φ(k)ᵀv (B, Hkv, F, Dv), z = Σ φ(k) (B, Hkv, F)."""

    S: torch.Tensor
    z: torch.Tensor | None


def _readout(num: torch.Tensor, den: torch.Tensor | None, eps: float) -> torch.Tensor:
    return num if den is None else num / (den.unsqueeze(-1) + eps)


def causal_parallel(qf, kf, v, S0, z0, eps: float):
    """tril(qf kfᵀ) v plus the initial state's contribution; returns (out, LinearState)."""
    N = kf.shape[-2]
    mask = torch.ones(N, N, dtype=torch.bool, device=kf.device).tril()  # (N, N)
    A = (qf @ kf.unsqueeze(2).transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, Hkv, G, N, N)
    num = A @ v.unsqueeze(2) + qf @ S0.unsqueeze(2)  # (B, Hkv, G, N, Dv)
    den = None
    S = S0 + kf.transpose(-1, -2) @ v  # (B, Hkv, F, Dv)
    z = None
    if z0 is not None:
        den = A.sum(-1) + (qf @ z0[:, :, None, :, None]).squeeze(-1)  # (B, Hkv, G, N)
        z = z0 + kf.sum(-2)  # (B, Hkv, F)
    return _readout(num, den, eps), LinearState(S, z)


def causal_chunked(qf, kf, v, S0, z0, eps: float, chunk_size: int):
    """Intra-chunk quadratic + inter-chunk state; returns (out, LinearState).

    The G query heads that share a key head are stacked into each chunk's rows, so every
    matmul is one batched GEMM of shape (G·C, F) x (F, C), (G·C, C) x (C, Dv) or
    (G·C, F) x (F, Dv); the normaliser is a row sum of the masked scores plus a
    matrix-vector product with the key sum at the chunk start.
    """
    B, Hkv, G, N, Fd = qf.shape
    Dv = v.shape[-1]
    C = min(chunk_size, N)
    pad = (-N) % C
    if pad:  # zero keys/values add nothing to the state; padded query rows are dropped
        qf = torch.nn.functional.pad(qf, (0, 0, 0, pad))
        kf = torch.nn.functional.pad(kf, (0, 0, 0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    nc = (N + pad) // C
    qc = qf.reshape(B, Hkv, G, nc, C, Fd).transpose(2, 3).reshape(B, Hkv, nc, G * C, Fd)
    kc = kf.reshape(B, Hkv, nc, C, Fd)  # (B, Hkv, nc, C, F)
    vc = v.reshape(B, Hkv, nc, C, Dv)  # (B, Hkv, nc, C, Dv)

    def starts(contrib, init):  # exclusive prefix sum over chunks, plus the initial state
        incl = contrib.cumsum(2)
        return torch.cat([torch.zeros_like(incl[:, :, :1]), incl[:, :, :-1]], 2) + \
            init.unsqueeze(2), incl[:, :, -1] + init

    S_start, S = starts(kc.transpose(-1, -2) @ vc, S0)  # (B, Hkv, nc, F, Dv), (B, Hkv, F, Dv)
    mask = torch.ones(C, C, dtype=torch.bool, device=qf.device).tril().repeat(G, 1)  # (G·C, C)
    A = (qc @ kc.transpose(-1, -2)).masked_fill_(~mask, 0.0)  # (B, Hkv, nc, G·C, C)
    out = torch.baddbmm((A @ vc).flatten(0, 2), qc.flatten(0, 2), S_start.flatten(0, 2))
    out = out.view(B, Hkv, nc, G * C, Dv)
    z = None
    if z0 is not None:
        z_start, z = starts(kc.sum(-2), z0)  # (B, Hkv, nc, F), (B, Hkv, F)
        den = A.sum(-1) + (qc @ z_start.unsqueeze(-1)).squeeze(-1)  # (B, Hkv, nc, G·C)
        out = out / (den.unsqueeze(-1) + eps)
    out = out.view(B, Hkv, nc, G, C, Dv).transpose(2, 3).reshape(B, Hkv, G, nc * C, Dv)
    return out[..., :N, :], LinearState(S, z)  # (B, Hkv, G, N, Dv)


def causal_recurrent(qf, kf, v, S0, z0, eps: float):
    """Token-by-token state updates (the decode form); returns (out, LinearState)."""
    S, z = S0, z0
    outs = []
    for t in range(kf.shape[-2]):
        S = S + kf[:, :, t, :, None] * v[:, :, t, None, :]  # (B, Hkv, F, Dv)
        q_t = qf[:, :, :, t]  # (B, Hkv, G, F)
        num = q_t.unsqueeze(-2) @ S.unsqueeze(2)  # (B, Hkv, G, 1, Dv)
        den = None
        if z is not None:
            z = z + kf[:, :, t]  # (B, Hkv, F)
            den = (q_t * z.unsqueeze(2)).sum(-1, keepdim=True)  # (B, Hkv, G, 1)
        outs.append(_readout(num, den, eps))
    return torch.cat(outs, dim=-2), LinearState(S, z)  # (B, Hkv, G, N, Dv)


def bidirectional(qf, kf, v, S0, z0, eps: float, quadratic: bool):
    """Non-causal: every query reads every key; `quadratic` computes (qf kfᵀ) v explicitly."""
    S = S0 + kf.transpose(-1, -2) @ v  # (B, Hkv, F, Dv)
    z = None if z0 is None else z0 + kf.sum(-2)  # (B, Hkv, F)
    if quadratic:
        A = qf @ kf.unsqueeze(2).transpose(-1, -2)  # (B, Hkv, G, Nq, Nk)
        num = A @ v.unsqueeze(2) + qf @ S0.unsqueeze(2)
        den = None if z0 is None else A.sum(-1) + (qf @ z0[:, :, None, :, None]).squeeze(-1)
    else:
        num = qf @ S.unsqueeze(2)  # (B, Hkv, G, Nq, Dv)
        den = None if z is None else (qf @ z[:, :, None, :, None]).squeeze(-1)
    return _readout(num, den, eps), LinearState(S, z)
