"""Ring attention with a recomputing ring backward (exact; no (N, N) tensor anywhere).

Liu et al., "Ring Attention with Blockwise Transformers" (2023); backward as
FlashAttention-2 (Dao 2023). Each rank keeps its queries; K/V shards travel. Step s of P
pairs rank r with rank r − s (whose K/V it receives) and rank r + s (to which it sends
its own): a shift schedule, so a K/V shard goes only to ranks whose queries see it
(`PeerPlan`, from the mask's block layout). The transfer of the next step is posted
(async isend/irecv) before the current block is computed, so communication overlaps
compute; partial (out, lse) are combined with `merge` (docs/conventions.md §3).

Backward (a second ring): with the saved global (out, lse), every block's probabilities
are recomputed as P = exp(S − lse); dS = P ∘ (dP − rowsum(dO ∘ O)). dQ accumulates
locally; the block's dK/dV are sent back to the rank that owns the block.
Per rank: O(N/P·D) memory (its shard, two K/V buffers in flight, one tile); compute
O(visible pairs · D); traffic per step one K/V shard (forward), one K/V shard plus one
dK/dV shard (backward) — (P−1) of each per rank for full attention.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops.softmax import merge
from .blocks import block_backward, block_forward
from .comm import Comm
from .plan import PeerPlan

KV_FWD, KV_BWD, DKV = 0, 1, 2


def _tag(step: int, kind: int) -> int:
    return 4 * step + kind


@dataclass
class RingSetup:
    """Everything a ring pass needs besides q, k, v."""

    comm: Comm
    peers: PeerPlan
    scale: float
    kv_shapes: list  # per rank: ((B, Hkv, m_j, D), (B, Hkv, m_j, Dv))
    wire_dtype: torch.dtype  # K/V travel in the input dtype
    overlap: bool = True  # False: wait for each step's transfer before computing (measurement)
    step_hook: Callable | None = None  # step_hook(phase, step), called before each block


def _pack(k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([k.reshape(-1).to(dtype), v.reshape(-1).to(dtype)])


def _unpack(buf: torch.Tensor, shapes, dtype: torch.dtype):
    ks, vs = shapes
    nk = ks[0] * ks[1] * ks[2] * ks[3]
    return buf[:nk].view(ks).to(dtype), buf[nk:].view(vs).to(dtype)


def _numel(shapes) -> int:
    ks, vs = shapes
    return ks[0] * ks[1] * ks[2] * ks[3] + vs[0] * vs[1] * vs[2] * vs[3]


class _Traffic:
    """Posts one ring step's transfers; waits them by name."""

    def __init__(self, rs: RingSetup, kv: torch.Tensor, kv_tag: int):
        self.rs, self.kv, self.kv_tag = rs, kv, kv_tag
        self.sends: list = []
        self.dkv_dtype = kv.dtype

    def post(self, s: int, recv_dkv: bool = False):
        rs, comm, peers = self.rs, self.rs.comm, self.rs.peers
        P, r = peers.world, peers.rank
        dst, src = (r + s) % P, (r - s) % P
        got = {"s": s}
        if s == 0:
            return got
        if dst in peers.send:
            self.sends.append(comm.isend(self.kv, dst, _tag(s, self.kv_tag), "kv"))
        if src in peers.recv:
            buf = torch.empty(_numel(rs.kv_shapes[src]), dtype=rs.wire_dtype, device=self.kv.device)
            got["kv"] = (buf, comm.irecv(buf, src, _tag(s, self.kv_tag)))
        if recv_dkv and dst in peers.send:
            buf = torch.empty(_numel(rs.kv_shapes[r]), dtype=self.dkv_dtype, device=self.kv.device)
            got["dkv"] = (buf, comm.irecv(buf, dst, _tag(s, DKV)))
        return got

    def kv_of(self, got, local):
        """The K/V block of this step (waiting for it unless it is our own)."""
        s = got["s"]
        if s == 0:
            return local
        if "kv" not in got:  # a step where this rank only sends
            return None, None
        buf, work = got["kv"]
        src = (self.rs.peers.rank - s) % self.rs.peers.world
        self.rs.comm.wait(work, f"ring step {s}: receive of K/V from rank {src}")
        return _unpack(buf, self.rs.kv_shapes[src], local[0].dtype)

    def finish(self):
        for w in self.sends:
            self.rs.comm.wait(w, "ring send")
        self.sends = []


