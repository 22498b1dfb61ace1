"""The exact oracle: dense softmax attention, written for clarity, computed in float32.

softmax(q kᵀ · scale + score_mod, masked) v with GQA broadcasting, bottom-right causal
alignment, an optional learned sink logit per head, and `lse`. O(B·H·Nq·Nk·D) time and
O(Nq·Nk) memory per head: a reference, not a kernel.
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_qkv
from ...masks import Mask
from .score_mods import ScoreMod


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, N, D) -> (B, Hkv·n_rep, N, D); query head h reads KV head h // n_rep."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def dense_mask(mask, B: int, H: int, Nq: int, Nk: int, q_pos=None, kv_pos=None) -> torch.Tensor | None:
    """Lower a Mask or a boolean tensor to a (B|1, H|1, Nq, Nk) boolean mask."""
    if mask is None:
        return None
    if isinstance(mask, Mask):
        return mask.to_dense(Nq, Nk, q_pos=q_pos, kv_pos=kv_pos, batch=B, heads=H)
    if isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"mask tensor must be bool (True = attend), got {mask.dtype}")
        if mask.shape[-2:] != (Nq, Nk):
            raise ValueError(f"mask shape {tuple(mask.shape)} must end with (Nq, Nk) = ({Nq}, {Nk})")
        while mask.ndim < 4:
            mask = mask.unsqueeze(0)
        try:
            torch.broadcast_shapes(mask.shape, (B, H, Nq, Nk))
        except RuntimeError as exc:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to "
                             f"(B, Hq, Nq, Nk) = {(B, H, Nq, Nk)}") from exc
        return mask
    raise TypeError(f"mask must be a Mask or a bool tensor, got {type(mask).__name__}")


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: Mask | torch.Tensor | None = None,
    scale: float | None = None,
    score_mod: ScoreMod | None = None,
    sink: torch.Tensor | None = None,
    q_pos: torch.Tensor | None = None,
    kv_pos: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Dense attention. q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv).

    - `mask`: a `Mask` predicate (evaluated on absolute positions) or a bool tensor
      broadcastable to (B, Hq, Nq, Nk); True = attend.
    - `scale`: defaults to 1/sqrt(D).
    - `score_mod(score, b, h, q_pos, kv_pos)`: e.g. `alibi(slopes)`, `softcap(50.0)`.
    - `sink`: (Hq,) learned sink logit s_h: p_ij = exp(z_ij) / (exp(s_h) + Σ_k exp(z_ik))
      (s_h = 0 is softmax-off-by-one). The sink has no value, and `lse` includes it.
    - `q_pos` / `kv_pos`: absolute positions (default: query i at i + Nk - Nq, key j at j).
    - Rows with no visible key return 0 and lse = -inf (never NaN).
    Returns `out` (dtype of q) or `(out, lse)` with lse (B, Hq, Nq) float32.
    """
    B, Hq, Hkv, Nq, Nk, D, Dv = check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qf, kf, vf = q.float(), repeat_kv(k.float(), Hq // Hkv), repeat_kv(v.float(), Hq // Hkv)
    scores = torch.einsum("bhqd,bhkd->bhqk", qf, kf) * scale  # (B, Hq, Nq, Nk)

    if q_pos is None:
        q_pos = torch.arange(Nq) + (Nk - Nq)
    if kv_pos is None:
        kv_pos = torch.arange(Nk)
    q_pos = torch.as_tensor(q_pos).long()
    kv_pos = torch.as_tensor(kv_pos).long()
    if score_mod is not None:
        b = torch.arange(B).view(B, 1, 1, 1)
        h = torch.arange(Hq).view(1, Hq, 1, 1)
        scores = score_mod(scores, b, h, q_pos.view(1, 1, Nq, 1), kv_pos.view(1, 1, 1, Nk))

    m = dense_mask(mask, B, Hq, Nq, Nk, q_pos=q_pos, kv_pos=kv_pos)
    if m is not None:
        scores = scores.masked_fill(~m, float("-inf"))

    if sink is not None:
        sink = torch.as_tensor(sink, dtype=torch.float32)
        if sink.shape != (Hq,):
            raise ValueError(f"sink must have shape (Hq,) = ({Hq},), got {tuple(sink.shape)}")
        sink_col = sink.view(1, Hq, 1, 1).expand(B, Hq, Nq, 1)
        scores = torch.cat([scores, sink_col], dim=-1)  # the sink is one extra logit

    lse = torch.logsumexp(scores, dim=-1)  # (B, Hq, Nq); -inf on fully masked rows
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(scores - safe.unsqueeze(-1))  # exp(-inf) = 0 on masked entries
    if sink is not None:
        p = p[..., :Nk]
    out = torch.einsum("bhqk,bhkd->bhqd", p, vf).to(q.dtype)
    return (out, lse) if return_lse else out
