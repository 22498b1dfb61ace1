"""Per-rank memory of context parallelism: measured on a run, and on paper.

`LiveBytes` is a measuring context: a TorchDispatchMode that adds the storage of every
tensor a torch operation allocates while it is active and subtracts it when the tensor
that first held the storage is freed; `peak` is the most bytes live at once. (Storage
shared by views is counted once; inputs allocated before the context are not counted.)

`per_rank_memory(...)` spawns P gloo ranks, runs context-parallel attention (forward and
backward) on an N-token sequence and returns each rank's K/V bytes and measured peak
activation bytes next to the same attention in one process (the tiled FlashAttention
path, O(N) memory): the linear K/V growth and FlashAttention's O(N) working set both
split P ways, plus the ring's two K/V buffers in flight.

`paper_memory_per_device(...)` is the formula for a model (K/V cache of every layer for
N/P tokens, and one layer's attention working set).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes() as m: ...` then `m.peak` (bytes) and `m.live` (still held)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._ptrs: set = set()

    def _free(self, ptr: int, n: int) -> None:
        self._ptrs.discard(ptr)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                ptr, n = st.data_ptr(), st.nbytes()
                if n and ptr not in self._ptrs:
                    self._ptrs.add(ptr)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr, n)
        return out


@dataclass(frozen=True)
class RankMemory:
    """Measured memory of one context-parallel attention call (forward + backward)."""

    method: str
    world: int
    n_tokens: int
    kv_bytes_per_rank: tuple  # the rank's K/V shard
    peak_bytes_per_rank: tuple  # measured peak of everything attention allocated
    one_rank_peak_bytes: int  # the same method's code on 1 rank holding the whole sequence
    single_kv_bytes: int  # the whole sequence's K/V in one process
    single_peak_bytes: int  # one process, tiled FlashAttention path, same problem

    def describe(self) -> str:
        mib = 2 ** 20
        return (f"{self.method}, P={self.world}, N={self.n_tokens}: K/V per rank "
                f"{max(self.kv_bytes_per_rank) / mib:.2f} MiB (one process "
                f"{self.single_kv_bytes / mib:.2f} MiB), peak attention memory per rank "
                f"{max(self.peak_bytes_per_rank) / mib:.2f} MiB (the same ring on one rank: "
                f"{self.one_rank_peak_bytes / mib:.2f} MiB; one process, tiled "
                f"FlashAttention: {self.single_peak_bytes / mib:.2f} MiB)")


def _problem(n, heads, kv_heads, head_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, head_dim, generator=g)
    k = torch.randn(1, kv_heads, n, head_dim, generator=g)
    v = torch.randn(1, kv_heads, n, head_dim, generator=g)
    return q, k, v


def _measure(fn, *xs) -> int:
    xs = [x.clone().requires_grad_() for x in xs]
    with LiveBytes() as m:
        out = fn(*xs)
        out.backward(torch.ones_like(out))
    return m.peak


def _rank_worker(rank, world, method, n, heads, kv_heads, head_dim, block):
    from .. import masks as M
    from .api import context_parallel_attention
    from .sharding import shard

    layout = "zigzag" if method == "zigzag" else "contiguous"
    q, k, v = (shard(x, world, rank, layout) for x in _problem(n, heads, kv_heads, head_dim))
    fn = lambda q, k, v: context_parallel_attention(
        q, k, v, mask=M.causal(), method=method, q_block=block, kv_block=block,
        ulysses_size=2 if method == "hybrid" else None)
    kv = k.numel() * k.element_size() + v.numel() * v.element_size()
    return kv, _measure(fn, q, k, v)


def per_rank_memory(n_tokens: int = 4096, world: int = 2, method: str = "ring",
                    heads: int = 8, kv_heads: int = 2, head_dim: int = 64,
                    block: int = 128) -> RankMemory:
    """Measured K/V bytes and peak attention memory per rank of a causal context-parallel
    forward + backward in float32 (spawns `world` gloo ranks, then 1 rank for the same ring
    on the whole sequence: seconds each), with the single-process tiled FlashAttention
    figures of the same problem."""
    from .. import masks as M
    from ..ops.softmax import flash_attention
    from .launch import run_ranks

    got = run_ranks(_rank_worker, world, method, n_tokens, heads, kv_heads, head_dim, block)
    one = run_ranks(_rank_worker, 1, "ring", n_tokens, heads, kv_heads, head_dim, block)[0]
    q, k, v = _problem(n_tokens, heads, kv_heads, head_dim)
    single = _measure(lambda q, k, v: flash_attention(q, k, v, mask=M.causal(), q_block=block,
                                                      kv_block=block), q, k, v)
    return RankMemory(method, world, n_tokens, tuple(g[0] for g in got), tuple(g[1] for g in got),
                      one[1], k.numel() * 4 + v.numel() * 4, single)


def paper_memory_per_device(n_tokens: int, world: int, *, n_layers: int = 32,
                            n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128,
                            dtype_bytes: int = 2) -> dict:
    """Bytes per device for an N-token context split over `world` devices:
    `kv_cache` = 2·L·Hkv·D·(N/P)·bytes (every layer's K/V shard), `ring_buffers` = two
    in-flight K/V shards of one layer, `attention_io` = one layer's q, out (Hq·D each)
    and lse (float32) for N/P tokens — FlashAttention's O(N) working set, split P ways."""
    n = -(-n_tokens // world)
    kv_layer = 2 * n_kv_heads * head_dim * n * dtype_bytes
    return {"tokens_per_device": n, "kv_cache": n_layers * kv_layer, "ring_buffers": 2 * kv_layer,
            "attention_io": 2 * n_heads * head_dim * n * dtype_bytes + n_heads * n * 4}
