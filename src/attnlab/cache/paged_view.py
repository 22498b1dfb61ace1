"""A batch of equal-length sequences of a `PagedKVCache` behind the KVCache interface,
and `paged_attend`, the one in-place read of a paged pool that every paged view uses.

`model(tokens, cache.batch_view([a, b]))` runs the model's own forward on the pool. The
view declares `in_place_attention`: layers call `attend`, which reserves room for the
new tokens on the first layer that sees them (refusing before any write when the pool
is short), writes K/V into the sequences' blocks and reads the blocks in place with
`ops.paged.paged_attention` (a windowed layer gathers only its last W − 1 + N keys) —
no copy of the history. A decode step (one new token per sequence, no window, no
gradient, numba present) reads the whole batch through the block tables in one call of
the numba kernel `ops.paged.paged_decode`; every other step keeps the path above. `update` (the plain interface, for callers outside a layer)
writes the same way and returns the history gathered into (B, Hkv, L, D): a copy.
"""
from __future__ import annotations

import torch

from ..masks import Mask
from ..ops.paged import paged_attention, paged_decode
from ..ops.softmax import kv_native
from ..ops.softmax.kv_decode import numba_available
from .base import KVCache, check_n_tokens
from .block_allocator import PoolExhaustedError
from .paged import PagedKVCache


def _valid_keys(valid: torch.Tensor) -> Mask:
    """Key j of row b is real iff valid[b, j] (a right-aligned window of a short row)."""

    def fn(b, h, q, k):
        return valid[b, k.clamp(0, valid.shape[1] - 1)]

    return Mask(fn, "paged-window-rows", uses_batch=True)


_DECODE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def decode_kernel_available() -> bool:
    """A compiled decode kernel (native C++ or numba) is present on this machine."""
    return kv_native.available() or numba_available()


def uses_paged_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                      window: int | None) -> bool:
    """Whether `paged_attend` reads with the block-table decode kernel `paged_decode`:
    one query per sequence (Nq == 1), no window, no gradient to carry (the kernel has no
    backward), a compiled decode kernel (native or numba) present, and q and the pools in
    one float dtype it reads."""
    grad = torch.is_grad_enabled() and (q.requires_grad or k_pool.requires_grad
                                        or v_pool.requires_grad)
    return (window is None and q.shape[2] == 1 and not grad and decode_kernel_available()
            and q.dtype in _DECODE_DTYPES and k_pool.dtype == q.dtype
            and v_pool.dtype == q.dtype)


def paged_attend(pool: PagedKVCache, layer: int, tables: torch.Tensor, lens: torch.Tensor,
                 q: torch.Tensor, *, scale: float | None, window: int | None,
                 attention) -> torch.Tensor:
    """Attention of q (B, H, N, D) — the last N tokens of each of B sequences — over the
    sequences' blocks of pool layer `layer`; lens (B,) counts the N new tokens, whose K/V
    are already written. Returns (B, H, N, Dv).

    No window: a decode step (`uses_paged_decode`) runs `ops.paged.paged_decode`, the
    numba kernel that follows each sequence's block table row by row, for the whole batch
    at once; otherwise `ops.paged.paged_attention` reads the block table (bottom-right
    causal, copying each sequence's blocks when B > 1). Window W: only the last W − 1 + N positions of each row can be seen, so
    exactly those slots are gathered (O(W), not O(L)), right-aligned, and the layer's own
    `attention` runs on relative positions (the window and causal masks only compare
    positions; RoPE was applied before caching); rows shorter than that mask their
    leading slots."""
    kp, vp = pool.layer_pools[layer]  # (Hkv, NB, bs, D), (Hkv, NB, bs, Dv)
    if uses_paged_decode(q, kp, vp, window):
        return paged_decode(q, kp, vp, tables, lens, scale=scale)  # (B, H, 1, Dv)
    if window is None:
        return paged_attention(q, kp, vp, tables, lens, scale=scale)
    B, _, N, _ = q.shape
    Hkv, NB, bs, D = kp.shape
    Lw = min(window - 1 + N, int(lens.max()))
    pos = lens[:, None] - Lw + torch.arange(Lw)  # (B, Lw) absolute positions
    valid = pos >= 0
    posc = pos.clamp(min=0)
    slots = (tables.gather(1, posc // bs) * bs + posc % bs).reshape(-1)  # (B·Lw,)
    k = kp.view(Hkv, NB * bs, D).index_select(1, slots).view(Hkv, B, Lw, D).transpose(0, 1)
    v = vp.view(Hkv, NB * bs, vp.shape[-1]).index_select(1, slots) \
        .view(Hkv, B, Lw, vp.shape[-1]).transpose(0, 1)  # (B, Hkv, Lw, Dv)
    rel = torch.arange(Lw, device=q.device)
    extra = None if bool(valid.all()) else _valid_keys(valid)
    return attention(q, k, v, q_pos=rel[Lw - N:], kv_pos=rel, extra_mask=extra)


class PagedBatchView(KVCache):
    """`attend` / `update(layer_idx, k (B, Hkv, T, D), v)` over sequences `seq_ids` of
    `cache` (see the module docstring)."""

    in_place_attention = True  # update() would gather the history: layers use attend()

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

    def _write(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> int:
        """Reserve (first layer to see these tokens) and write; returns the new length."""
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
        for b, s in enumerate(self.seq_ids):
            c.write(layer_idx, c.slots(s, start, T), k[b], v[b])
        self._lens[layer_idx] = start + T
        return start + T

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Write, then return the history gathered (B, Hkv, L, D): a copy, for callers
        outside a layer; layers read in place through `attend`."""
        L = self._write(layer_idx, k, v)
        ks, vs = zip(*(self.cache.gather(s, layer_idx) for s in self.seq_ids))
        return torch.stack(ks)[:, :, :L], torch.stack(vs)[:, :, :L]  # (B, Hkv, L, D)

    def attend(self, layer_idx, q, k, v, *, attention, q_pos, window=None, rotate=None,
               scale=None):
        """Write k, v and attend over the blocks in place (`paged_attend`)."""
        L = self._write(layer_idx, k, v)
        c = self.cache
        lens = torch.full((len(self.seq_ids),), L, dtype=torch.long)
        return paged_attend(c, layer_idx, c.tables_tensor(self.seq_ids), lens, q,
                            scale=scale, window=window, attention=attention)

    def blocks_needed(self, extra: int) -> int:
        """Fresh blocks reserving `extra` tokens for every sequence takes, in order
        (copy-on-write of a shared last block counted as `reserve` really does it)."""
        return self.cache.blocks_needed_many([(s, extra) for s in self.seq_ids])

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
