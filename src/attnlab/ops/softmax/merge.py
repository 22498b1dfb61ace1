"""Exact merge of partial attention results over disjoint key sets (conventions §3).

lse = logaddexp(lse1, lse2); o = exp(lse1 − lse)·o1 + exp(lse2 − lse)·o2, with -inf
meaning "no keys". Associative and commutative; split-KV decoding, LSH hash rounds, the
block-sparse executor and ring attention all use this one function.

Dtypes: `o` may be float16/bfloat16/float32/float64; weights are computed in the dtype of
the lse given (float64 when either is float64, else float32) and `o` is returned in o1's
dtype, `lse` in that dtype. Non-finite partials propagate: a NaN or +inf `lse` (a
poisoned partial) gives NaN, never a silent 0. Differentiable end to end (through o and
lse), so split-KV and ring attention train exactly. O(N·Dv) per merge.
"""
from __future__ import annotations

import torch


def merge(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor):
    """Combine (o1, lse1) and (o2, lse2): o (..., N, Dv), lse (..., N)."""
    if o1.shape != o2.shape:
        raise ValueError(f"o1 {tuple(o1.shape)} and o2 {tuple(o2.shape)} must have one shape")
    if lse1.shape != lse2.shape or lse1.shape != o1.shape[:-1]:
        raise ValueError(f"lse1 {tuple(lse1.shape)} and lse2 {tuple(lse2.shape)} must equal "
                         f"o.shape[:-1] = {tuple(o1.shape[:-1])}")
    dt = _stat_dtype(lse1, lse2)
    lse1, lse2 = lse1.to(dt), lse2.to(dt)
    # no keys on either side: weights 0, o = 0, lse -inf; the inputs of logaddexp are
    # replaced there so its gradient (NaN at (-inf, -inf)) never reaches the partials
    empty = torch.isneginf(lse1) & torch.isneginf(lse2)
    zero = torch.zeros_like(lse1)
    lse = torch.where(empty, -torch.inf, torch.logaddexp(torch.where(empty, zero, lse1),
                                                          torch.where(empty, zero, lse2)))
    ref = torch.where(empty, torch.zeros_like(lse), lse)
    w1 = torch.where(empty, torch.zeros_like(lse), torch.exp(lse1 - ref)).unsqueeze(-1)
    w2 = torch.where(empty, torch.zeros_like(lse), torch.exp(lse2 - ref)).unsqueeze(-1)
    o = (w1 * o1.to(dt) + w2 * o2.to(dt)).to(o1.dtype)
    return o, lse


def _stat_dtype(*lses: torch.Tensor) -> torch.dtype:
    """float64 when any lse is float64, else float32 (conventions §1, §3)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in lses) else torch.float32


def merge_many(outs: list[torch.Tensor], lses: list[torch.Tensor]):
    """Merge any number of partial results in one pass (stacked weights)."""
    if not outs or len(outs) != len(lses):
        raise ValueError(f"outs ({len(outs)}) and lses ({len(lses)}) must be equal, non-empty lists")
    dt = _stat_dtype(*lses)
    if len(outs) == 1:
        return outs[0], lses[0].to(dt)
    L = torch.stack([x.to(dt) for x in lses])  # (S, ..., N)
    O = torch.stack([x.to(dt) for x in outs])  # (S, ..., N, Dv)
    empty = torch.isneginf(L).all(0)  # no keys in any partial (see `merge`)
    lse = torch.where(empty, -torch.inf, torch.logsumexp(torch.where(empty, 0.0, L), dim=0))
    ref = torch.where(empty, torch.zeros_like(lse), lse)
    w = torch.where(empty, torch.zeros_like(L), torch.exp(L - ref))
    o = (w.unsqueeze(-1) * O).sum(0).to(outs[0].dtype)
    return o, lse
