"""One rank's work on one K/V block: the FlashAttention-2 tiles over a `TilePlan`.

The forward is the online-softmax tile loop of `ops/softmax/flash.py` (Dao 2023) with
one difference the ring needs: the block's `lse` is returned in the statistics dtype
(float64 for float64 inputs), because ring attention merges P partial results with that
lse and recomputes P = exp(S − lse) from it in the backward; a float32 lse would cap a
float64 ring at float32 accuracy. The backward is the tiled engine's `tiled_backward`
unchanged (it takes the global out/lse, so per-block gradients simply add up).
Cost per block: O(B·Hq·Σ visible tile areas·D); memory one (q_block × kv_block) tile.
"""
from __future__ import annotations

import torch

from ..ops.softmax.tiles import TilePlan, TileSpec, _fold, _group_view, tiled_backward

__all__ = ["block_backward", "block_forward", "stat_dtype"]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics dtype (docs/conventions.md §1): float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def block_forward(q, k, v, scale: float, plan: TilePlan, tile_mask):
    """q (B, Hq, n, D), k (B, Hkv, m, D), v (B, Hkv, m, Dv) in the compute dtype.
    Returns out (B, Hq, n, Dv) and lse (B, Hq, n) in `stat_dtype` (−inf: no visible key)."""
    B, Hq, n_all, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    st = stat_dtype(q.dtype)
    qg = _fold(q, Hkv)  # (B, Hkv, G, n, D)
    out = q.new_zeros(B, Hkv, G, n_all, Dv)
    lse = torch.full((B, Hkv, G, n_all), float("-inf"), dtype=st, device=q.device)
    for q0, q1, ks in plan.rows:
        if not ks:
            continue
        n = q1 - q0
        qb = qg[:, :, :, q0:q1].reshape(B, Hkv, G * n, D)  # (B, Hkv, G·n, D)
        m = torch.full((B, Hkv, G * n, 1), float("-inf"), dtype=st, device=q.device)
        l = torch.zeros(B, Hkv, G * n, 1, dtype=st, device=q.device)
        acc = torch.zeros(B, Hkv, G * n, Dv, dtype=st, device=q.device)
        for k0, k1, masked in ks:
            s = torch.matmul(qb, k[:, :, k0:k1].transpose(-1, -2)).mul_(scale)  # (B,Hkv,G·n,bk)
            if masked:
                keep = _group_view(tile_mask(q0, q1, k0, k1), Hkv, G, n).to(s.device)
                s = s.view(B, Hkv, G, n, k1 - k0).masked_fill(~keep, float("-inf"))
                s = s.view(B, Hkv, G * n, k1 - k0)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            ref = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = torch.exp(s - ref)  # masked: exp(-inf) = 0
            alpha = torch.exp(m - ref)  # 0 while m is -inf
            l = alpha * l + p.sum(-1, keepdim=True)
            acc = alpha * acc + torch.matmul(p, v[:, :, k0:k1])
            m = m_new
        seen = l != 0
        one = torch.ones_like(l)
        o = torch.where(seen, acc / torch.where(seen, l, one), 0.0)  # (B, Hkv, G·n, Dv)
        ls = torch.where(seen, m + torch.log(torch.where(seen, l, one)), float("-inf"))
        out[:, :, :, q0:q1] = o.view(B, Hkv, G, n, Dv).to(out.dtype)
        lse[:, :, :, q0:q1] = ls.view(B, Hkv, G, n)
    return out.view(B, Hq, n_all, Dv), lse.view(B, Hq, n_all)


def block_backward(do, q, k, v, out, lse, scale: float, plan: TilePlan, tile_mask):
    """(dq, dk, dv) of one block given the GLOBAL out and lse (FlashAttention-2 backward;
    the ring's lse is not differentiated, so no dlse)."""
    spec = TileSpec(scale=scale, plan=plan, tile_mask=tile_mask, tile_mod=None,
                    v_nonfinite=False)
    return tiled_backward(do, None, q, k, v, out, lse, spec)
