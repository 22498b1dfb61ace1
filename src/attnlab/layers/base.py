"""What every token mixer (attention, MLA, linear attention, RWKV, SSD, ...) provides.

A mixer maps hidden states `(B, N, d_model)` to `(B, N, d_model)`. With a cache it
processes the new tokens only, appending to (or advancing) its per-layer cache, so that
prefill + token-by-token decoding equals one parallel forward (the tiny-LM conformance
test). Adding a variant = one spec dataclass with `build()` + one module; the model
needs no edits.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..cache.base import KVCache
from ..cache.layout import PagedLayout, StateLayout


class Mixer(nn.Module):
    """Base class for token mixers; `layer_idx` addresses the mixer's slot in a cache."""

    layer_idx: int = 0
    takes_positions: bool = False  # forward accepts attention_mask / position_ids (HF)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> KVCache:
        """A single-layer cache sized for this mixer (used inside a `CacheStack`)."""
        raise NotImplementedError

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes this layer caches per token (0 for constant-state mixers)."""
        raise NotImplementedError

    def serving_layout(self) -> PagedLayout | StateLayout:
        """What the serving engine must hold for this layer per sequence: paged K/V
        (`PagedLayout`) or recurrent state slots (`StateLayout`). Mixers the engine
        cannot serve raise a ValueError saying why."""
        raise ValueError(f"{type(self).__name__} declares no serving layout; it is not "
                         "servable by the engine")


@runtime_checkable
class MixerSpec(Protocol):
    """A typed config for one mixer kind; `build` makes the module for one layer."""

    def build(self, d_model: int, layer_idx: int) -> Mixer: ...
