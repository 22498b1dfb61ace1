"""MLA latent cache (DeepSeek-AI 2024, "DeepSeek-V2", §2.1).

Multi-head latent attention caches, per token and layer, only the compressed joint KV
latent `c_KV` (kv_lora_rank elements) and the decoupled RoPE key `k_R`
(qk_rope_head_dim elements, shared by all heads) — not per-head K and V. For DeepSeek-V2
that is 512 + 64 = 576 elements per token per layer (docs/sources.md; DeepSeek-V2 config.json).

Memory: `nbytes = n_layers · batch · (kv_lora_rank + qk_rope_head_dim) · capacity · bytes`.
Appending T tokens writes T slots (O(T · (r + d_R))); the history is never copied.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int
from .contiguous import _SlabCache


class LatentKVCache(_SlabCache):
    """Slabs `c_kv (n_layers, B, capacity, kv_lora_rank)` and `k_rope (…, qk_rope_head_dim)`.

    `update(layer_idx, c_kv (B, T, r), k_rope (B, T, d_R)) -> (c_kv_all, k_rope_all)`,
    views `(B, L, r)` and `(B, L, d_R)` of the slabs. `k_rope` must already be rotated
    with the positions `seq_len(layer_idx) + arange(T)` (the cache stores, it does not
    rotate). Overflow raises `CacheOverflowError` before anything is written.
    """

    _names = ("c_kv", "k_rope")
    _geometry = ("kv_lora_rank", "qk_rope_head_dim")

    def __init__(self, n_layers: int, batch: int, kv_lora_rank: int, qk_rope_head_dim: int,
                 capacity: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.kv_lora_rank = check_positive_int("kv_lora_rank", kv_lora_rank)
        self.qk_rope_head_dim = check_positive_int("qk_rope_head_dim", qk_rope_head_dim)
        super().__init__(n_layers, batch, capacity, (kv_lora_rank,), (qk_rope_head_dim,),
                         time_dim=1, dtype=dtype, device=device)

    @property
    def elements_per_token_per_layer(self) -> int:
        """kv_lora_rank + qk_rope_head_dim (576 for DeepSeek-V2)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def update(self, layer_idx: int, c_kv: torch.Tensor, k_rope: torch.Tensor):
        return self._append(layer_idx, c_kv, k_rope)
