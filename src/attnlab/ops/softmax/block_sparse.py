"""Block-sparse exact attention over a mask's block layout (forward and backward).

The mask's `BlockLayout` (masks/layout.py) says, per (query block, key block), EMPTY /
PARTIAL / FULL. The executor never reads EMPTY blocks, evaluates the mask predicate only
on PARTIAL blocks, and treats FULL blocks as unmasked. This is the block-sparse idea of
FlashAttention (Dao et al. 2022, §3.3) and of FlexAttention's BlockMask; it serves causal,
sliding-window, global-token, prefix-LM and document masks alike.

Two implementations, the same answer:
- "fused" (default): for each query block, the non-empty key blocks are grouped into
  contiguous runs (a sliding-window row is one run; stretches of FULL blocks of at least
  SPLIT_FULL_MIN keys, e.g. a long causal prefix, are runs of their own with no mask), and
  each run is a single
  call into torch's fused CPU flash kernel
  (`aten._scaled_dot_product_flash_attention_for_cpu`, which returns `lse`) with a small
  additive mask that is -inf only inside the run's PARTIAL blocks. Runs merge exactly
  with `merge_many` (conventions §3). GQA folds the G query heads of a group into the rows of one
  call, so each key/value block is read once per KV head. The backward calls the fused
  flash backward per run with the merged `out`/`lse` (P = exp(S − lse) and
  Δ = rowsum(dO ∘ O) are global quantities, so per-run gradients simply add up).
  When the lse is used (dlse ≠ 0: merged partials, ring attention) the backward is the
  tiled engine's, which takes dlse. Requires Dv == D, no score_mod and float16/bfloat16/
  float32 (the kernel keeps float32 statistics); otherwise "tiled" is used. float16/
  bfloat16 compute in their own dtype where that is faster on this CPU than widening to
  float32, else widened (`fused_calls.compute_dtype`: measured once per process).
  Consecutive query blocks whose run has the same length, the same offset and an
  identical mask (every interior block of a sliding window) are stacked into ONE batched
  call that reads the overlapping key ranges as strided views of K and V (no copy;
  `fused_calls`): under load on 2 cores, a few large calls were 1.7–2.5× faster than one
  call per block (kernels.md). With a
  `Mask` and default positions the tile plan and the schedule (runs and their additive
  masks) are memoised by the mask's structure when small (`masks.memo`), so a layer's
  repeated calls — even with a mask built afresh each call — skip predicate evaluation.
- "tiled": the pure-torch FlashAttention-2 engine of `tiles.py` (score_mod, float64 and
  the exact non-finite rules), visiting only the non-empty blocks.

Cost: O(B·Hq·D · Σ non-empty block areas) time; O(B·Hq·(Nq + Nk)·D) memory plus one
(q_block × run length) tile. The fused path and its default blocks
(`fused_calls.default_blocks`: 32 × 32 for sliding windows up to 1024 keys, else 128 × 128)
were chosen by measurement (window N=16384, W=512 and 4096; causal;
benchmarks/results/kernels_notes.md).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..._checks import check_positive_int
from ...masks import EMPTY, FULL, PARTIAL, Mask, block_layout
from ...masks.memo import memo_for
from .backends import Backend, register_backend
from .contract import Call, finish, nonfinite, validate
from .flash import degenerate
from .fused_calls import (
    BLOCKS,
    batch_keys,
    batch_rows,
    compute_dtype,
    default_blocks,
    fix_empty,
    unbatch_rows,
    unview_rows,
    view_keys,
    view_mask,
    view_rows,
)
from .merge import merge_many
from .reference import dense_mask
from .tiles import TilePlan, TileSpec, make_tile_mask, recompute_function, run_tiles, tiled_backward

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
IMPLS = ("auto", "fused", "tiled")


def block_kinds(mask, B: int, Hq: int, nq: int, nk: int, q_block: int, kv_block: int,
                q_pos=None, kv_pos=None) -> torch.Tensor:
    """(n_q_blocks, n_kv_blocks) int8 EMPTY/PARTIAL/FULL, the union over batch and heads
    (a block is EMPTY / FULL only if it is so for every batch row and head)."""
    n_qb, n_kb = -(-nq // q_block), -(-nk // kv_block)
    if mask is None:
        return torch.full((n_qb, n_kb), FULL, dtype=torch.int8)
    if isinstance(mask, Mask):
        lay = block_layout(mask, nq, nk, q_block, kv_block, q_pos=q_pos, kv_pos=kv_pos,
                           batch=B if mask.uses_batch else None,
                           heads=Hq if mask.uses_head else None)
        kind = lay.kind
    else:
        m = dense_mask(mask, B, Hq, nq, nk)  # validates; (B|1, H|1, Nq, Nk)
        pq, pk = n_qb * q_block - nq, n_kb * kv_block - nk
        shape = (m.shape[0], m.shape[1], n_qb, q_block, n_kb, kv_block)
        anyb = F.pad(m, (0, pk, 0, pq), value=False).reshape(shape).any(5).any(3)
        allb = F.pad(m, (0, pk, 0, pq), value=True).reshape(shape).all(5).all(3)
        kind = torch.where(allb, FULL, torch.where(anyb, PARTIAL, EMPTY)).to(torch.int8)
    empty = (kind == EMPTY).all(0).all(0)
    full = (kind == FULL).all(0).all(0)
    return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL)).to(torch.int8)


def tile_plan(kinds: torch.Tensor, nq: int, nk: int, q_block: int, kv_block: int) -> TilePlan:
    """Per query block, the non-empty key blocks as (k0, k1, is_partial) in key order."""
    rows = []
    kl = kinds.tolist()
    for qb, row in enumerate(kl):
        ks = [(kb * kv_block, min((kb + 1) * kv_block, nk), c == PARTIAL)
              for kb, c in enumerate(row) if c != EMPTY]
        rows.append((qb * q_block, min((qb + 1) * q_block, nq), ks))
    return TilePlan(nq, nk, tuple(rows))


# a stretch of FULL key blocks at least this long becomes its own unmasked call: the fused
# kernel reads an additive mask for every score it computes, so a mask over a long, fully
# visible range costs bandwidth for nothing. Measured under load (kernels_notes.md): a split
# saved 12–13% at W = 4096 and causal N = 8192, and cost 13% at W = 512 (a 384-key stretch)
SPLIT_FULL_MIN = 1024


def runs(ks: list) -> list[tuple[int, int, list]]:
    """A query block's key tiles as contiguous runs `(k0, k1, partial tiles)`: maximal
    contiguous ranges, except that stretches of FULL tiles of at least SPLIT_FULL_MIN keys
    are runs of their own (no mask)."""
    segs: list[list] = []  # [k0, k1, partial tiles, all_full]
    for k0, k1, partial in ks:
        last = segs[-1] if segs else None
        if last is not None and last[1] == k0 and last[3] == (not partial):
            last[1] = k1
        else:
            segs.append([k0, k1, [], not partial])
        if partial:
            segs[-1][2].append((k0, k1))
    out: list[tuple[int, int, list]] = []
    for k0, k1, partial, all_full in segs:
        joinable = out and out[-1][1] == k0 and not (all_full and k1 - k0 >= SPLIT_FULL_MIN)
        if joinable and not out[-1][3]:
            out[-1] = (out[-1][0], k1, out[-1][2] + partial, False)
        else:
            out.append((k0, k1, partial, all_full and k1 - k0 >= SPLIT_FULL_MIN))
    return [(k0, k1, partial) for k0, k1, partial, _ in out]


def _run_mask(tile_mask, q0, q1, r0, r1, partial, Hkv, G, dtype):
    """Additive (B|1, Hkv|1, G·n, r1−r0) mask: 0 on FULL blocks, the predicate on PARTIAL
    ones (evaluated there only). None when the run has no partial block."""
    if not partial:
        return None, None
    n = q1 - q0
    tiles = [(a, b, tile_mask(q0, q1, a, b)) for a, b in partial]
    Bm = max(t.shape[0] for _, _, t in tiles)
    Hm = max(t.shape[1] for _, _, t in tiles)
    keep = torch.ones(Bm, Hm, n, r1 - r0, dtype=torch.bool)
    for a, b, t in tiles:
        keep[:, :, :, a - r0:b - r0] = t
    if Hm == 1:  # the same rows for every head of a group: tile them G times
        keep = keep.unsqueeze(2).expand(Bm, 1, G, n, r1 - r0).reshape(Bm, 1, G * n, r1 - r0)
    else:
        keep = keep.reshape(Bm, Hkv, G * n, r1 - r0)
    add = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, float("-inf"))
    return add, ~keep.any(-1)  # (…, G·n) rows with no key in this run


# bytes of K and V copied for one batched call (unfolded overlapping key ranges)
BATCH_COPY_BYTES = 32 * 2 ** 20


@dataclass
class _Item:
    """Work for one group of calls: `q0s` consecutive query blocks of `n` rows, and the key
    runs `(r0, r1, add, empty)` of the FIRST block. Blocks join a group when their runs have
    the same lengths, the same offsets from the block and identical masks — e.g. every
    interior block of a sliding window — so each run is ONE batched call over all of them
    (key ranges unfolded); the runs of a group are merged with `merge_many`."""

    q0s: list[int]
    n: int
    runs: list[tuple]


def _same_mask(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.shape[0] == 1 and bool(torch.equal(a, b))


def _joins(prev: _Item, q0: int, q1: int, rs: list) -> bool:
    if q1 - q0 != prev.n or q0 != prev.q0s[-1] + prev.n or len(rs) != len(prev.runs):
        return False
    p0 = prev.q0s[0]
    return all(r1 - r0 == s1 - s0 and r0 - q0 == s0 - p0 and _same_mask(a, b)
               for (r0, r1, a, _), (s0, s1, b, _) in zip(rs, prev.runs))


def _schedule(plan, tile_mask, B, Hkv, G, D, dtype) -> Iterator[_Item]:
    """Yield groups lazily: only the current group's masks are alive at any time."""
    prev: _Item | None = None
    for q0, q1, ks in plan.rows:
        if not ks:
            continue
        rs = [(r0, r1, *_run_mask(tile_mask, q0, q1, r0, r1, partial, Hkv, G, dtype))
              for r0, r1, partial in runs(ks)]
        if prev is not None and _joins(prev, q0, q1, rs):
            keys = sum(r1 - r0 for r0, r1, _, _ in rs)
            if len(prev.q0s) < max(1, BATCH_COPY_BYTES // (2 * B * Hkv * keys * D * 4)):
                prev.q0s.append(q0)
                continue
        if prev is not None:
            yield prev
        prev = _Item([q0], q1 - q0, rs)
    if prev is not None:
        yield prev


# schedules whose masks total at most this many bytes are memoised by the mask's structure
# (masks.memo: bounded, least recently used dropped)
SCHEDULE_MEMO_BYTES = 64 * 2 ** 20


def _memo_schedule(plan, tile_mask, B, Hkv, G, D, dtype) -> Iterator[_Item]:
    """`_schedule`, memoised in `plan.memo = (store, key)` (default positions only) when
    its additive masks are small, e.g. every sliding window; a layer calling with the same
    mask structure then skips predicate evaluation and mask comparisons. Large schedules
    (a long causal run keeps a (G·n × run) mask per query block) stay lazy."""
    if plan.memo is None:
        yield from _schedule(plan, tile_mask, B, Hkv, G, D, dtype)
        return
    store, key = plan.memo
    hit = store.get(key)
    if hit is not None:
        yield from hit
        return
    kept, size = [], 0
    for it in _schedule(plan, tile_mask, B, Hkv, G, D, dtype):
        if kept is not None:
            size += sum(a.numel() * a.element_size() for _, _, a, _ in it.runs if a is not None)
            if size <= SCHEDULE_MEMO_BYTES:
                kept.append(it)
            else:
                kept = None  # too large to keep: stays lazy
        yield it
    if kept is not None:
        store.put(key, kept, size)


def _fused_forward(q, k, v, spec: TileSpec):
    B, Hq, Nq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    scale, plan, tile_mask = spec.scale, spec.plan, spec.tile_mask
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = q.new_empty(B, Hq, Nq, D)  # every row is written below: by a run or as empty
    lse = torch.full((B, Hq, Nq, 1), float("-inf"), dtype=stat)
    for q0, q1, ks in plan.rows:
        if not ks:  # no visible key in the whole block: output 0, lse -inf
            out[:, :, q0:q1] = 0
    og, lg = out.view(B, Hkv, G, Nq, D), lse.view(B, Hkv, G, Nq, 1)
    qg = q.view(B, Hkv, G, Nq, D)
    kf, vf = k.view(B * Hkv, k.shape[2], D), v.view(B * Hkv, v.shape[2], D)  # (B·Hkv, Nk, D)
    for it in _memo_schedule(plan, tile_mask, B, Hkv, G, D, q.dtype):
        nb, n, a = len(it.q0s), it.n, it.q0s[0]
        if nb == 1:  # (B, Hkv, G·n, D): the run's mask may differ per batch row
            qb = batch_rows(qg, a, 1, n, B, Hkv, G)
        else:  # (nb, B·Hkv, G·n, D): stacked blocks share one mask (`_joins`)
            qb = view_rows(qg, a, nb, n, B, Hkv, G)
        outs, lses = [], []
        for r0, r1, add, empty in it.runs:
            if nb == 1:
                kb, vb = k[:, :, r0:r1], v[:, :, r0:r1]
            else:
                kb, vb = view_keys(kf, r0, r1 - r0, nb, n), view_keys(vf, r0, r1 - r0, nb, n)
                add = view_mask(add, B)
                empty = view_mask(empty, B)
            o, l = _FLASH(qb, kb, vb, attn_mask=add, scale=scale)
            o, l = fix_empty(o, l.to(stat), empty)
            outs.append(o)
            lses.append(l)
        o, l = merge_many(outs, lses)
        unb = unbatch_rows if nb == 1 else unview_rows
        og[:, :, :, a:a + nb * n] = unb(o, nb, n, B, Hkv, G)
        lg[:, :, :, a:a + nb * n] = unb(l.unsqueeze(-1), nb, n, B, Hkv, G)
    return out, lse.squeeze(-1)


def _fused_backward(do, dlse, q, k, v, out, lse, spec: TileSpec):
    if dlse is not None and bool(dlse.any()):  # lse is used: the tiled backward takes dlse
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        grads = tiled_backward(do.to(cd), dlse, q.to(cd), k.to(cd), v.to(cd), out.to(cd), lse,
                               spec)
        return tuple(g.to(q.dtype) for g in grads)
    B, Hq, Nq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    scale, plan, tile_mask = spec.scale, spec.plan, spec.tile_mask
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    lse_safe = torch.where(torch.isfinite(lse), lse, float("inf"))  # P = 0 on empty rows

    def fold(x):  # (B, Hq, Nq, c) -> (B, Hkv, G, Nq, c)
        return x.reshape(B, Hkv, G, Nq, x.shape[-1])

    qg, dog, og, dqg = fold(q), fold(do), fold(out), fold(dq)
    lg = fold(lse_safe.unsqueeze(-1))
    for it in _memo_schedule(plan, tile_mask, B, Hkv, G, D, q.dtype):
        nb, n, a = len(it.q0s), it.n, it.q0s[0]
        qb, dob, ob = (batch_rows(x, a, nb, n, B, Hkv, G) for x in (qg, dog, og))
        lb = batch_rows(lg, a, nb, n, B, Hkv, G).squeeze(-1)
        dqb = torch.zeros_like(qb)
        for r0, r1, add, _ in it.runs:
            L = r1 - r0
            # P = exp(S − lse) and Δ = rowsum(dO ∘ O) use the merged out/lse: per-run
            # gradients are exact parts of the whole and simply add up
            gq, gk, gv = _FLASH_BWD(dob, qb, batch_keys(k, r0, L, nb, n),
                                    batch_keys(v, r0, L, nb, n), ob, lb, 0.0, False,
                                    attn_mask=add, scale=scale)
            dqb += gq
            gk, gv = gk.view(nb, B, Hkv, L, D), gv.view(nb, B, Hkv, L, D)
            for i in range(nb):  # overlapping key ranges: gradients add up
                dk[:, :, r0 + i * n:r0 + i * n + L] += gk[i]
                dv[:, :, r0 + i * n:r0 + i * n + L] += gv[i]
        dqg[:, :, :, a:a + nb * n] = unbatch_rows(dqb, nb, n, B, Hkv, G)
    return dq, dk, dv


FusedBlockSparseFn = recompute_function(
    _fused_forward, _fused_backward, "FusedBlockSparseFn",
    "Autograd for the fused path: saves q, k, v, out, lse; recomputes per run.")


def block_sparse_run(call: Call, q_block: int | None = None, kv_block: int | None = None,
                     impl: str = "auto"):
    """`attention()`'s "block_sparse" backend on a validated call: (out, lse).

    Blocks default to `fused_calls.default_blocks`. Non-finite inputs (docs/conventions.md
    §2): torch's fused tile computes P @ V over masked slots too and returns 0 for a row
    whose scores are all NaN, so q, k and v are probed first (one pass each,
    O((Nq + Nk)·D)); when any holds a NaN/inf the call runs on the exact tiled engine over
    the same plan (EMPTY blocks are still never read)."""
    if call.Nq == 0 or call.Nk == 0:
        return degenerate(call)
    cd = compute_dtype(call.q.dtype)
    # torch's fused tile keeps float32 statistics even for float64 inputs: float64 runs on
    # the tiled engine, which keeps float64 statistics and lse (conventions §1); so does a
    # sink computed in float16/bfloat16: the fused tile's output is already rounded, and
    # the sink's rescale would round it twice
    lowp_sink = call.sink is not None and cd in (torch.float16, torch.bfloat16)
    tiled = (impl == "tiled" or call.Dv != call.D or call.score_mod is not None or lowp_sink
             or call.q.dtype == torch.float64 or nonfinite(call.q, call.k, call.v))
    window = call.mask.window if isinstance(call.mask, Mask) else None
    dq, dk = BLOCKS if tiled else default_blocks(window)
    q_block, kv_block = q_block or dq, kv_block or dk
    B, Hq, Hkv, Nq, Nk, D = call.B, call.Hq, call.Hkv, call.Nq, call.Nk, call.D
    mask, q_pos, kv_pos = call.mask, call.q_pos, call.kv_pos
    store = None
    if isinstance(mask, Mask) and call.default_positions:
        store, prefix = memo_for(mask)
        pkey = prefix + ("tile plan", B, Hq, Nq, Nk, q_block, kv_block)
        plan = store.get(pkey)
    if store is None or plan is None:
        kinds = block_kinds(mask, B, Hq, Nq, Nk, q_block, kv_block, q_pos, kv_pos)
        plan = tile_plan(kinds, Nq, Nk, q_block, kv_block)
        if store is not None:
            store.put(pkey, plan, 64 * sum(len(ks) + 1 for _, _, ks in plan.rows))
    tile_mask = make_tile_mask(mask, B, Hq, Nq, Nk, q_pos, kv_pos)
    if tiled:
        return run_tiles(call, plan, tile_mask)
    if store is not None:
        plan = replace(plan, memo=(store, prefix + ("fused schedule", B, Hq, Hkv, Nq, Nk, D,
                                                    q_block, kv_block, cd)))
    spec = TileSpec(call.scale, plan, tile_mask, None, False)
    # widened to the compute dtype (a differentiable cast) and unit-stride; `finish`
    # rounds the output to q's dtype once
    qc, kc, vc = (t.to(cd).contiguous() for t in (call.q, call.k, call.v))
    if torch.is_grad_enabled() and (qc.requires_grad or kc.requires_grad or vc.requires_grad):
        return FusedBlockSparseFn.apply(qc, kc, vc, spec)
    return _fused_forward(qc, kc, vc, spec)


def block_sparse_attention(q, k, v, *, mask=None, scale: float | None = None, score_mod=None,
                           sink=None, q_block: int | None = None,
                           kv_block: int | None = None,
                           impl: str = "auto", return_lse: bool = False, q_pos=None,
                           kv_pos=None, check_finite: bool = False):
    """Exact attention visiting only the mask's non-empty blocks; differentiable (also
    through `lse`).

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); `mask` a `Mask` (evaluated on
    absolute positions, PARTIAL blocks only), a bool tensor, or None. `impl`: "fused"
    (torch's CPU flash kernel per contiguous run; needs Dv == D and no score_mod), "tiled"
    (pure torch; takes a score_mod), or "auto" (fused when possible). float16/bfloat16
    run in the fused path with float32 statistics; float64 runs tiled with float64
    statistics. Rows with no
    visible key give 0 and lse = -inf; non-finite inputs follow docs/conventions.md §2.
    """
    call = validate(q, k, v, mask=mask, scale=scale, score_mod=score_mod, sink=sink,
                    return_lse=return_lse, q_pos=q_pos, kv_pos=kv_pos,
                    check_finite_values=check_finite)
    for name, val in (("q_block", q_block), ("kv_block", kv_block)):
        if val is not None:
            check_positive_int(name, val)
    if impl not in IMPLS:
        raise ValueError(f"impl ({impl!r}) must be one of {IMPLS}")
    if impl == "fused" and (call.Dv != call.D or score_mod is not None):
        raise ValueError(f"impl 'fused' needs v head_dim ({call.Dv}) == q head_dim "
                         f"({call.D}) and no score_mod; use impl='tiled' or 'auto'")
    return finish(call, *block_sparse_run(call, q_block, kv_block, impl))


register_backend(Backend(
    "block_sparse", block_sparse_run, rank=30, score_mod=True, sink=True, return_lse=True,
    doc="the mask's non-empty blocks: torch's fused CPU flash tile per run, or the tiles"))
