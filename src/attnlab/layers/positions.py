"""Positions and padding for attention layers: Hugging Face-style `position_ids` and
`attention_mask` (docs/conventions.md §9).

- `position_ids` (N,) or (B, N): the RoPE position of each new token. Default: its slot,
  `cache.seq_len + arange(N)`. A left-padded batch passes `cumsum(mask) − 1`, so every
  sequence's first real token sits at position 0.
- `attention_mask` (B, start + N): 1/True for real tokens, 0/False for padding, over every
  token so far (cached and new), as transformers passes it. It becomes a batch-dependent
  `Mask` predicate (`padding_mask`) and-ed with the layer's causal / window mask; the
  causal and window structure stays on slot positions, as in transformers.
"""
from __future__ import annotations

import torch

from .._checks import check_tensor
from ..masks import Mask


def check_position_ids(position_ids, batch: int, n_new: int,
                       device: torch.device) -> torch.Tensor:
    """`position_ids` as a long tensor (N,) or (B, N) on `device`."""
    check_tensor("position_ids", position_ids)
    if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
        raise TypeError(f"position_ids must hold integers, got dtype {position_ids.dtype}")
    if position_ids.ndim == 2 and position_ids.shape[0] == 1:
        position_ids = position_ids[0]  # (1, N): shared by the batch
    if position_ids.shape not in ((n_new,), (batch, n_new)):
        raise ValueError(f"position_ids must have shape ({n_new},) or ({batch}, {n_new}), got "
                         f"{tuple(position_ids.shape)}")
    if position_ids.numel() and int(position_ids.min()) < 0:
        raise ValueError(f"position_ids must be >= 0, got {int(position_ids.min())}")
    return position_ids.to(device=device, dtype=torch.long)


def check_attention_mask(attention_mask, batch: int, n_total: int,
                         device: torch.device) -> torch.Tensor:
    """A (B, n_total) 0/1 or bool padding mask as bool (True = real token)."""
    check_tensor("attention_mask", attention_mask, 2)
    if attention_mask.shape != (batch, n_total):
        raise ValueError(f"attention_mask must have shape (batch, cached + new tokens) = "
                         f"({batch}, {n_total}), got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        if attention_mask.dtype.is_floating_point or not bool(
                ((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must be bool or integer 0/1 (1 = real token); "
                             f"got dtype {attention_mask.dtype}")
        attention_mask = attention_mask != 0
    return attention_mask.to(device)


def padding_mask(keep: torch.Tensor) -> Mask:
    """Key at absolute position j of sequence b is visible iff `keep[b, j]` (B, L) bool."""

    def fn(b, h, q, k):
        return keep[b, k.clamp(0, keep.shape[1] - 1)] & (k < keep.shape[1])

    return Mask(fn, "padding", uses_batch=True)


def with_padding(mask: Mask | None, attention_mask, batch: int, n_total: int,
                 device: torch.device) -> Mask | None:
    """The layer's mask and-ed with the padding predicate (`mask` alone when no
    attention_mask is given, or when it marks every token real)."""
    if attention_mask is None:
        return mask
    keep = check_attention_mask(attention_mask, batch, n_total, device)
    if bool(keep.all()):
        return mask
    pad = padding_mask(keep)
    return pad if mask is None else mask & pad
