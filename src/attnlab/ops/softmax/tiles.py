"""The tiled online-softmax engine (FlashAttention-2) shared by `flash`, `block_sparse`
and every exact fallback: forward, recomputing backward, score_mod, lse gradients and the
non-finite rules of docs/conventions.md §2, in plain torch.

Dao et al., "FlashAttention" (2022) and "FlashAttention-2" (2023). For each query block
the key segments of its plan are visited in order while three statistics are kept per row
(float32; float64 for float64 inputs):

    m_new = max(m, rowmax(S))                    running max
    l_new = exp(m − m_new)·l + rowsum(exp(S − m_new))   running sum
    O_new = exp(m − m_new)·O + exp(S − m_new) V      rescaled accumulator

and at the end `out = O / l`, `lse = m + log l`. The backward recomputes `P = exp(S − lse)`
segment by segment with `Δ = rowsum(dO ∘ O) − dlse` and `dS = P ∘ (dO Vᵀ − Δ)`, so `lse` is
differentiable (d lse / dS = P) and partial results merged with `merge` backpropagate
exactly (conventions §3). A score_mod is differentiated through by autograd per segment.

Non-finite values are exact, not rejected: a masked entry is −inf before any arithmetic,
so a hidden key never contributes; a visible NaN or +inf score flags its row (lse NaN or
+inf, out NaN) and is kept out of the running statistics; a non-finite `v[j, d]` reaches
column d of exactly the rows with p > 0 (`add_nonfinite_values`, as in the reference).

Cost: O(B·Hq·D · Σ visited areas) time; O(B·Hq·(Nq + Nk)·D) memory plus one
(q_block × segment) tile, a segment being up to SEGMENT_KEYS contiguous keys of the plan.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...masks import Mask
from .reference import add_nonfinite_values

# tile_mask(q0, q1, k0, k1) -> bool tensor broadcastable to (B, Hq, q1-q0, k1-k0), or None
TileMask = Callable[[int, int, int, int], "torch.Tensor | None"]
# tile_mod(s (B, Hq, n, L), q0, q1, k0, k1) -> modified scores
TileMod = Callable[[torch.Tensor, int, int, int, int], torch.Tensor]

# contiguous plan tiles are joined into one matmul up to this many keys (block_sparse: a
# sliding-window row of W = 512 over 128-key blocks is one 640-key segment)
SEGMENT_KEYS = 1024


@dataclass(frozen=True)
class TilePlan:
    """Which tiles to visit. `rows[i] = (q0, q1, [(k0, k1, masked), ...])`: key ranges of
    query block i in increasing order; `masked` says the tile needs `tile_mask` (PARTIAL),
    otherwise every entry is visible (FULL). Ranges left out are EMPTY and never read.
    `memo`: optional (store, key) where an executor may keep work derived from this plan
    and its mask (the block-sparse schedule), for later calls with the same structure."""

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


def segments(ks, max_keys: int = SEGMENT_KEYS) -> list[tuple[int, int, bool]]:
    """Join contiguous tiles into segments `(k0, k1, masked)` of at most max_keys keys
    (a single tile longer than that stays whole)."""
    out: list[list] = []
    for k0, k1, masked in ks:
        if out and out[-1][1] == k0 and k1 - out[-1][0] <= max_keys:
            out[-1][1] = k1
            out[-1][2] = out[-1][2] or masked
        else:
            out.append([k0, k1, masked])
    return [tuple(x) for x in out]


def positions(nq: int, nk: int, q_pos=None, kv_pos=None) -> tuple[torch.Tensor, torch.Tensor]:
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
    bool tensor (validated, 4-D) is sliced."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        m = mask if mask.ndim == 4 else mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
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


def make_tile_mod(score_mod, B: int, Hq: int, nq: int, nk: int, device, q_pos=None,
                  kv_pos=None) -> TileMod | None:
    """Apply `score_mod(score, b, h, q_idx, kv_idx)` to a (B, Hq, n, L) tile of scores, with
    absolute positions broadcast like the reference's."""
    if score_mod is None:
        return None
    qp, kp = (p.to(device) for p in positions(nq, nk, q_pos, kv_pos))
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(Hq, device=device).view(1, Hq, 1, 1)

    def tile(s, q0, q1, k0, k1):
        out = score_mod(s, b, h, qp[q0:q1].view(1, 1, -1, 1), kp[k0:k1].view(1, 1, 1, -1))
        return out.to(s.dtype).expand(s.shape)

    return tile


@dataclass(frozen=True)
class TileSpec:
    """Everything the engine needs besides q, k, v: scale, plan, per-tile mask and
    score_mod, whether v holds a non-finite value (exact handling switched on), and how
    many keys contiguous tiles may be joined into (`segments`)."""

    scale: float
    plan: TilePlan
    tile_mask: TileMask | None
    tile_mod: TileMod | None
    v_nonfinite: bool
    segment_keys: int = SEGMENT_KEYS


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


