"""DeepSpeed-Ulysses sequence parallelism: all-to-all from sequence shards to head shards.

Jacobs et al., "DeepSpeed Ulysses" (2023). Each of P ranks holds all heads of its
sequence shard; one all-to-all gives each rank Hq/P query heads (and their K/V heads)
over the whole sequence, any attnlab backend computes attention locally, and a second
all-to-all returns the output to sequence shards. Divisibility (docs/conventions.md §8):
Hq % P == 0; K/V heads are split when Hkv % P == 0, and when P % Hkv == 0 each rank gets
the one K/V head its query heads read (replicated on P/Hkv ranks); anything else raises.
Both all-to-alls are autograd functions (the backward is the reverse all-to-all; a
replicated K/V head's gradients are summed on its owner).
Traffic per rank: (P−1)/P of its q, k/v (per destination's heads) and output shards;
memory: O(N·Hq/P·D) per rank (the whole sequence for its heads).
"""
from __future__ import annotations

import torch

from ..masks import Mask
from .comm import Comm


def head_groups(n_heads: int, n_kv_heads: int, world: int) -> tuple[list, list]:
    """(query heads of each rank, K/V heads each rank needs) for a Ulysses group of `world`."""
    if n_heads % world:
        raise ValueError(f"q heads ({n_heads}) must be divisible by the Ulysses group size "
                         f"({world}) (docs/conventions.md §8)")
    hq = n_heads // world
    q_groups = [list(range(g * hq, (g + 1) * hq)) for g in range(world)]
    if n_kv_heads % world == 0:
        hk = n_kv_heads // world
        kv_groups = [list(range(g * hk, (g + 1) * hk)) for g in range(world)]
    elif world % n_kv_heads == 0:
        rep = world // n_kv_heads
        kv_groups = [[g // rep] for g in range(world)]
    else:
        raise ValueError(f"k/v heads ({n_kv_heads}) and the Ulysses group size ({world}): "
                         "k/v heads must be divisible by the group size (heads split) or the "
                         "group size by k/v heads (heads replicated); neither holds")
    return q_groups, kv_groups


def _to_heads(x, comm: Comm, groups: list, lengths: list, kind: str) -> torch.Tensor:
    """(B, H, n_me, d) sequence shard -> (B, |groups[me]|, Σ lengths, d) head shard."""
    B, _, _, d = x.shape
    me = comm.rank
    send = [x[:, g].contiguous() for g in groups]  # (B, |g|, n_me, d) for rank g
    hm = len(groups[me])
    got = comm.all_to_all(send, [B * hm * n * d for n in lengths], kind)
    return torch.cat([t.view(B, hm, n, d) for t, n in zip(got, lengths)], dim=2)


def _to_seq(y, comm: Comm, groups: list, lengths: list, n_heads: int, kind: str) -> torch.Tensor:
    """(B, |groups[me]|, Σ lengths, d) -> (B, n_heads, n_me, d); a head held by several ranks
    (replicated K/V) receives the sum of their contributions."""
    B, _, _, d = y.shape
    me = comm.rank
    send = list(y.split(lengths, dim=2))  # (B, h_me, n_s, d) for rank s
    n_me = lengths[me]
    got = comm.all_to_all(send, [B * len(g) * n_me * d for g in groups], kind)
    x = y.new_zeros(B, n_heads, n_me, d)
    for t, g in zip(got, groups):
        x.index_add_(1, torch.tensor(g, device=x.device), t.view(B, len(g), n_me, d))
    return x


class SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm, groups, lengths, kind):
        ctx.comm, ctx.groups, ctx.lengths, ctx.n_heads = comm, groups, lengths, x.shape[1]
        return _to_heads(x, comm, groups, lengths, kind)

    @staticmethod
    def backward(ctx, gy):
        return _to_seq(gy.contiguous(), ctx.comm, ctx.groups, ctx.lengths, ctx.n_heads,
                       "grad"), None, None, None, None


class HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, comm, groups, lengths, n_heads, kind):
        ctx.comm, ctx.groups, ctx.lengths = comm, groups, lengths
        return _to_seq(y, comm, groups, lengths, n_heads, kind)

    @staticmethod
    def backward(ctx, gx):
        return _to_heads(gx.contiguous(), ctx.comm, ctx.groups, ctx.lengths,
                         "grad"), None, None, None, None, None


def head_offset_mask(mask, offset: int):
    """A head-dependent mask seen from a rank holding heads offset, offset+1, ...: the local
    head index h is global head h + offset. Masks that ignore the head pass through."""
    if mask is None or not mask.uses_head or offset == 0:
        return mask
    return Mask(lambda b, h, q, k: mask(b, h + offset, q, k), mask.name,
                uses_batch=mask.uses_batch, uses_head=True, kv_bounds=mask.kv_bounds)


def ulysses(comm: Comm, q, k, v, q_lengths: list, kv_lengths: list, mask, local_fn):
    """All-to-all to head shards, `local_fn(qh, kh, vh, mask) -> (out, lse)` on the whole
    sequence for this rank's heads, all-to-all back. Returns (out, lse) sequence shards."""
    Hq = q.shape[1]
    qg, kg = head_groups(Hq, k.shape[1], comm.size)
    qh = SeqToHeads.apply(q, comm, qg, q_lengths, "qkv")  # (B, Hq/P, N, D)
    kh = SeqToHeads.apply(k, comm, kg, kv_lengths, "qkv")  # (B, Hkv/P or 1, N, D)
    vh = SeqToHeads.apply(v, comm, kg, kv_lengths, "qkv")
    out_h, lse_h = local_fn(qh, kh, vh, head_offset_mask(mask, qg[comm.rank][0]))
    out = HeadsToSeq.apply(out_h, comm, qg, q_lengths, Hq, "out")  # (B, Hq, n_me, Dv)
    lse = _to_seq(lse_h.detach().unsqueeze(-1), comm, qg, q_lengths, Hq, "lse").squeeze(-1)
    return out, lse
