"""Tiled online-softmax attention with a recomputing backward (FlashAttention-2).

Dao et al., "FlashAttention" (2022) and "FlashAttention-2" (2023). For each query block
the key blocks are visited in order while three float32 statistics are kept per row:

    m_new = max(m, rowmax(S))                    running max
    l_new = exp(m − m_new)·l + rowsum(exp(S − m_new))   running sum
    O_new = exp(m − m_new)·O + exp(S − m_new) V      rescaled accumulator

and at the end `out = O / l`, `lse = m + log l`. The backward recomputes the
probabilities `P = exp(S − lse)` tile by tile from the saved `lse` (no N×N matrix is
kept), with `Δ = rowsum(dO ∘ O)`, `dS = P ∘ (dO Vᵀ − Δ)`.

Cost: O(B·Hq·Nq·Nk·D) time like the dense reference, but O(B·Hq·(Nq + Nk)·D) memory
plus one (q_block × kv_block) tile per step: the (Nq, Nk) score matrix never exists.

This module holds the readable pure-torch tiles. `block_sparse.py` reuses the same tile
loop over a block layout's non-empty blocks (its "tiled" implementation).
Non-finite inputs: rather than scan q, k, v (a full extra read of a long cache), every
fast path checks its OUTPUT (O(N·Dv)) and raises ValueError when a NaN/inf input reached
it; a NaN row is never mistaken for an empty one. Keys a mask hides in EMPTY blocks are
never read, so NaN there cannot poison anything (the dense reference would propagate it).

Accepts float16/bfloat16/float32/float64: tiles are computed in float32 (float64 stays
float64) and the output is cast back to the input dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..._checks import check_positive_int, check_qkv
from ...masks import Mask
from .reference import dense_mask

# tile_mask(q0, q1, k0, k1) -> bool tensor broadcastable to (B, Hq, q1-q0, k1-k0), or None
TileMask = Callable[[int, int, int, int], "torch.Tensor | None"]


@dataclass(frozen=True)
class TilePlan:
    """Which tiles to visit. `rows[i] = (q0, q1, [(k0, k1, masked), ...])`: key ranges of
    query block i in increasing order; `masked` says the tile needs `tile_mask` (PARTIAL),
    otherwise every entry is visible (FULL). Ranges left out are EMPTY and never read.
    `memo`: optional (dict, key) where an executor may keep work derived from this plan
    and its mask (the block-sparse schedule), for later calls with the same mask."""

    nq: int
    nk: int
    rows: tuple
    memo: tuple | None = None

    @staticmethod
    def dense(nq: int, nk: int, q_block: int, kv_block: int, masked: bool) -> TilePlan:
        rows = []
        for q0 in range(0, nq, q_block):
            ks = [(k0, min(k0 + kv_block, nk), masked) for k0 in range(0, nk, kv_block)]
            rows.append((q0, min(q0 + q_block, nq), ks))
        return TilePlan(nq, nk, tuple(rows))


def positions(nq: int, nk: int, q_pos, kv_pos) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions (conventions §2 default: query i at i + Nk − Nq, key j at j)."""
    qp = torch.arange(nq) + (nk - nq) if q_pos is None else torch.as_tensor(q_pos).long()
    kp = torch.arange(nk) if kv_pos is None else torch.as_tensor(kv_pos).long()
    if qp.shape != (nq,):
        raise ValueError(f"q_pos must have shape ({nq},), got {tuple(qp.shape)}")
    if kp.shape != (nk,):
        raise ValueError(f"kv_pos must have shape ({nk},), got {tuple(kp.shape)}")
    return qp, kp


