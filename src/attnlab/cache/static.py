"""Static cross-attention cache (Vaswani et al. 2017, encoder-decoder attention).

In an encoder-decoder model the decoder's cross-attention reads keys and values that
depend only on the encoder output, so they are projected once per request and reused at
every decode step. This cache stores them: `set(layer_idx, k, v)` once, then
`update(layer_idx)` / `get(layer_idx)` return the same tensors at every step.

Memory does not grow while decoding: per layer `batch · Hkv · enc_len · (D + Dv) · bytes`,
i.e. `2 · L · Hkv · d_head · enc_len · bytes` for the whole decoder.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from .base import CacheOverflowError, KVCache, check_n_tokens


class StaticCrossCache(KVCache):
    """Per-layer encoder K `(B, Hkv, S, D)` and V `(B, Hkv, S, Dv)`, written once.

    `capacity`: the longest encoder output accepted (None: no limit, and `capacity`
    reports the longest stored one). `update(layer_idx, k, v)` sets the layer if it is
    empty (k, v given) and otherwise returns the stored tensors; passing new k/v to a
    set layer raises (call `reset()` between requests). `seq_len` is the encoder length.
    """

    def __init__(self, n_layers: int, capacity: int | None = None):
        self.n_layers = check_positive_int("n_layers", n_layers)
        self._capacity = None if capacity is None else check_positive_int("capacity", capacity)
        self._k: list[torch.Tensor | None] = [None] * n_layers
        self._v: list[torch.Tensor | None] = [None] * n_layers

    def is_set(self, layer_idx: int) -> bool:
        self._check_layer(layer_idx)
        return self._k[layer_idx] is not None

    def set(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the encoder K/V of one layer (once per request); returns them."""
        self._check_layer(layer_idx)
        check_tensor("k", k, 4)
        check_tensor("v", v, 4)
        if k.dtype != v.dtype:
            raise TypeError(f"v has dtype {v.dtype} but k has dtype {k.dtype}; expected one dtype")
        if k.device != v.device:
            raise ValueError(f"v is on {v.device} but k is on {k.device}; expected one device")
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"k shape {tuple(k.shape)} and v shape {tuple(v.shape)} must agree "
                             "in (batch, kv heads, encoder length)")
        if self._k[layer_idx] is not None:
            raise ValueError(f"layer {layer_idx} of the cross-attention cache is already set; "
                             "call reset() before a new request")
        S = k.shape[2]
        if self._capacity is not None and S > self._capacity:
            raise CacheOverflowError(f"encoder length ({S}) exceeds capacity ({self._capacity})")
        self._k[layer_idx] = k.contiguous()  # (B, Hkv, S, D); a projection's transpose is copied once
        self._v[layer_idx] = v.contiguous()  # (B, Hkv, S, Dv)
        return self._k[layer_idx], self._v[layer_idx]

    def get(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored K/V of one layer; raises if the layer was never set."""
        if not self.is_set(layer_idx):
            raise ValueError(f"layer {layer_idx} of the cross-attention cache is not set; "
                             "call set(layer_idx, k, v) with the encoder K/V first")
        return self._k[layer_idx], self._v[layer_idx]

    def update(self, layer_idx: int, k: torch.Tensor | None = None,
               v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if (k is None) != (v is None):
            raise ValueError("k and v must both be given (to set the layer) or both be None")
        if k is not None and not self.is_set(layer_idx):
            return self.set(layer_idx, k, v)
        if k is not None:
            raise ValueError(f"layer {layer_idx} of the cross-attention cache is already set; "
                             "pass k=v=None to read it, or reset() for a new request")
        return self.get(layer_idx)

    def check_append(self, n_tokens: int) -> None:
        """Decoder tokens never append here (the encoder K/V are set once per request)."""
        check_n_tokens(n_tokens)

    def seq_len(self, layer_idx: int = 0) -> int:
        self._check_layer(layer_idx)
        k = self._k[layer_idx]
        return 0 if k is None else k.shape[2]

    def kv_positions(self, layer_idx: int = 0) -> torch.Tensor:
        k = self._k[layer_idx] if self.is_set(layer_idx) else None
        return torch.arange(0 if k is None else k.shape[2],
                            device=None if k is None else k.device)

    @property
    def capacity(self) -> int:
        if self._capacity is not None:
            return self._capacity
        return max((k.shape[2] for k in self._k if k is not None), default=0)

    def reset(self) -> None:
        """Drop the stored tensors (a new request brings a new encoder output)."""
        self._k = [None] * self.n_layers
        self._v = [None] * self.n_layers

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._k, *self._v) if t is not None)

    def __repr__(self) -> str:
        n_set = sum(k is not None for k in self._k)
        return (f"StaticCrossCache(n_layers={self.n_layers}, set={n_set}, "
                f"capacity={self._capacity}, nbytes={self.nbytes})")
