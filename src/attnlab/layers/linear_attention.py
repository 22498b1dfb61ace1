"""Linear attention and Performer layers: constant-state decoding behind the cache interface.

- `LinearAttention` (Katharopoulos et al. 2020): q, k, v projections, feature map φ,
  causal normalised linear attention through the chunked form; O(N·H·F·D) per forward.
- `Performer` (Choromanski et al. 2020): the same with FAVOR+ positive random features of
  width m. The features ω are a buffer fixed across forward and decode calls; `redraw()`
  draws new ones (do it between sequences: a cached state is tied to the ω that built it).
With a cache the layer folds its new tokens into the RecurrentStateCache state (S, z) and
reads from it, so prefill + token-by-token decoding equals the parallel forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_divisible, check_positive_int
from ..cache.base import KVCache
from ..cache.context import AttentionContext, as_context
from ..cache.layout import StateLayout
from ..cache.recurrent import RecurrentStateCache
from ..ops.linear import (
    LinearState,
    draw_random_features,
    favor_features,
    linear_attention_features,
    resolve_feature_map,
)
from ..ops.linear.feature_maps import apply_feature_map
from .attention import check_hidden, resolve_heads
from .base import Mixer


def _check_spec_heads(n_heads: int, n_kv_heads: int | None, head_dim: int | None) -> int:
    """Validate a spec's head counts (d_model is checked at build); returns n_kv_heads."""
    check_positive_int("n_heads", n_heads)
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    check_positive_int("n_kv_heads", n_kv_heads)
    check_divisible("n_heads", n_heads, "n_kv_heads", n_kv_heads)
    if head_dim is not None:
        check_positive_int("head_dim", head_dim)
    return n_kv_heads


@dataclass
class LinearAttentionSpec:
    """Config of one linear-attention layer; `n_kv_heads=None` means n_heads."""

    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    feature_map: str = "elu+1"
    chunk_size: int = 64

    def __post_init__(self) -> None:
        self.n_kv_heads = _check_spec_heads(self.n_heads, self.n_kv_heads, self.head_dim)
        resolve_feature_map(self.feature_map)
        check_positive_int("chunk_size", self.chunk_size)

    def build(self, d_model: int, layer_idx: int) -> LinearAttention:
        return LinearAttention(d_model, self.n_heads, self.n_kv_heads, self.head_dim,
                               feature_map=self.feature_map, chunk_size=self.chunk_size,
                               layer_idx=layer_idx)


@dataclass
class PerformerSpec:
    """Config of one Performer layer: m = n_features random features per head."""

    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    n_features: int = 64
    orthogonal: bool = True
    chunk_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        self.n_kv_heads = _check_spec_heads(self.n_heads, self.n_kv_heads, self.head_dim)
        check_positive_int("n_features", self.n_features)
        check_positive_int("chunk_size", self.chunk_size)

    def build(self, d_model: int, layer_idx: int) -> Performer:
        return Performer(d_model, self.n_heads, self.n_kv_heads, self.head_dim,
                         n_features=self.n_features, orthogonal=self.orthogonal,
                         chunk_size=self.chunk_size, seed=self.seed + layer_idx,
                         layer_idx=layer_idx)


LINEAR_EPS = 1e-6  # the denominator eps of linear_attention_features (its default)


class LinearAttention(Mixer):
    """Causal normalised linear attention; forward(x (B, N, d_model), cache=None)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, *, feature_map: str = "elu+1",
                 chunk_size: int = 64, layer_idx: int = 0):
        super().__init__()
        n_kv_heads, head_dim = resolve_heads(d_model, n_heads, n_kv_heads, head_dim)
        self.fmap_name, self.fmap = resolve_feature_map(feature_map)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.layer_idx = check_positive_int("layer_idx", layer_idx, minimum=0)
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = (
            d_model, n_heads, n_kv_heads, head_dim)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    @property
    def n_state_features(self) -> int:
        """F, the feature width of the state (D for the built-in maps)."""
        return self.head_dim

    def features(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (apply_feature_map(self.fmap_name, self.fmap, q, "q", True),
                apply_feature_map(self.fmap_name, self.fmap, k, "k", True))

    def forward(self, x: torch.Tensor, cache: KVCache | AttentionContext | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.q_proj.weight.dtype)
        B, N, _ = x.shape
        q = self.q_proj(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B,H,N,D)
        k = self.k_proj(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
        qf, kf = self.features(q, k)  # (B, H, N, F), (B, Hkv, N, F)
        rc, idx = as_context(cache).layer(self.layer_idx)  # its state, by interface
        if rc is None:
            out = linear_attention_features(qf, kf, v, chunk_size=self.chunk_size)
        else:
            st = rc.state(idx)
            out, new = linear_attention_features(qf, kf, v, chunk_size=self.chunk_size,
                                                 initial_state=LinearState(st["S"], st["z"]),
                                                 output_final_state=True)
            rc.commit(idx, {"S": new.S, "z": new.z}, N)
        out = out.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim)  # (B, N, H·D)
        return self.o_proj(out)

    @torch.no_grad()
    def implied_attention(self, x: torch.Tensor) -> dict:
        """The layer as an attention matrix on its input x (B, N, d_model), no cache
        (Katharopoulos et al. 2020): A = tril(φ(Q) φ(K)ᵀ), rows divided by A·1 + eps, so
        `out = A V` is the layer's output before o_proj. K/V repeated per query head."""
        B, N, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
        k = self.k_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
        v = self.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
        qf, kf = self.features(q, k)  # (B, H, N, F), (B, Hkv, N, F)
        k, v, kf = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v, kf))  # per query head
        raw = (qf @ kf.transpose(-1, -2)).tril()  # (B, H, N, N)
        pattern = raw / (raw.sum(-1, keepdim=True) + LINEAR_EPS)
        return {"kind": "linear", "pattern": pattern, "q": q, "k": k, "v": v,
                "out": pattern @ v}

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> RecurrentStateCache:
        F_, Hkv, D = self.n_state_features, self.n_kv_heads, self.head_dim
        return RecurrentStateCache(1, batch, {"S": (Hkv, F_, D), "z": (Hkv, F_)},
                                   capacity=capacity, dtype=dtype, device=device)

    def serving_layout(self) -> StateLayout:
        """Per-sequence state slots: S (Hkv, F, D) and z (Hkv, F)."""
        return self.new_cache(1, 1).layout()

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 0  # constant state: nothing grows per token


class Performer(LinearAttention):
    """FAVOR+ attention (softmax approximation, scale 1/√head_dim) with m fixed features."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, *, n_features: int = 64, orthogonal: bool = True,
                 chunk_size: int = 64, seed: int = 0, layer_idx: int = 0):
        super().__init__(d_model, n_heads, n_kv_heads, head_dim, chunk_size=chunk_size,
                         layer_idx=layer_idx)
        self.n_features = check_positive_int("n_features", n_features)
        self.orthogonal = orthogonal
        omega = draw_random_features(n_features, self.head_dim, orthogonal=orthogonal,
                                     generator=torch.Generator().manual_seed(seed))
        self.register_buffer("omega", omega)  # (m, head_dim), saved with the weights

    @property
    def n_state_features(self) -> int:
        return self.n_features

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Draw new random features (between sequences; cached states become invalid)."""
        self.omega.copy_(draw_random_features(self.n_features, self.head_dim,
                                              orthogonal=self.orthogonal, generator=generator))

    def features(self, q, k):
        return (favor_features(q, self.omega, is_query=True),
                favor_features(k, self.omega, is_query=False))
