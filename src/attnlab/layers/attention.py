"""Multi-head attention with shared key/value heads: MHA, GQA and MQA in one module.

- MHA (Vaswani et al. 2017): `n_kv_heads == n_heads`.
- GQA (Ainslie et al. 2023): `n_heads % n_kv_heads == 0`; query head h reads KV head
  `h // (n_heads // n_kv_heads)` (conventions §1, HF `repeat_kv` grouping).
- MQA (Shazeer 2019): `n_kv_heads == 1`.

RoPE (Su et al. 2021) on queries and keys, optional sliding window of W keys including
self (Mistral 7B, W = 4096 per docs/sources.md), and any exact softmax backend from
`attnlab.ops.softmax`. Cost per forward: O(N·d_model·(H + 2·Hkv)·D) for projections plus
O(H·Nq·Nk·D) for attention; the cache holds 2·Hkv·D elements per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_divisible, check_positive_int, check_tensor
from ..cache.base import CacheStack, KVCache
from ..cache.contiguous import ContiguousKVCache
from ..cache.rolling import RollingKVCache
from ..masks import Mask, causal, sliding_window
from ..ops.rope import apply_rope
from ..ops.softmax import BACKENDS, attention
from .base import Mixer
from .hooks import HookPoint


def check_backend(backend) -> str:
    """`backend` must be "auto" or a registered exact backend (validated at construction)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    known = sorted(b for b in BACKENDS if b != "auto_hook")
    if backend != "auto" and backend not in known:
        raise ValueError(f"backend ({backend!r}) must be 'auto' or one of {known}")
    return backend


def check_hidden(name: str, x, d_model: int, dtype: torch.dtype,
                 device: torch.device | None = None) -> torch.Tensor:
    """Hidden states must be a (B, N, d_model) tensor of the layer's dtype (any dtype
    under torch.autocast, which casts per op) and, when `device` is given, on the
    layer's device."""
    check_tensor(name, x, 3)
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} last dimension ({x.shape[-1]}) must equal d_model ({d_model})")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the layer's weights are on {device}; "
                         f"expected {device}")
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's weights are {dtype}; "
                        f"expected {dtype}")
    return x


def resolve_heads(d_model: int, n_heads: int, n_kv_heads: int | None,
                  head_dim: int | None) -> tuple[int, int]:
    """Validate a layer's head geometry; returns (n_kv_heads, head_dim).

    `n_kv_heads=None` means MHA (= n_heads); `head_dim=None` means d_model // n_heads,
    which then must divide. `n_heads` must be divisible by `n_kv_heads` (conventions §1).
    """
    check_positive_int("d_model", d_model)
    check_positive_int("n_heads", n_heads)
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    check_positive_int("n_kv_heads", n_kv_heads)
    check_divisible("n_heads", n_heads, "n_kv_heads", n_kv_heads)
    if head_dim is None:
        check_divisible("d_model", d_model, "n_heads", n_heads)
        head_dim = d_model // n_heads
    check_positive_int("head_dim", head_dim)
    return n_kv_heads, head_dim


def add_projections(module: nn.Module, d_model: int, d_kv_in: int, n_heads: int,
                    n_kv_heads: int, head_dim: int, bias: bool) -> None:
    """Give `module` the q/k/v/o projections of multi-head attention and its hook points
    `hook_q`, `hook_k`, `hook_v`, `hook_head_out` (identity unless hooked). Keys and
    values are projected from width `d_kv_in` (d_model, or the encoder's for cross)."""
    module.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
    module.k_proj = nn.Linear(d_kv_in, n_kv_heads * head_dim, bias=bias)
    module.v_proj = nn.Linear(d_kv_in, n_kv_heads * head_dim, bias=bias)
    module.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
    module.hook_q = HookPoint("q")
    module.hook_k = HookPoint("k")
    module.hook_v = HookPoint("v")
    module.hook_head_out = HookPoint("head_out")


KV_CACHES = ("contiguous", "rolling")


def check_kv_cache(kv_cache, window: int | None) -> str:
    """`kv_cache` names the cache `new_cache` builds; "rolling" needs a window."""
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache ({kv_cache!r}) must be one of {list(KV_CACHES)}")
    if kv_cache == "rolling" and window is None:
        raise ValueError("kv_cache ('rolling') needs a window; got window=None")
    return kv_cache


def check_cache(cache) -> None:
    if cache is not None and not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")


def self_attention_mask(window: int | None, is_causal: bool) -> Mask | None:
    """causal(), sliding_window(W), or None (bidirectional)."""
    if window is not None:
        return sliding_window(window)
    return causal() if is_causal else None


def positions_are_slots(cache: KVCache, layer_idx: int) -> bool:
    """True when slot j of the layer's cache holds absolute position j (contiguous cache)."""
    if isinstance(cache, CacheStack):
        cache, layer_idx = cache.layer(layer_idx), 0
    return type(cache) is ContiguousKVCache


