"""A batch of equal-length sequences of a `PagedKVCache` behind the KVCache interface.

Lets any model that speaks conventions §4 (`update`, `seq_len`, `kv_positions`) run on the
paged pool: `model(tokens, cache.batch_view([a, b]))`. Each layer's `update` reserves
room for the new tokens on first sight (refusing before any write when the pool is
short), writes K/V into the sequences' blocks, and returns the history gathered into a
contiguous (B, Hkv, L, D) tensor. That gather is a copy of the history per layer and
step — this view exists for interface conformance and tests; the serving path
(`serving.runner`) instead reads blocks in place with `ops.paged.paged_attention`.
"""
from __future__ import annotations

import torch

from .base import KVCache, check_n_tokens
from .block_allocator import PoolExhaustedError
from .paged import PagedKVCache


class PagedBatchView(KVCache):
    """`update(layer_idx, k (B, Hkv, T, D), v)` over sequences `seq_ids` of `cache`."""

    def __init__(self, cache: PagedKVCache, seq_ids: list):
        if not isinstance(cache, PagedKVCache):
            raise TypeError(f"cache must be a PagedKVCache, got {type(cache).__name__}")
        if not seq_ids:
            raise ValueError("seq_ids must name at least one sequence")
        dup = sorted({repr(s) for s in seq_ids if list(seq_ids).count(s) > 1})
        if dup:
            raise ValueError(f"seq_ids must be distinct; {', '.join(dup)} appear more than "
                             "once")
        lens = {s: cache.seq_len(s) for s in seq_ids}
        if len(set(lens.values())) != 1:
            raise ValueError(f"sequences must have equal lengths for one batch, got {lens}")
        self.cache, self.seq_ids = cache, list(seq_ids)
        self.n_layers = cache.n_layers
        self._lens = [lens[seq_ids[0]]] * self.n_layers

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        self._check_layer(layer_idx)
        c, B = self.cache, len(self.seq_ids)
        if k.ndim != 4 or k.shape[0] != B or v.ndim != 4 or v.shape[:3] != k.shape[:3]:
            raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must be (B={B}, Hkv, T, D)")
        start, T = self._lens[layer_idx], k.shape[2]
        extra = start + T - c.seq_len(self.seq_ids[0])
        if extra > 0:  # first layer to see these tokens: reserve for every sequence
            self._check_blocks(extra)
            for s in self.seq_ids:
                c.reserve(s, extra)
        ks, vs = [], []
        for b, s in enumerate(self.seq_ids):
            c.write(layer_idx, c.slots(s, start, T), k[b], v[b])
            kk, vv = c.gather(s, layer_idx)  # (Hkv, L, D) copies
            ks.append(kk[:, : start + T])
            vs.append(vv[:, : start + T])
        self._lens[layer_idx] = start + T
        return torch.stack(ks), torch.stack(vs)  # (B, Hkv, L, D)

    def blocks_needed(self, extra: int) -> int:
        """Fresh blocks reserving `extra` tokens for every sequence takes, in order.

        A last block shared by several sequences of the view is copied by all but the
        last of them to write (its ref count drops with each copy), so copy-on-write is
        counted as `reserve` will really do it, not once per sharer."""
        c, bs = self.cache, self.cache.block_size
        refs: dict[int, int] = {}
        need = 0
        for s in self.seq_ids:
            table, L = c.block_table(s), c.seq_len(s)
            need += -(-(L + extra) // bs) - len(table)
            if extra > 0 and L % bs:
                last = table[-1]
                r = refs.get(last, c.allocator.ref[last])
                if r > 1:
                    need += 1
                    refs[last] = r - 1
        return need

    def _check_blocks(self, extra: int) -> None:
        c = self.cache
        need = self.blocks_needed(extra)
        if need > c.allocator.n_free:
            raise PoolExhaustedError(f"pool exhausted: {need} blocks needed for {extra} "
                                     f"tokens × {len(self.seq_ids)} sequences, "
                                     f"{c.allocator.n_free} free")

    def check_append(self, n_tokens: int) -> None:
        """Whether the pool has the blocks for `n_tokens` more tokens of every sequence
        (reserved once for all layers by the first layer's update)."""
        check_n_tokens(n_tokens)
        extra = max(self._lens) + n_tokens - self.cache.seq_len(self.seq_ids[0])
        if extra > 0:
            self._check_blocks(extra)

    def seq_len(self, layer_idx: int = 0) -> int:
        self._check_layer(layer_idx)
        return self._lens[layer_idx]

    @property
    def capacity(self) -> int:
        c = self.cache
        return self._lens[0] + c.allocator.n_free * c.block_size // len(self.seq_ids)

    def reset(self) -> None:
        raise NotImplementedError("a paged view cannot forget tokens; free the sequences")

    @property
    def nbytes(self) -> int:
        c = self.cache
        blocks = {b for s in self.seq_ids for b in c.block_table(s)}
        return len(blocks) * c.bytes_per_block
