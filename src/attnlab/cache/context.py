"""The attention context: what one forward of a model needs to know besides its tokens.

`TinyLM.forward(tokens, ctx)` is the only forward of the model; `generate`, the
conformance check and the serving engine all call it, and differ only in the context
they pass (the layout vLLM's attention metadata and Hugging Face's `Cache` give a model):
- `cache`: the container of per-layer caches (`CacheStack`, a multi-layer cache, or the
  engine's `serving.step.ServingStep`); None = no cache (parallel forward);
- `positions`: absolute position of every new token, (N,) shared by the batch or (B, N)
  when each row of the batch is a different sequence at its own offset (a decode batch
  of the engine). None = `cache.seq_len + arange(N)`;
- `attention_mask` / `position_ids`: Hugging Face padding mask and RoPE positions
  (`layers.positions`), for left-padded prompt batches.

A layer asks the context for its own cache with `layer(layer_idx) -> (cache, idx)` and
then speaks only the cache interface (conventions §4): `attend` / `update` /
`kv_positions` for K/V, `state` / `commit` for recurrent state. It never checks the
cache's type.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_tensor
from .base import CacheStack, KVCache


@dataclass
class AttentionContext:
    """Cache handle + positions of one forward call (see the module docstring)."""

    cache: KVCache | None = None
    positions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.cache is not None and not isinstance(self.cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, got {type(self.cache).__name__}")
        if self.positions is not None:
            check_tensor("positions", self.positions)
            if self.positions.ndim not in (1, 2) or self.positions.dtype != torch.long:
                raise ValueError(f"positions must be a long tensor (N,) or (B, N), got "
                                 f"shape {tuple(self.positions.shape)} dtype "
                                 f"{self.positions.dtype}")

    def layer(self, layer_idx: int) -> tuple[KVCache | None, int]:
        """(the cache object serving `layer_idx`, the index to address it with)."""
        if self.cache is None:
            return None, 0
        if isinstance(self.cache, CacheStack):
            return self.cache.layer(layer_idx), 0
        return self.cache, layer_idx

    def new_positions(self, layer_idx: int, batch: int, n_new: int,
                      device: torch.device) -> torch.Tensor:
        """Absolute positions of the N new tokens at this layer: (N,) or (B, N)."""
        if self.positions is not None:
            p = self.positions
            if p.shape[-1] != n_new or (p.ndim == 2 and p.shape[0] != batch):
                raise ValueError(f"ctx.positions has shape {tuple(p.shape)}; expected "
                                 f"({n_new},) or ({batch}, {n_new})")
            return p.to(device)
        lc, idx = self.layer(layer_idx)
        start = 0 if lc is None else lc.seq_len(idx)
        return torch.arange(start, start + n_new, device=device)  # (N,)

    def padding(self) -> dict:
        """The Hugging Face keyword arguments given (attention_mask / position_ids)."""
        return {k: v for k, v in (("attention_mask", self.attention_mask),
                                  ("position_ids", self.position_ids)) if v is not None}


def as_context(ctx, *, attention_mask=None, position_ids=None) -> AttentionContext:
    """An AttentionContext from what a caller passed: a context, a cache, or None; the
    keyword arguments fill its Hugging Face fields (given twice = an error)."""
    if isinstance(ctx, AttentionContext):
        if attention_mask is not None or position_ids is not None:
            if ctx.attention_mask is not None or ctx.position_ids is not None:
                raise ValueError("attention_mask / position_ids given both in the context "
                                 "and as arguments; expected one place")
            return AttentionContext(ctx.cache, ctx.positions, attention_mask, position_ids)
        return ctx
    if ctx is not None and not isinstance(ctx, KVCache):
        raise TypeError(f"cache must be a KVCache or None (or an AttentionContext), got "
                        f"{type(ctx).__name__}")
    return AttentionContext(ctx, None, attention_mask, position_ids)