def _scores(qb, kb, spec: TileSpec, q0, q1, k0, k1, masked, Hkv, G, track=False):
    """Scores of one segment, (B, Hkv, G·n, L): scaled, modified, masked (−inf).
    With `track`, returns (scores, raw) where raw requires grad for the score_mod."""
    B, n, L = qb.shape[0], q1 - q0, k1 - k0
    s = torch.matmul(qb, kb.transpose(-1, -2)).mul_(spec.scale)  # (B, Hkv, G·n, L)
    raw = None
    tracked = track and spec.tile_mod is not None
    with torch.enable_grad() if tracked else contextlib.nullcontext():
        if spec.tile_mod is not None:
            s4 = s.view(B, Hkv * G, n, L)  # rows are (group, query): (B, Hq, n, L)
            if tracked:
                raw = s4 = s4.detach().requires_grad_()
            s = spec.tile_mod(s4, q0, q1, k0, k1).reshape(B, Hkv, G * n, L)
        if masked:
            keep = _group_view(spec.tile_mask(q0, q1, k0, k1), Hkv, G, n)
            s = s.view(B, Hkv, G, n, L).masked_fill(~keep, -math.inf).view(B, Hkv, G * n, L)
    return (s, raw) if track else s


def tiled_forward(q, k, v, spec: TileSpec):
    """The FA-2 forward over `spec.plan`. q (B, Hq, Nq, D) etc. in the compute dtype.
    Returns out (B, Hq, Nq, Dv) and lse (B, Hq, Nq) in the statistics dtype."""
    B, Hq, Nq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = _fold(q, Hkv)  # (B, Hkv, G, Nq, D)
    out = q.new_zeros(B, Hq, Nq, Dv)
    lse = torch.full((B, Hq, Nq), -math.inf, dtype=stat, device=q.device)
    og, lg = _fold(out, Hkv), lse.view(B, Hkv, G, Nq)
    for q0, q1, ks in spec.plan.rows:
        if not ks:
            continue
        n = q1 - q0
        qb = qg[:, :, :, q0:q1].reshape(B, Hkv, G * n, D)  # (B, Hkv, G·bq, D)
        m = torch.full((B, Hkv, G * n, 1), -math.inf, dtype=stat, device=q.device)
        l = torch.zeros(B, Hkv, G * n, 1, dtype=stat, device=q.device)
        acc = torch.zeros(B, Hkv, G * n, Dv, dtype=stat, device=q.device)
        nan_row = inf_row = None
        for k0, k1, masked in segments(ks, spec.segment_keys):
            s = _scores(qb, k[:, :, k0:k1], spec, q0, q1, k0, k1, masked, Hkv, G)
            mt = s.amax(-1, keepdim=True)  # NaN propagates through amax
            if bool((torch.isnan(mt) | (mt == math.inf)).any()):  # rule (b): flag the row
                nan_s, inf_s = torch.isnan(s), s == math.inf
                nan_row = nan_s.any(-1, keepdim=True) | (False if nan_row is None else nan_row)
                inf_row = inf_s.any(-1, keepdim=True) | (False if inf_row is None else inf_row)
                s = s.masked_fill(nan_s | inf_s, -math.inf)
                mt = s.amax(-1, keepdim=True)
            m_new = torch.maximum(m, mt)
            m_ref = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - m_ref)  # 0 when m was -inf
            p = torch.exp(s - m_ref)  # masked entries: exp(-inf) = 0
            l = alpha * l + p.sum(-1, keepdim=True)
            vb = v[:, :, k0:k1]
            if spec.v_nonfinite:  # rule (c): only rows with p > 0 see a bad v[j, d]
                pv = torch.matmul(p, vb.nan_to_num(0.0, 0.0, 0.0))
                pv = add_nonfinite_values(pv, p, vb)
                acc = torch.where(alpha > 0, alpha * acc, torch.zeros_like(acc)) + pv
            else:
                acc = alpha * acc + torch.matmul(p, vb)
            m = m_new
        nonempty = l > 0
        o = torch.where(nonempty, acc / torch.where(nonempty, l, torch.ones_like(l)), 0.0)
        ls = torch.where(nonempty, m + torch.log(torch.where(nonempty, l, torch.ones_like(l))),
                         -math.inf)
        if inf_row is not None:
            ls = ls.masked_fill(inf_row, math.inf).masked_fill(nan_row, math.nan)
            o = o.masked_fill(inf_row | nan_row, math.nan)
        og[:, :, :, q0:q1] = o.view(B, Hkv, G, n, Dv).to(out.dtype)
        lg[:, :, :, q0:q1] = ls.view(B, Hkv, G, n)
    return out, lse


