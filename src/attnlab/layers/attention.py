"""Multi-head attention with shared key/value heads: MHA, GQA and MQA in one module.

- MHA (Vaswani et al. 2017): `n_kv_heads == n_heads`.
- GQA (Ainslie et al. 2023): `n_heads % n_kv_heads == 0`; query head h reads KV head
  `h // (n_heads // n_kv_heads)` (conventions §1, HF `repeat_kv` grouping).
- MQA (Shazeer 2019): `n_kv_heads == 1`.

RoPE (Su et al. 2021) on queries and keys with optional frequency scaling
(`ops.rope_scaling`: linear, dynamic NTK, YaRN, Llama 3), optional RMSNorm on queries and
keys (per head as in Qwen3, or over the whole projection as in OLMo-2), a bias per
projection (Qwen2: q/k/v only), optional sliding window of W keys including self
(Mistral 7B, W = 4096 per docs/sources.md), Hugging Face-style `position_ids` and
`attention_mask` (padding; `layers.positions`), and any exact softmax backend from
`attnlab.ops.softmax`. Cost per forward: O(N·d_model·(H + 2·Hkv)·D) for projections plus
O(H·Nq·Nk·D) for attention; the cache holds 2·Hkv·D elements per token.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_divisible, check_positive_int, check_tensor
from ..cache.base import KVCache
from ..cache.context import AttentionContext, as_context
from ..cache.contiguous import ContiguousKVCache
from ..cache.layout import PagedLayout
from ..cache.rolling import RollingKVCache
from ..masks import Mask, causal, sliding_window
from ..ops.rope import apply_rope
from ..ops.rope_scaling import RopeScaling
from ..ops.softmax import BACKENDS, attention
from .base import Mixer
from .hooks import HookPoint
from .positions import check_position_ids, with_padding


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


def projection_biases(bias) -> tuple[bool, bool, bool, bool]:
    """`bias`: one bool for all four projections, or four bools (q, k, v, o), e.g. Qwen2's
    (True, True, True, False)."""
    if isinstance(bias, bool):
        return (bias,) * 4
    if (isinstance(bias, Sequence) and len(bias) == 4
            and all(isinstance(b, bool) for b in bias)):
        return tuple(bias)
    raise TypeError(f"bias must be a bool or four bools (q, k, v, o), got {bias!r}")


QK_NORMS = ("head", "proj")


def check_qk_norm(qk_norm) -> str | None:
    """None, "head" (RMSNorm over head_dim, Qwen3) or "proj" (over the whole q / k
    projection, OLMo-2)."""
    if qk_norm is not None and qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm ({qk_norm!r}) must be None or one of {list(QK_NORMS)}")
    return qk_norm


def check_rope_scaling(rope_scaling) -> RopeScaling | None:
    if rope_scaling is not None and not isinstance(rope_scaling, RopeScaling):
        raise TypeError(f"rope_scaling must be a RopeScaling or None, got "
                        f"{type(rope_scaling).__name__}")
    return rope_scaling


def add_projections(module: nn.Module, d_model: int, d_kv_in: int, n_heads: int,
                    n_kv_heads: int, head_dim: int, bias) -> None:
    """Give `module` the q/k/v/o projections of multi-head attention and its hook points
    `hook_q`, `hook_k`, `hook_v`, `hook_head_out` (identity unless hooked). Keys and
    values are projected from width `d_kv_in` (d_model, or the encoder's for cross).
    `bias`: a bool, or four bools (q, k, v, o)."""
    bq, bk, bv, bo = projection_biases(bias)
    module.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bq)
    module.k_proj = nn.Linear(d_kv_in, n_kv_heads * head_dim, bias=bk)
    module.v_proj = nn.Linear(d_kv_in, n_kv_heads * head_dim, bias=bv)
    module.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bo)
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


def self_attention_mask(window: int | None, is_causal: bool) -> Mask | None:
    """causal(), sliding_window(W), or None (bidirectional)."""
    if window is not None:
        return sliding_window(window)
    return causal() if is_causal else None


@dataclass
class AttentionSpec:
    """Config of one self-attention layer; `build(d_model, layer_idx)` makes it.

    `n_kv_heads=None` means MHA; `head_dim=None` means d_model // n_heads. `bias`: a bool
    or four bools (q, k, v, o). `rope_scaling`: a `RopeScaling` (None = plain RoPE).
    `qk_norm`: None, "head" or "proj" (RMSNorm with eps `norm_eps`).
    """

    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    window: int | None = None
    rope: bool = True
    rope_base: float = 10000.0
    rope_interleaved: bool = False
    bias: bool | tuple[bool, bool, bool, bool] = False
    scale: float | None = None
    backend: str = "auto"
    kv_cache: str = "contiguous"
    rope_scaling: RopeScaling | None = None
    qk_norm: str | None = None
    norm_eps: float = 1e-6

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
        projection_biases(self.bias)
        check_rope_scaling(self.rope_scaling)
        check_qk_norm(self.qk_norm)
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps ({self.norm_eps}) must be > 0")

    def build(self, d_model: int, layer_idx: int) -> Attention:
        return Attention(d_model, self.n_heads, self.n_kv_heads, self.head_dim,
                         rope=self.rope, rope_base=self.rope_base,
                         rope_interleaved=self.rope_interleaved, window=self.window,
                         bias=self.bias, scale=self.scale, backend=self.backend,
                         layer_idx=layer_idx, kv_cache=self.kv_cache,
                         rope_scaling=self.rope_scaling, qk_norm=self.qk_norm,
                         norm_eps=self.norm_eps)


class Attention(Mixer):
    """Self-attention with `n_kv_heads` key/value heads shared by groups of query heads.

    forward(x (B, N, d_model), cache=None, *, attention_mask=None, position_ids=None)
    -> (B, N, d_model). With a cache, the N new tokens sit in slots
    `cache.seq_len(layer_idx) + arange(N)`; keys are rotated before they are cached, and
    the mask is evaluated on the absolute slots of the queries and of the keys the cache
    returns (`cache.kv_positions`). `position_ids` (N,) or (B, N) set the RoPE positions
    (default: the slots); `attention_mask` (B, cached + N) marks padding
    (`layers.positions`).

    `attention_fn`: the softmax attention function called as
    `fn(q, k, v, mask=, scale=, backend=, q_pos=, kv_pos=)` with q (B, H, N, D) and
    k, v (B, Hkv, L, D); None (default) means `attnlab.attention`. Assign another
    function (e.g. a context-parallel one, docs/conventions.md §8) to route this layer's
    attention through it; it must return (B, H, N, D).
    """

    attention_fn = None
    takes_positions = True  # forward accepts attention_mask / position_ids

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, *, rope: bool = True,
                 rope_base: float = 10000.0, rope_interleaved: bool = False,
                 window: int | None = None, causal: bool = True,
                 bias: bool | tuple[bool, bool, bool, bool] = False,
                 scale: float | None = None, backend: str = "auto", layer_idx: int = 0,
                 kv_cache: str = "contiguous", rope_scaling: RopeScaling | None = None,
                 qk_norm: str | None = None, norm_eps: float = 1e-6):
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
        self.rope_scaling = check_rope_scaling(rope_scaling)
        self.qk_norm = check_qk_norm(qk_norm)
        if not norm_eps > 0:
            raise ValueError(f"norm_eps ({norm_eps}) must be > 0")
        self.norm_eps = float(norm_eps)

        add_projections(self, d_model, d_model, n_heads, n_kv_heads, head_dim, bias)
        if qk_norm == "head":  # Qwen3: RMSNorm over each head's D entries
            self.q_norm = nn.RMSNorm(head_dim, eps=norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=norm_eps)
        elif qk_norm == "proj":  # OLMo-2: RMSNorm over the whole projection
            self.q_norm = nn.RMSNorm(n_heads * head_dim, eps=norm_eps)
            self.k_norm = nn.RMSNorm(n_kv_heads * head_dim, eps=norm_eps)

    @property
    def n_groups(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, rope={self.rope}, window={self.window}, "
                f"causal={self.causal}, backend={self.backend!r}, layer_idx={self.layer_idx}"
                + (f", rope_scaling={self.rope_scaling.kind}" if self.rope_scaling else "")
                + (f", qk_norm={self.qk_norm}" if self.qk_norm else ""))

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE of this layer (base, layout, scaling) on x (B, H, N, D) at `positions`
        (N,) or (B, N); identity when rope=False."""
        if not self.rope:
            return x
        return apply_rope(x, positions, base=self.rope_base, interleaved=self.rope_interleaved,
                          scaling=self.rope_scaling)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, N, D), k, v (B, Hkv, N, D) of x (B, N, d_model): projections and
        q/k norm, before RoPE."""
        B, N, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k = self.q_proj(x), self.k_proj(x)  # (B, N, H·D), (B, N, Hkv·D)
        if self.qk_norm == "proj":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(B, N, H, D), k.view(B, N, Hkv, D)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
        return q.transpose(1, 2), k.transpose(1, 2), v  # (B, H, N, D), (B, Hkv, N, D)

    def forward(self, x: torch.Tensor, cache: KVCache | AttentionContext | None = None, *,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.q_proj.weight.dtype, self.q_proj.weight.device)
        ctx = as_context(cache, attention_mask=attention_mask, position_ids=position_ids)
        lc, idx = ctx.layer(self.layer_idx)  # this layer's cache, spoken to by interface
        B, N, _ = x.shape
        H, D = self.n_heads, self.head_dim
        positions = ctx.new_positions(self.layer_idx, B, N, x.device)  # (N,) or (B, N)
        # a cache with `rope_in_cache` (StreamingLLM sink cache) stores keys before RoPE
        # and defines positions itself: the layer's RoPE is applied inside `attend`
        rope_in_cache = lc is not None and lc.rope_in_cache
        if rope_in_cache and ctx.padding():
            raise ValueError(f"{type(lc).__name__} assigns positions itself; position_ids "
                             "and attention_mask are not supported with it")
        rope_pos = positions if ctx.position_ids is None else check_position_ids(
            ctx.position_ids, B, N, x.device)  # (N,) or (B, N)
        n_total = N if lc is None else lc.seq_len(idx) + N
        mask = with_padding(self.mask, ctx.attention_mask, B, n_total, x.device)

        q, k, v = self.project_qkv(x)  # (B, H, N, D), (B, Hkv, N, D), (B, Hkv, N, D)
        if not rope_in_cache:
            q, k = self.rotate(q, rope_pos), self.rotate(k, rope_pos)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        fn = attention if self.attention_fn is None else self.attention_fn

        def attend(q_, k_, v_, *, q_pos, kv_pos, extra_mask=None):
            m = mask if extra_mask is None else extra_mask if mask is None else mask & extra_mask
            return fn(q_, k_, v_, mask=m, scale=self.scale, backend=self.backend,
                      q_pos=q_pos, kv_pos=kv_pos)

        if lc is None:
            default = mask is self.mask and ctx.positions is None  # positions 0..N-1: fused
            out = attend(q, k, v, q_pos=None if default else positions,  # backends use
                         kv_pos=None if default else positions)  # their causal path
        else:
            out = lc.attend(idx, q, k, v, attention=attend, q_pos=positions,
                            window=self.window, rotate=self.rotate, scale=self.scale)  # (B, H, N, D)
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

    def serving_layout(self) -> PagedLayout:
        """Paged K/V of the KV heads; a windowed layer's pool releases blocks that leave
        its window (the rolling cache's O(W) memory, on blocks)."""
        if not self.causal:
            raise ValueError(f"layer {self.layer_idx} is bidirectional (causal=False); the "
                             "engine serves causal decoders only")
        return PagedLayout(self.n_kv_heads, self.head_dim, self.head_dim, self.window)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """2 (K and V) · n_kv_heads · head_dim · bytes (docs/sources.md, KV cache formulas)."""
        check_positive_int("dtype_bytes", dtype_bytes)
        return 2 * self.n_kv_heads * self.head_dim * dtype_bytes
