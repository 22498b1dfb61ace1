"""Decoding across ranks with a sequence-sharded KV cache.

Each rank holds the K/V of 1/P of the context (its prefill shard, then every new token
on the rank holding the fewest, so shards stay within one token of each other). A
decode step computes, on every rank, the split-KV partial (out, lse) of the new
queries against its own slots — the mask evaluated on absolute positions — and ONE
all-gather of the packed partials lets every rank combine them with `merge_many`
(docs/conventions.md §3): equal to single-process decoding, with 1/P of the cache per
rank. Traffic per step: (P−1)·B·Hq·Nq·(Dv + 1) values per rank; compute O(N/P) per rank.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive_int, check_tensor
from ..masks import Mask
from ..ops.softmax import attention, merge_many
from .blocks import stat_dtype
from .comm import Comm


class ShardedKVCache:
    """This rank's slice of a sequence-sharded KV cache (one layer).

    k (B, Hkv, capacity, D), v (B, Hkv, capacity, Dv) preallocated; `positions` are the
    absolute positions of the used slots; `lengths` every rank's used slots (kept in step
    on all ranks, so every rank knows where the next token goes).
    """

    def __init__(self, comm: Comm, batch: int, n_kv_heads: int, head_dim: int, capacity: int,
                 *, v_head_dim: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        for name, val in (("batch", batch), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                          ("capacity", capacity)):
            check_positive_int(name, val)
        dv = head_dim if v_head_dim is None else check_positive_int("v_head_dim", v_head_dim)
        self.comm, self.capacity = comm, capacity
        self.k = torch.zeros(batch, n_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, n_kv_heads, capacity, dv, dtype=dtype, device=device)
        self.pos = torch.zeros(capacity, dtype=torch.long)
        self.lengths = [0] * comm.size

    @property
    def seq_len(self) -> int:
        """Slots used on this rank."""
        return self.lengths[self.comm.rank]

    @property
    def nbytes(self) -> int:
        """Bytes allocated on this rank (K, V and positions)."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.pos))

    @property
    def used_nbytes(self) -> int:
        n = self.seq_len
        return n * (self.k[:, :, :1].numel() * self.k.element_size()
                    + self.v[:, :, :1].numel() * self.v.element_size() + 8)

    def _write(self, k, v, pos) -> None:
        n, at = k.shape[2], self.seq_len
        if at + n > self.capacity:
            raise ValueError(f"sharded cache on rank {self.comm.rank} is full: {at} + {n} "
                             f"tokens exceed capacity ({self.capacity}); nothing was written")
        self.k[:, :, at:at + n] = k
        self.v[:, :, at:at + n] = v
        self.pos[at:at + n] = pos

    def prefill(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store this rank's prefill shard (k (B, Hkv, n, D), v, its positions (n,)); one
        all-gather tells every rank every shard length."""
        check_tensor("k", k, 4)
        check_tensor("v", v, 4)
        positions = torch.as_tensor(positions).long()
        if positions.shape != (k.shape[2],):
            raise ValueError(f"positions must have shape ({k.shape[2]},), got "
                             f"{tuple(positions.shape)}")
        n = torch.tensor([k.shape[2]])
        self._write(k, v, positions)
        got = self.comm.all_gather(n, "meta", "exchange of prefill lengths")
        self.lengths = [a + int(g) for a, g in zip(self.lengths, got)]

    def owner(self) -> int:
        """The rank that stores the next token: fewest used slots, lowest rank on ties."""
        return min(range(self.comm.size), key=lambda r: (self.lengths[r], r))

    def append(self, k: torch.Tensor, v: torch.Tensor, position: int) -> int:
        """One new token's k (B, Hkv, 1, D), v (same on every rank): stored by `owner()`
        only. Returns the owner."""
        if k.shape[2] != 1 or v.shape[2] != 1:
            raise ValueError(f"append takes one token: k {tuple(k.shape)}, v {tuple(v.shape)}")
        r = self.owner()
        if r == self.comm.rank:
            self._write(k, v, torch.tensor([position]))
        self.lengths[r] += 1
        return r


def sharded_decode(q: torch.Tensor, cache: ShardedKVCache, *, mask: Mask | None, q_pos,
                   scale: float | None = None, backend: str = "auto"):
    """Attention of the new queries q (B, Hq, Nq, D) (the same on every rank) over the
    whole sharded cache: local partial, one all-gather, `merge_many`. Returns (out, lse)."""
    check_tensor("q", q, 4)
    comm, n = cache.comm, cache.seq_len
    B, Hq, Nq, D = q.shape
    Dv = cache.v.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    st = stat_dtype(q.dtype)
    if n:
        out, lse = attention(q, cache.k[:, :, :n], cache.v[:, :, :n], mask=mask, scale=scale,
                             backend=backend, return_lse=True, q_pos=q_pos,
                             kv_pos=cache.pos[:n])
    else:  # an empty shard is an empty partial
        out = q.new_zeros(B, Hq, Nq, Dv)
        lse = torch.full((B, Hq, Nq), float("-inf"), device=q.device)
    packed = torch.cat([out.to(st).reshape(-1), lse.to(st).reshape(-1)])
    got = comm.all_gather(packed, "decode", "decode combine")
    no = B * Hq * Nq * Dv
    outs = [g[:no].view(B, Hq, Nq, Dv).to(q.dtype) for g in got]
    lses = [g[no:].view(B, Hq, Nq) for g in got]
    return merge_many(outs, lses)
