"""`context_parallel_attention`: one entry point over ring, zigzag, Ulysses and hybrid.

Every rank of `group` calls it with its shard of the sequence (docs/conventions.md §8)
and gets back its shard of the output (and lse), equal to the matching rows of
single-process `attnlab.attention` on the whole sequence, forward and backward.

| method  | sharding            | needs                          | masks                        |
|---------|---------------------|--------------------------------|------------------------------|
| ring    | contiguous (or any) | nothing                        | any Mask; empty pairs skipped|
| zigzag  | zigzag              | nothing (balanced when 2P | N) | any Mask (made for causal)   |
| ulysses | any                 | Hq % P == 0; Hkv % P or P % Hkv| any Mask                     |
| hybrid  | any                 | P = Pu·Pr, both > 1; Ulysses's | any Mask                     |
|         |                     | rule for Pu                    |                              |
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .._checks import check_positive_int, check_qkv
from ..masks import Mask, full
from ..ops.softmax import attention
from ..ops.softmax.tiles import compute_dtype
from .comm import Comm
from .plan import METHODS, Setup, agree, build_peer_plan
from .ring import RingAttentionFn, RingSetup, ring_forward
from .ulysses import head_groups, ulysses

_GRIDS: dict = {}


def _run_ring(comm: Comm, setup: Setup, q, k, v, mask, scale, q_block, kv_block, overlap,
              step_hook, peers=None):
    """Ring over `comm` with every rank's positions in `setup`; (out, lse) of my queries."""
    peers = build_peer_plan(comm, setup, mask, q_block, kv_block) if peers is None else peers
    B, Hkv, D, Dv = q.shape[0], k.shape[1], k.shape[3], v.shape[3]
    shapes = [((B, Hkv, p.numel(), D), (B, Hkv, p.numel(), Dv)) for p in setup.kv_pos]
    rs = RingSetup(comm, peers, scale, shapes, k.dtype, overlap, step_hook)
    cd = compute_dtype(q)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = RingAttentionFn.apply(qc, kc, vc, rs)
    else:
        out, lse = ring_forward(rs, qc, kc, vc)
    return out.to(q.dtype), lse


