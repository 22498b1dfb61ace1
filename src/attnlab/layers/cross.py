"""Encoder-decoder cross-attention (Vaswani et al. 2017, §3.2.3; T5, Raffel et al. 2020).

Queries come from the decoder; keys and values from the encoder output. The encoder
output is fixed for a request, so K/V are projected ONCE per request into a
`StaticCrossCache` and reused at every decode step: a decode step costs
O(H·S·D) attention over S encoder tokens plus one query projection, with no K/V
projection (2·S·d_enc·Hkv·D multiply-adds saved per step and layer). The cache holds
2·Hkv·D elements per *encoder* token per layer (docs/sources.md, KV cache formulas).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_int, check_tensor
from ..cache.static import StaticCrossCache
from ..ops.softmax import attention
from .attention import add_projections, check_backend, check_hidden, resolve_heads


class CrossAttention(nn.Module):
    """forward(x (B, N, d_model), encoder_out (B, S, d_encoder) | None, cache=None,
    encoder_mask (B, S) bool | None) -> (B, N, d_model).

    With a `StaticCrossCache`: the first call for a request projects `encoder_out` and
    stores K/V at `layer_idx`; later calls read the stored K/V (`encoder_out` may then be
    omitted; if given it is not re-projected). No positional encoding and no causal
    mask: every decoder token sees every (unpadded) encoder token. `n_kv_heads` < n_heads
    gives GQA/MQA sharing as in `Attention`.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, *, d_encoder: int | None = None,
                 bias: bool = False, scale: float | None = None, backend: str = "auto",
                 layer_idx: int = 0):
        super().__init__()
        n_kv_heads, head_dim = resolve_heads(d_model, n_heads, n_kv_heads, head_dim)
        d_encoder = d_model if d_encoder is None else d_encoder
        check_positive_int("d_encoder", d_encoder)
        check_positive_int("layer_idx", layer_idx, minimum=0)
        self.d_model, self.d_encoder = d_model, d_encoder
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale, self.backend, self.layer_idx = scale, check_backend(backend), layer_idx
        add_projections(self, d_model, d_encoder, n_heads, n_kv_heads, head_dim, bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_encoder={self.d_encoder}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"backend={self.backend!r}, layer_idx={self.layer_idx}")

    def project_kv(self, encoder_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder K and V, each (B, Hkv, S, D): the once-per-request work."""
        check_hidden("encoder_out", encoder_out, self.d_encoder, self.k_proj.weight.dtype,
                     self.k_proj.weight.device)
        B, S, _ = encoder_out.shape
        k = self.k_proj(encoder_out).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(encoder_out).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return self.hook_k(k), self.hook_v(v)  # (B, Hkv, S, D)

    def forward(self, x: torch.Tensor, encoder_out: torch.Tensor | None = None,
                cache: StaticCrossCache | None = None,
                encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.q_proj.weight.dtype, self.q_proj.weight.device)
        if cache is not None and not isinstance(cache, StaticCrossCache):
            raise TypeError(f"cache must be a StaticCrossCache or None, got "
                            f"{type(cache).__name__}")
        B, N, _ = x.shape
        if cache is not None and cache.is_set(self.layer_idx):
            k, v = cache.get(self.layer_idx)  # stored once for this request
        elif encoder_out is None:
            raise ValueError("encoder_out must be given when the cross-attention cache for "
                             f"layer {self.layer_idx} is not set (first step of a request)")
        else:
            if encoder_out.shape[0] != B:
                raise ValueError(f"encoder_out batch ({encoder_out.shape[0]}) must equal "
                                 f"x batch ({B})")
            k, v = self.project_kv(encoder_out)
            if cache is not None:
                k, v = cache.set(self.layer_idx, k, v)
        if k.shape[0] != B:
            raise ValueError(f"cached encoder K/V batch ({k.shape[0]}) must equal x batch ({B})")
        mask = self._padding_mask(encoder_mask, B, N, k.shape[2])
        q = self.hook_q(self.q_proj(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2))
        out = attention(q, k, v, mask=mask, scale=self.scale, backend=self.backend)  # (B, H, N, D)
        out = self.hook_head_out(out)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim))

    @staticmethod
    def _padding_mask(encoder_mask, B: int, N: int, S: int) -> torch.Tensor | None:
        """(B, S) bool, True = real encoder token -> (B, 1, N, S) attention mask."""
        if encoder_mask is None:
            return None
        check_tensor("encoder_mask", encoder_mask, 2)
        if encoder_mask.dtype != torch.bool:
            raise TypeError(f"encoder_mask must be bool (True = attend), got {encoder_mask.dtype}")
        if tuple(encoder_mask.shape) != (B, S):
            raise ValueError(f"encoder_mask shape {tuple(encoder_mask.shape)} must be "
                             f"(batch, encoder length) = ({B}, {S})")
        return encoder_mask[:, None, None, :].expand(B, 1, N, S)  # (B, 1, N, S)

    def new_cache(self, capacity: int | None = None) -> StaticCrossCache:
        """A one-layer StaticCrossCache (encoder length up to `capacity`, None = any)."""
        return StaticCrossCache(1, capacity)

    def kv_bytes_per_encoder_token(self, dtype_bytes: int) -> int:
        """2 · n_kv_heads · head_dim · bytes per encoder token, written once per request."""
        check_positive_int("dtype_bytes", dtype_bytes)
        return 2 * self.n_kv_heads * self.head_dim * dtype_bytes