def tiled_backward(do, dlse, q, k, v, out, lse, spec: TileSpec):
    """FA-2 backward with lse gradients: recompute P = exp(S − lse) per segment."""
    B, Hq, Nq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    qg, dog, og = _fold(q, Hkv), _fold(do, Hkv), _fold(out, Hkv)
    # rows with no key: lse = +inf makes P = exp(S − inf) = 0 on every tile
    lse_safe = torch.where(lse == -math.inf, math.inf, lse).to(q.dtype)
    lsg = lse_safe.view(B, Hkv, G, Nq)
    dlg = None  # rows with no key do not depend on anything: their dlse is dropped
    if dlse is not None:
        dlg = torch.where(lse == -math.inf, 0.0, dlse).to(q.dtype).view(B, Hkv, G, Nq)
    dqg = _fold(dq, Hkv)
    for q0, q1, ks in spec.plan.rows:
        if not ks:
            continue
        n = q1 - q0
        qb = qg[:, :, :, q0:q1].reshape(B, Hkv, G * n, D)
        dob = dog[:, :, :, q0:q1].reshape(B, Hkv, G * n, Dv)
        ob = og[:, :, :, q0:q1].reshape(B, Hkv, G * n, Dv)
        delta = (dob * ob).sum(-1, keepdim=True)  # (B, Hkv, G·bq, 1)
        if dlg is not None:
            delta = delta - dlg[:, :, :, q0:q1].reshape(B, Hkv, G * n, 1)
        lb = lsg[:, :, :, q0:q1].reshape(B, Hkv, G * n, 1)
        dqb = torch.zeros_like(qb)
        for k0, k1, masked in segments(ks, spec.segment_keys):
            kb, vb = k[:, :, k0:k1], v[:, :, k0:k1]
            s, raw = _scores(qb, kb, spec, q0, q1, k0, k1, masked, Hkv, G, track=True)
            p = torch.exp(s.detach() - lb)  # (B, Hkv, G·bq, L)
            dv[:, :, k0:k1] += torch.matmul(p.transpose(-1, -2), dob)
            ds = p * (torch.matmul(dob, vb.transpose(-1, -2)) - delta)
            if raw is not None:  # through the score_mod
                ds = torch.autograd.grad(s, raw, ds)[0].reshape(ds.shape)
            dqb += torch.matmul(ds, kb) * spec.scale
            dk[:, :, k0:k1] += torch.matmul(ds.transpose(-1, -2), qb) * spec.scale
        dqg[:, :, :, q0:q1] = dqb.view(B, Hkv, G, n, D)
    return dq, dk, dv


def recompute_function(forward_fn, backward_fn, name: str, doc: str):
    """An autograd Function that saves q, k, v, out, lse (O(N·D)) and recomputes the
    probabilities in the backward: `forward_fn(q, k, v, spec) -> (out, lse)`,
    `backward_fn(do, dlse, q, k, v, out, lse, spec) -> (dq, dk, dv)`. `lse` is
    differentiable (dlse is None when nothing used it)."""

    def forward(ctx, q, k, v, spec):
        out, lse = forward_fn(q, k, v, spec)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec = spec
        ctx.set_materialize_grads(False)
        return out, lse

    def backward(ctx, do, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        do = torch.zeros_like(out) if do is None else do.contiguous()
        dq, dk, dv = backward_fn(do, dlse, q, k, v, out, lse, ctx.spec)
        return dq, dk, dv, None

    return type(name, (torch.autograd.Function,), {
        "__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward)})


TiledAttentionFn = recompute_function(
    tiled_forward, tiled_backward, "TiledAttentionFn",
    "Autograd for the tiled path: saves O(N·D); the backward recomputes tiles.")


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float16/bfloat16/float32 compute in float32."""
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    if q.dtype == torch.float64:
        return torch.float64
    raise TypeError(f"q dtype ({q.dtype}) must be a floating type "
                    f"(float16, bfloat16, float32 or float64)")


def run_tiles(call, plan: TilePlan, tile_mask: TileMask | None = None,
              segment_keys: int = SEGMENT_KEYS):
    """The tiled engine on a validated `Call` (contract.py): (out in the compute dtype,
    lse); `contract.finish` rounds out to q's dtype.
    `tile_mask` defaults to the call's mask evaluated per tile."""
    from .contract import nonfinite

    if tile_mask is None and call.mask is not None:
        tile_mask = make_tile_mask(call.mask, call.B, call.Hq, call.Nq, call.Nk, call.q_pos,
                                   call.kv_pos)
    tile_mod = make_tile_mod(call.score_mod, call.B, call.Hq, call.Nq, call.Nk,
                             call.q.device, call.q_pos, call.kv_pos)
    spec = TileSpec(call.scale, plan, tile_mask, tile_mod, nonfinite(call.v), segment_keys)
    cd = compute_dtype(call.q)
    qc, kc, vc = call.q.to(cd), call.k.to(cd), call.v.to(cd)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (qc, kc, vc)):
        out, lse = TiledAttentionFn.apply(qc, kc, vc, spec)
    else:
        out, lse = tiled_forward(qc, kc, vc, spec)
    return out, lse