def make_tile_mask(mask, B: int, Hq: int, nq: int, nk: int, q_pos=None,
                   kv_pos=None) -> TileMask | None:
    """A per-tile mask evaluator: a `Mask` is evaluated on the tile's positions only; a
    bool tensor is validated once (shape vs Nq/Nk) and sliced."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        m = dense_mask(mask, B, Hq, nq, nk)  # validates dtype and shape; (B|1, H|1, Nq, Nk)
        return lambda q0, q1, k0, k1: m[..., q0:q1, k0:k1]
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a Mask or a bool tensor, got {type(mask).__name__}")
    qp, kp = positions(nq, nk, q_pos, kv_pos)
    nb = B if mask.uses_batch else 1
    nh = Hq if mask.uses_head else 1
    b = torch.arange(nb).view(nb, 1, 1, 1)
    h = torch.arange(nh).view(1, nh, 1, 1)

    def tile(q0, q1, k0, k1):
        return mask(b, h, qp[q0:q1].view(1, 1, -1, 1), kp[k0:k1].view(1, 1, 1, -1))

    return tile


def _group_view(x: torch.Tensor, Hkv: int, G: int, rows: int) -> torch.Tensor:
    """(B|1, Hq|1, rows, cols) bool tile -> broadcastable to (B, Hkv, G, rows, cols)."""
    Bm, Hm = x.shape[0], x.shape[1]
    if Hm == 1:
        return x.view(Bm, 1, 1, rows, x.shape[-1])
    return x.reshape(Bm, Hkv, G, rows, x.shape[-1])


def _fold(q: torch.Tensor, Hkv: int) -> torch.Tensor:
    """(B, Hq, M, D) -> (B, Hkv, G, M, D): the G query heads reading one KV head."""
    B, Hq, M, D = q.shape
    return q.view(B, Hkv, Hq // Hkv, M, D)


def tiled_forward(q, k, v, scale: float, plan: TilePlan, tile_mask: TileMask | None):
    """The FA-2 forward over `plan`. q (B, Hq, Nq, D) etc. in the compute dtype.
    Returns out (B, Hq, Nq, Dv) and lse (B, Hq, Nq) float32 (-inf on rows with no key)."""
    B, Hq, Nq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = _fold(q, Hkv)  # (B, Hkv, G, Nq, D)
    out = q.new_zeros(B, Hq, Nq, Dv)
    lse = torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float32)
    og, lg = _fold(out, Hkv), lse.view(B, Hkv, G, Nq)
    for q0, q1, ks in plan.rows:
        n = q1 - q0
        qb = qg[:, :, :, q0:q1].reshape(B, Hkv, G * n, D)  # (B, Hkv, G·bq, D)
        m = torch.full((B, Hkv, G * n, 1), float("-inf"), dtype=stat)
        l = torch.zeros(B, Hkv, G * n, 1, dtype=stat)
        acc = torch.zeros(B, Hkv, G * n, Dv, dtype=stat)
        for k0, k1, masked in ks:
            s = torch.matmul(qb, k[:, :, k0:k1].transpose(-1, -2)).mul_(scale)  # (B,Hkv,G·bq,bk)
            if masked:
                keep = _group_view(tile_mask(q0, q1, k0, k1), Hkv, G, n)
                s = s.view(B, Hkv, G, n, k1 - k0).masked_fill(~keep, float("-inf"))
                s = s.view(B, Hkv, G * n, k1 - k0)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            m_ref = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            alpha = torch.exp(m - m_ref)  # 0 when m was -inf
            p = torch.exp(s - m_ref)  # masked entries: exp(-inf) = 0
            l = alpha * l + p.sum(-1, keepdim=True)
            acc = alpha * acc + torch.matmul(p, v[:, :, k0:k1])
            m = m_new
        nonempty = l != 0  # NaN stays NaN (and is reported), never 'empty'
        o = torch.where(nonempty, acc / torch.where(nonempty, l, torch.ones_like(l)), 0.0)
        ls = torch.where(nonempty, m + torch.log(torch.where(nonempty, l, torch.ones_like(l))),
                         float("-inf"))
        og[:, :, :, q0:q1] = o.view(B, Hkv, G, n, Dv).to(out.dtype)
        lg[:, :, :, q0:q1] = ls.view(B, Hkv, G, n).float()
    return out, lse


def tiled_backward(do, q, k, v, out, lse, scale: float, plan: TilePlan,
                   tile_mask: TileMask | None):
    """FA-2 backward: recompute P = exp(S − lse) per tile; never forms (Nq, Nk)."""
    B, Hq, Nq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    qg, dog, og = _fold(q, Hkv), _fold(do, Hkv), _fold(out, Hkv)
    # rows with no key: lse = +inf makes P = exp(S − inf) = 0 on every tile
    lse_safe = torch.where(torch.isfinite(lse), lse, float("inf")).to(q.dtype)
    lsg = lse_safe.view(B, Hkv, G, Nq)
    dqg = _fold(dq, Hkv)
    for q0, q1, ks in plan.rows:
        n = q1 - q0
        qb = qg[:, :, :, q0:q1].reshape(B, Hkv, G * n, D)
        dob = dog[:, :, :, q0:q1].reshape(B, Hkv, G * n, Dv)
        ob = og[:, :, :, q0:q1].reshape(B, Hkv, G * n, Dv)
        delta = (dob * ob).sum(-1, keepdim=True)  # (B, Hkv, G·bq, 1)
        lb = lsg[:, :, :, q0:q1].reshape(B, Hkv, G * n, 1)
        dqb = torch.zeros_like(qb)
        for k0, k1, masked in ks:
            kb, vb = k[:, :, k0:k1], v[:, :, k0:k1]
            s = torch.matmul(qb, kb.transpose(-1, -2)).mul_(scale)
            if masked:
                keep = _group_view(tile_mask(q0, q1, k0, k1), Hkv, G, n)
                s = s.view(B, Hkv, G, n, k1 - k0).masked_fill(~keep, float("-inf"))
                s = s.view(B, Hkv, G * n, k1 - k0)
            p = torch.exp(s - lb)  # (B, Hkv, G·bq, bk)
            dv[:, :, k0:k1] += torch.matmul(p.transpose(-1, -2), dob)
            ds = p * (torch.matmul(dob, vb.transpose(-1, -2)) - delta)
            dqb += torch.matmul(ds, kb) * scale
            dk[:, :, k0:k1] += torch.matmul(ds.transpose(-1, -2), qb) * scale
        dqg[:, :, :, q0:q1] = dqb.view(B, Hkv, G, n, D)
    return dq, dk, dv


def recompute_function(forward_fn, backward_fn, name: str, doc: str):
    """An autograd Function that saves q, k, v, out, lse (O(N·D)) and recomputes the
    probabilities in the backward: `forward_fn(q, k, v, scale, plan, tile_mask) -> (out,
    lse)`, `backward_fn(do, q, k, v, out, lse, scale, plan, tile_mask) -> (dq, dk, dv)`."""

    def forward(ctx, q, k, v, scale, plan, tile_mask):
        out, lse = forward_fn(q, k, v, scale, plan, tile_mask)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.plan, ctx.tile_mask = scale, plan, tile_mask
        ctx.mark_non_differentiable(lse)
        return out, lse

    def backward(ctx, do, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = backward_fn(do.contiguous(), q, k, v, out, lse, ctx.scale, ctx.plan,
                                 ctx.tile_mask)
        return dq, dk, dv, None, None, None

    return type(name, (torch.autograd.Function,), {
        "__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward)})


TiledAttentionFn = recompute_function(
    tiled_forward, tiled_backward, "TiledAttentionFn",
    "Autograd for the tiled path: saves O(N·D); the backward recomputes tiles.")


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    if q.dtype == torch.float64:
        return torch.float64
    raise TypeError(f"q dtype ({q.dtype}) must be a floating type "
                    f"(float16, bfloat16, float32 or float64)")


def check_result(out: torch.Tensor, lse: torch.Tensor) -> None:
    """Non-finite inputs: raise when they reach the result (an O(N·Dv) check of the output,
    so decoding never re-reads the cache). lse may be -inf only on rows with no key.
    One reduction first: a finite sum means finite entries; only a non-finite sum (a NaN or
    inf, or finite values overflowing the sum) pays for the elementwise test."""
    total = out.sum()
    bad_out = not bool(torch.isfinite(total)) and not bool(torch.isfinite(out).all())
    if bad_out or bool((torch.isnan(lse) | (lse == float("inf"))).any()):
        raise ValueError("q, k or v contains NaN or inf that reaches the output; "
                         "expected finite values in every visible query/key/value")


def run_tiles(q, k, v, scale, plan: TilePlan, tile_mask: TileMask | None, return_lse: bool):
    """Shared tail of the tiled paths: upcast, run with autograd, check, cast back."""
    cd = compute_dtype(q)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = TiledAttentionFn.apply(qc, kc, vc, scale, plan, tile_mask)
    else:
        out, lse = tiled_forward(qc, kc, vc, scale, plan, tile_mask)
    check_result(out.detach(), lse)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def flash_attention(q, k, v, *, mask=None, scale: float | None = None, q_block: int = 128,
                    kv_block: int = 256, return_lse: bool = False, q_pos=None, kv_pos=None):
    """Exact attention by FlashAttention-2 tiling (dense: every tile is visited; the mask,
    a `Mask` or a bool tensor, is evaluated tile by tile). Differentiable w.r.t. q, k, v
    with O(N) saved state. q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv).
    Returns `out` or `(out, lse)`; rows with no visible key give 0 and lse = -inf.
    Raises ValueError if a NaN/inf input reaches the output."""
    B, Hq, _Hkv, Nq, Nk, D, _Dv = check_qkv(q, k, v)
    check_positive_int("q_block", q_block)
    check_positive_int("kv_block", kv_block)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    tile_mask = make_tile_mask(mask, B, Hq, Nq, Nk, q_pos, kv_pos)
    plan = TilePlan.dense(Nq, Nk, q_block, kv_block, masked=tile_mask is not None)
    return run_tiles(q, k, v, scale, plan, tile_mask, return_lse)