@dataclass
class AttentionSpec:
    """Config of one self-attention layer; `build(d_model, layer_idx)` makes it.

    `n_kv_heads=None` means MHA; `head_dim=None` means d_model // n_heads.
    """

    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    window: int | None = None
    rope: bool = True
    rope_base: float = 10000.0
    rope_interleaved: bool = False
    bias: bool = False
    scale: float | None = None
    backend: str = "auto"
    kv_cache: str = "contiguous"

    def __post_init__(self) -> None:
        check_positive_int("n_heads", self.n_heads)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        check_positive_int("n_kv_heads", self.n_kv_heads)
        check_divisible("n_heads", self.n_heads, "n_kv_heads", self.n_kv_heads)
        if self.head_dim is not None:
            check_positive_int("head_dim", self.head_dim)
        if self.window is not None:
            check_positive_int("window", self.window)
        check_backend(self.backend)
        check_kv_cache(self.kv_cache, self.window)

    def build(self, d_model: int, layer_idx: int) -> Attention:
        return Attention(d_model, self.n_heads, self.n_kv_heads, self.head_dim,
                         rope=self.rope, rope_base=self.rope_base,
                         rope_interleaved=self.rope_interleaved, window=self.window,
                         bias=self.bias, scale=self.scale, backend=self.backend,
                         layer_idx=layer_idx, kv_cache=self.kv_cache)


class Attention(Mixer):
    """Self-attention with `n_kv_heads` key/value heads shared by groups of query heads.

    forward(x (B, N, d_model), cache=None) -> (B, N, d_model). With a cache, the N new
    tokens sit at positions `cache.seq_len(layer_idx) + arange(N)`; keys are rotated
    before they are cached, and the mask is evaluated on the absolute positions of the
    queries and of the slots the cache returns (`cache.kv_positions`).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, *, rope: bool = True,
                 rope_base: float = 10000.0, rope_interleaved: bool = False,
                 window: int | None = None, causal: bool = True, bias: bool = False,
                 scale: float | None = None, backend: str = "auto", layer_idx: int = 0,
                 kv_cache: str = "contiguous"):
        super().__init__()
        n_kv_heads, head_dim = resolve_heads(d_model, n_heads, n_kv_heads, head_dim)
        if rope and head_dim % 2:
            raise ValueError(f"head_dim ({head_dim}) must be even when rope=True")
        if window is not None:
            check_positive_int("window", window)
            if not causal:
                raise ValueError(f"window ({window}) needs causal=True; a bidirectional "
                                 "window is not supported")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale ({scale}) must be > 0 or None (1/sqrt(head_dim))")
        check_positive_int("layer_idx", layer_idx, minimum=0)
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = (
            d_model, n_heads, n_kv_heads, head_dim)
        self.rope, self.rope_base, self.rope_interleaved = rope, float(rope_base), rope_interleaved
        self.window, self.causal, self.bias, self.scale = window, causal, bias, scale
        self.backend = check_backend(backend)
        self.layer_idx = layer_idx
        self.kv_cache = check_kv_cache(kv_cache, window)
        self.mask = self_attention_mask(window, causal)

        add_projections(self, d_model, d_model, n_heads, n_kv_heads, head_dim, bias)

    @property
    def n_groups(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, rope={self.rope}, window={self.window}, "
                f"causal={self.causal}, backend={self.backend!r}, layer_idx={self.layer_idx}")

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.q_proj.weight.dtype, self.q_proj.weight.device)
        check_cache(cache)
        B, N, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        start = 0 if cache is None else cache.seq_len(self.layer_idx)
        positions = torch.arange(start, start + N, device=x.device)  # (N,)

        q = self.q_proj(x).view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
        k = self.k_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
        v = self.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
        # caches with `rope_in_cache` (StreamingLLM sink cache) store keys before RoPE and
        # define positions themselves: rotate after `update`, with the cache's positions
        rope_in_cache = getattr(cache, "rope_in_cache", False)
        if self.rope and not rope_in_cache:
            q = apply_rope(q, positions, base=self.rope_base, interleaved=self.rope_interleaved)
            k = apply_rope(k, positions, base=self.rope_base, interleaved=self.rope_interleaved)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        if cache is None:  # default positions (0..N-1) let fused backends use their causal path
            q_pos = kv_pos = None
        else:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, L, D) views
            q_pos, kv_pos = positions, cache.kv_positions(self.layer_idx)
            if rope_in_cache:  # queries sit at the last N in-cache positions
                q_pos = kv_pos[-N:]
                if self.rope:
                    rot = {"base": self.rope_base, "interleaved": self.rope_interleaved}
                    q, k = apply_rope(q, q_pos, **rot), apply_rope(k, kv_pos, **rot)
            if self.window is not None and positions_are_slots(cache, self.layer_idx):
                # keys before the first query's window are masked for every query: skip
                # them, so a decode step reads W keys, not the whole history (exact)
                lo = max(0, start - self.window + 1)
                k, v, kv_pos = k[:, :, lo:], v[:, :, lo:], kv_pos[lo:]  # (B, Hkv, L - lo, D)
        out = attention(q, k, v, mask=self.mask, scale=self.scale, backend=self.backend,
                        q_pos=q_pos, kv_pos=kv_pos)  # (B, H, N, D)
        out = self.hook_head_out(out)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, H * D))  # (B, N, d_model)

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> KVCache:
        """A one-layer cache for this layer's KV heads: ContiguousKVCache, or with
        `kv_cache="rolling"` a RollingKVCache of W slots (memory capped at the window)."""
        if self.kv_cache == "rolling":
            return RollingKVCache(1, batch, self.n_kv_heads, self.head_dim, self.window,
                                  dtype=dtype, device=device)
        return ContiguousKVCache(1, batch, self.n_kv_heads, self.head_dim, capacity,
                                 dtype=dtype, device=device)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """2 (K and V) · n_kv_heads · head_dim · bytes (docs/sources.md, KV cache formulas)."""
        check_positive_int("dtype_bytes", dtype_bytes)
        return 2 * self.n_kv_heads * self.head_dim * dtype_bytes
