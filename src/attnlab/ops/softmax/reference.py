"""The exact oracle: dense softmax attention, written for clarity, computed in float32.

softmax(q kᵀ · scale + score_mod, masked) v with GQA broadcasting, bottom-right causal
alignment, an optional learned sink logit per head, and `lse`. O(B·H·Nq·Nk·D) time and
O(Nq·Nk) memory per head: a reference, not a kernel.
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_qkv, check_scale
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
        from .contract import check_mask

        return check_mask(mask, B, H, Nq, Nk, mask.device)
    raise TypeError(f"mask must be a Mask or a bool tensor, got {type(mask).__name__}")


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    """float64 inputs are computed in float64 (a tighter oracle); every other floating
    dtype (float16, bfloat16, float32) in float32."""
    if q.dtype == torch.float64:
        return torch.float64
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    raise TypeError(f"q dtype ({q.dtype}) must be a floating type "
                    f"(float16, bfloat16, float32 or float64)")


def _check_positions(name: str, pos, n: int) -> torch.Tensor:
    pos = torch.as_tensor(pos)
    if pos.dtype.is_floating_point or pos.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer positions, got dtype {pos.dtype}")
    if pos.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(pos.shape)}")
    return pos.long()


def add_nonfinite_values(out: torch.Tensor, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`out` = p @ v computed with v's non-finite entries set to 0; add those entries back
    only where p > 0, so a key a row does not see (p = 0) never turns 0 · inf into NaN in
    that row. p (B, H, Nq, Nk), v (B, H, Nk, Dv), out (B, H, Nq, Dv)."""
    bad = ~torch.isfinite(v)
    b, h, j, d = bad.nonzero(as_tuple=True)  # one entry per non-finite value
    pj = p[b, h, :, j]  # (n_bad, Nq)
    contrib = torch.where(pj > 0, pj * v[b, h, j, d].unsqueeze(-1), torch.zeros_like(pj))
    out_t = out.transpose(-1, -2).clone()  # (B, H, Dv, Nq)
    out_t.index_put_((b, h, d), contrib, accumulate=True)  # IEEE sums: inf + -inf = NaN
    out = out_t.transpose(-1, -2)
    return out


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
      (s_h = 0 is softmax-off-by-one; s_h = -inf switches the sink off). The sink has no
      value, and `lse` includes it (a row with no visible key then has lse = s_h, out 0).
    - `q_pos` / `kv_pos`: absolute positions (default: query i at i + Nk - Nq, key j at j).
    - Rows with no visible key return 0 and lse = -inf (never NaN).

    Dtypes: float16, bfloat16 and float32 inputs are computed in float32, float64 in
    float64; `out` has q's dtype, `lse` float32 (float64 for float64 inputs, conventions
    §3). Integer inputs raise.

    Non-finite inputs (conventions §2) are not rejected: the oracle propagates them exactly,
    pair by pair. A masked (query, key) pair contributes nothing even when its k or v is
    NaN/inf; a visible score of -inf acts as a masked key; a visible NaN or +inf score
    makes that row's out NaN (lse NaN or +inf); a visible non-finite v entry reaches only
    column d of the rows that see it. Every backend of `attention()` equals this.
    Returns `out` (dtype of q) or `(out, lse)` with lse (B, Hq, Nq).
    """
    B, Hq, Hkv, Nq, Nk, D, _ = check_qkv(q, k, v)
    cd = _compute_dtype(q)
    scale = check_scale(scale)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q_pos = torch.arange(Nq) + (Nk - Nq) if q_pos is None else _check_positions("q_pos", q_pos, Nq)
    kv_pos = torch.arange(Nk) if kv_pos is None else _check_positions("kv_pos", kv_pos, Nk)
    qf, kf = q.to(cd), repeat_kv(k.to(cd), Hq // Hkv)  # (B, Hq, N·, D)
    vf = repeat_kv(v.to(cd), Hq // Hkv)  # (B, Hq, Nk, Dv)
    scores = torch.einsum("bhqd,bhkd->bhqk", qf, kf) * scale  # (B, Hq, Nq, Nk)

    if score_mod is not None:
        b = torch.arange(B, device=q.device).view(B, 1, 1, 1)
        h = torch.arange(Hq, device=q.device).view(1, Hq, 1, 1)
        scores = score_mod(scores, b, h, q_pos.to(q.device).view(1, 1, Nq, 1),
                           kv_pos.to(q.device).view(1, 1, 1, Nk))

    m = dense_mask(mask, B, Hq, Nq, Nk, q_pos=q_pos, kv_pos=kv_pos)
    if m is not None:
        scores = scores.masked_fill(~m.to(scores.device), float("-inf"))

    if sink is not None:
        sink = torch.as_tensor(sink, dtype=cd, device=q.device)
        if sink.shape != (Hq,):
            raise ValueError(f"sink must have shape (Hq,) = ({Hq},), got {tuple(sink.shape)}")
        sink_col = sink.view(1, Hq, 1, 1).expand(B, Hq, Nq, 1)
        scores = torch.cat([scores, sink_col], dim=-1)  # the sink is one extra logit

    lse = torch.logsumexp(scores, dim=-1)  # (B, Hq, Nq); -inf on fully masked rows
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(scores - safe.unsqueeze(-1))  # exp(-inf) = 0 on masked entries
    if sink is not None:
        p = p[..., :Nk]
    finite_v = bool(torch.isfinite(vf).all())
    out = torch.einsum("bhqk,bhkd->bhqd", p, vf if finite_v else vf.nan_to_num(0.0, 0.0, 0.0))
    if not finite_v:
        out = add_nonfinite_values(out, p, vf)
    undefined = torch.isnan(lse) | (lse == float("inf"))  # a visible NaN or +inf score
    out = out.masked_fill(undefined.unsqueeze(-1), float("nan")).to(q.dtype)
    return (out, lse) if return_lse else out