def _schedule(rs: RingSetup, traffic: _Traffic, fn, **post_kw):
    """Run `fn(got)` for every active step. With `rs.overlap`, the next step's transfer is
    posted before the current block is computed; without, only after it (serialized)."""
    steps = rs.peers.steps()
    nxt = traffic.post(steps[0], **post_kw) if steps else None
    for i, _s in enumerate(steps):
        cur, later = nxt, (steps[i + 1] if i + 1 < len(steps) else None)
        if rs.overlap and later is not None:
            nxt = traffic.post(later, **post_kw)  # in flight while `cur` is computed
        fn(cur)
        if not rs.overlap and later is not None:
            nxt = traffic.post(later, **post_kw)
    traffic.finish()


def ring_forward(rs: RingSetup, q, k, v):
    """out (B, Hq, n, Dv) in q's dtype, lse (B, Hq, n) in the statistics dtype."""
    peers, P, r = rs.peers, rs.peers.world, rs.peers.rank
    B, Hq, n, _ = q.shape
    acc = {"o": q.new_zeros(B, Hq, n, v.shape[3]),
           "lse": torch.full((B, Hq, n), float("-inf"), dtype=torch.float32, device=q.device)}
    acc["lse"] = acc["lse"].to(torch.float64) if q.dtype == torch.float64 else acc["lse"]
    traffic = _Traffic(rs, _pack(k, v, rs.wire_dtype), KV_FWD)
    first = [True]

    def step(got):
        s = got["s"]
        src = (r - s) % P
        kj, vj = traffic.kv_of(got, (k, v))
        if rs.step_hook is not None:
            rs.step_hook("forward", s)
        pair = peers.recv.get(src)
        if pair is None:
            return
        o, lse = block_forward(q, kj, vj, rs.scale, pair.plan, pair.tile_mask)
        if first[0]:
            acc["o"], acc["lse"], first[0] = o, lse, False
        else:
            acc["o"], acc["lse"] = merge(acc["o"], acc["lse"], o, lse)

    _schedule(rs, traffic, step)
    return acc["o"], acc["lse"]


def ring_backward(rs: RingSetup, do, q, k, v, out, lse):
    """(dq, dk, dv) of this rank's q and K/V shard."""
    peers, comm, P, r = rs.peers, rs.comm, rs.peers.world, rs.peers.rank
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    traffic = _Traffic(rs, _pack(k, v, rs.wire_dtype), KV_BWD)
    traffic.dkv_dtype = k.dtype
    pending: list = []  # dK/dV of my block coming back: (buf, work, step)

    def drain(keep: int):
        while len(pending) > keep:
            buf, work, s = pending.pop(0)
            comm.wait(work, f"ring backward step {s}: receive of dK/dV from rank {(r + s) % P}")
            gk, gv = _unpack(buf, rs.kv_shapes[r], k.dtype)
            dk.add_(gk)
            dv.add_(gv)

    def step(got):
        s = got["s"]
        src = (r - s) % P
        kj, vj = traffic.kv_of(got, (k, v))
        if rs.step_hook is not None:
            rs.step_hook("backward", s)
        pair = peers.recv.get(src)
        if pair is not None:
            dqs, dks, dvs = block_backward(do, q, kj, vj, out, lse, rs.scale, pair.plan,
                                           pair.tile_mask)
            dq.add_(dqs)
            if s == 0:
                dk.add_(dks)
                dv.add_(dvs)
            else:
                traffic.sends.append(comm.isend(_pack(dks, dvs, k.dtype), src, _tag(s, DKV), "dkv"))
        if "dkv" in got:
            pending.append((*got["dkv"], s))
        drain(keep=1)  # at most two dK/dV buffers in flight

    _schedule(rs, traffic, step, recv_dkv=True)
    drain(keep=0)
    return dq, dk, dv


class RingAttentionFn(torch.autograd.Function):
    """Ring forward; ring backward recomputing from the saved (out, lse). lse is not
    differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, rs):
        out, lse = ring_forward(rs, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.rs = rs
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ring_backward(ctx.rs, do.contiguous(), q, k, v, out, lse)
        return dq, dk, dv, None