def _grid(group, pu: int, timeout_s):
    """(Ulysses sub-group, ring sub-group) of a Pu × Pr grid: Ulysses groups are runs of Pu
    consecutive ranks, ring groups take every Pu-th rank. Created once per (group, Pu) by
    every process of the default group (torch.distributed.new_group's rule)."""
    world = dist.get_world_size(group)
    ranks = [dist.get_global_rank(group, r) if group is not None else r for r in range(world)]
    key = (tuple(ranks), pu)
    if key not in _GRIDS:
        from datetime import timedelta

        from .comm import DEFAULT_TIMEOUT_S
        t = timedelta(seconds=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
        ug = [dist.new_group([ranks[i] for i in range(j * pu, (j + 1) * pu)], timeout=t)
              for j in range(world // pu)]
        rg = [dist.new_group([ranks[i] for i in range(u, world, pu)], timeout=t)
              for u in range(pu)]
        _GRIDS[key] = (ug, rg)
    ug, rg = _GRIDS[key]
    me = dist.get_rank(group)
    return ug[me // pu], rg[me % pu]


def _hybrid(comm: Comm, setup: Setup, q, k, v, mask, scale, pu, q_block, kv_block, overlap,
            step_hook, group, timeout_s):
    P = setup.world
    pr = P // pu
    head_groups(setup.Hq, setup.Hkv, pu)  # divisibility, before any sub-group traffic
    ugroup, rgroup = _grid(group, pu, timeout_s)
    ucomm, rcomm = Comm(ugroup, timeout_s), Comm(rgroup, timeout_s)
    me_u = comm.rank // pu  # which Ulysses group (= my rank in the ring group)

    def seg(pos, j):  # positions held by Ulysses group j, in rank order
        return torch.cat(pos[j * pu:(j + 1) * pu])

    ql = [p.numel() for p in setup.q_pos[me_u * pu:(me_u + 1) * pu]]
    kl = [p.numel() for p in setup.kv_pos[me_u * pu:(me_u + 1) * pu]]

    def local(qh, kh, vh, m):
        rsetup = Setup(rcomm.rank, pr, setup.B, qh.shape[1], kh.shape[1], setup.D, setup.Dv,
                       [seg(setup.q_pos, j) for j in range(pr)],
                       [seg(setup.kv_pos, j) for j in range(pr)])
        return _run_ring(rcomm, rsetup, qh, kh, vh, m, scale, q_block, kv_block, overlap,
                         step_hook)

    return ulysses(ucomm, q, k, v, ql, kl, mask, local)


def context_parallel_attention(q, k, v, *, mask: Mask | None, group=None, method: str = "ring",
                               q_pos=None, kv_pos=None, layout: str | None = None,
                               scale: float | None = None, return_lse: bool = False,
                               backend: str = "auto", ulysses_size: int | None = None,
                               q_block: int = 64, kv_block: int = 64,
                               timeout_s: float | None = None, overlap: bool = True,
                               step_hook=None):
    """Exact attention over a sequence sharded across the ranks of `group`.

    q (B, Hq, n_r, D), k (B, Hkv, m_r, D), v (B, Hkv, m_r, Dv): this rank's shard. Positions:
    `q_pos` / `kv_pos` (absolute, int) given explicitly, or derived from every rank's shard
    length and `layout` ("contiguous", or "zigzag" — the default of method="zigzag").
    `mask`: a `Mask` evaluated on absolute positions, or None (full attention). `backend`:
    the local attnlab backend Ulysses runs. `ulysses_size`: Pu of the hybrid grid.
    `overlap=False` serializes ring transfers and compute (for measuring the overlap).
    `step_hook(phase, step)` is called before each ring block (tracing, fault injection).
    Returns out (B, Hq, n_r, Dv) in q's dtype, or (out, lse) with lse (B, Hq, n_r) float32
    (float64 for float64 inputs); lse is not differentiable. Every rank must call it.
    """
    _, Hq, Hkv, _, _, D, _ = check_qkv(q, k, v)
    if method not in METHODS:
        raise ValueError(f"method ({method!r}) must be one of {METHODS}")
    if mask is not None and not isinstance(mask, Mask):
        raise TypeError(f"mask must be an attnlab Mask or None, got {type(mask).__name__}")
    if layout is None:
        layout = "zigzag" if method == "zigzag" else "contiguous"
    if method == "zigzag" and layout != "zigzag":
        raise ValueError(f"layout ({layout!r}) must be 'zigzag' for method='zigzag'")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)
                                  and scale > 0):
        raise ValueError(f"scale ({scale!r}) must be a finite float > 0 or None (1/sqrt(D))")
    check_positive_int("q_block", q_block)
    check_positive_int("kv_block", kv_block)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    comm = Comm(group, timeout_s)
    P = comm.size
    pu = 0
    if method == "hybrid":
        if ulysses_size is None:
            raise ValueError("method='hybrid' needs ulysses_size (Pu of the Pu x Pr grid)")
        pu = check_positive_int("ulysses_size", ulysses_size)
    setup = agree(comm, q, k, v, method=method, mask=mask, scale=scale, layout=layout,
                  q_pos=q_pos, kv_pos=kv_pos, q_block=q_block, kv_block=kv_block,
                  ulysses_size=pu)
    # every rank now holds the same metadata: the checks below fail on all ranks alike
    if method == "hybrid" and (P % pu or pu < 2 or P // pu < 2):
        raise ValueError(f"ulysses_size ({pu}) must divide the group size ({P}) with both "
                         f"Pu and Pr = P/Pu greater than 1 (docs/conventions.md §8)")
    if method == "ulysses":
        head_groups(Hq, Hkv, P)
    peers = build_peer_plan(comm, setup, mask, q_block, kv_block)  # also checks the mask
    if method in ("ring", "zigzag"):
        out, lse = _run_ring(comm, setup, q, k, v, mask, scale, q_block, kv_block, overlap,
                             step_hook, peers)
    elif method == "ulysses":
        qp, kp = torch.cat(setup.q_pos), torch.cat(setup.kv_pos)

        def local(qh, kh, vh, m):
            # full attention as a Mask: dispatch's SDPA lse path assumes Dv == D
            m = full() if m is None else m
            o, lse_ = attention(qh, kh, vh, mask=m, scale=scale, backend=backend,
                                return_lse=True, q_pos=qp, kv_pos=kp)
            return o, lse_

        out, lse = ulysses(comm, q, k, v, [p.numel() for p in setup.q_pos],
                           [p.numel() for p in setup.kv_pos], mask, local)
    else:
        out, lse = _hybrid(comm, setup, q, k, v, mask, scale, pu, q_block, kv_block, overlap,
                           step_hook, group, timeout_s)
    return (out, lse) if return_lse else out
