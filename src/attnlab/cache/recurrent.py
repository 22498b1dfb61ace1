"""Recurrent state behind the cache interface (conventions §4): linear attention, Performer, RWKV, SSD.

A recurrent mixer does not keep past tokens: it keeps a fixed set of named state tensors
per layer (linear attention: S = Σ φ(k)ᵀv and z = Σ φ(k); RWKV-4: a, b, p and the
token-shift inputs; RWKV-6 / SSD: a matrix state, plus the token shift or the short
convolution's last inputs). `nbytes` is therefore constant in sequence length:
    nbytes = n_layers · batch · Σ_state numel(state) · bytes_per_element,
where a KV cache holds 2 · n_layers · H_kv · d_head · T · bytes (Pope et al. 2022).

Layers read `state(layer_idx)` and write `commit(layer_idx, new_state, n_tokens)` (the
layer does the recurrence; the cache only stores, so `update(k, v)` is refused). `capacity` bounds positions only (the state does not
grow); appending past it raises CacheOverflowError before anything is written.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .._checks import check_tensor
from .base import CountedCache, check_n_tokens
from .layout import StateLayout


class RecurrentStateCache(CountedCache):
    """Fixed-size per-layer state tensors `(batch, *shape)` for each named entry.

    `shapes`: name -> per-sequence shape, e.g. {"S": (H, F, Dv), "z": (H, F)}.
    `fill`: name -> value the entry holds at the start (default 0; RWKV-4's p starts at −1e38).
    """

    def __init__(self, n_layers: int, batch: int, shapes: Mapping[str, tuple[int, ...]], *,
                 capacity: int, dtype: torch.dtype = torch.float32, device="cpu",
                 fill: Mapping[str, float] | None = None) -> None:
        self._init_counts(n_layers, batch, capacity)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
        if not shapes:
            raise ValueError("shapes must name at least one state tensor")
        self.fill = dict(fill or {})
        unknown = set(self.fill) - set(shapes)
        if unknown:
            raise ValueError(f"fill names {sorted(unknown)} not in shapes {sorted(shapes)}")
        self.shapes = {name: tuple(int(s) for s in shp) for name, shp in shapes.items()}
        self.dtype, self.device = dtype, torch.device(device)
        self._bufs = {name: torch.empty((n_layers, batch, *shp), dtype=dtype, device=self.device)
                      for name, shp in self.shapes.items()}  # (L, B, *shape) each
        self.reset()

    # --- interface -------------------------------------------------------------------
    def reset(self) -> None:
        for name, buf in self._bufs.items():
            buf.fill_(self.fill.get(name, 0.0))
        self._lens = [0] * self.n_layers

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())

    def layout(self) -> StateLayout:
        """The per-sequence state this cache holds (what a serving engine gives each
        sequence a slot of)."""
        return StateLayout(tuple(self.shapes.items()), tuple(self.fill.items()))

    # --- state access ------------------------------------------------------------------
    def state(self, layer_idx: int) -> dict[str, torch.Tensor]:
        """Views of this layer's state tensors, each (batch, *shape)."""
        self._check_layer(layer_idx)
        return {name: buf[layer_idx] for name, buf in self._bufs.items()}

    def commit(self, layer_idx: int, new_state: Mapping[str, torch.Tensor], n_tokens: int) -> None:
        """Overwrite this layer's state after `n_tokens` more tokens (checked before writing)."""
        self._check_layer(layer_idx)
        self._check_room(layer_idx, check_n_tokens(n_tokens))
        if set(new_state) != set(self._bufs):
            raise ValueError(f"new_state names {sorted(new_state)}; expected {sorted(self._bufs)}")
        for name, t in new_state.items():
            check_tensor(f"new_state[{name!r}]", t)
            want = (self.batch, *self.shapes[name])
            if tuple(t.shape) != want:
                raise ValueError(f"new_state[{name!r}] has shape {tuple(t.shape)}; expected {want}")
        with torch.no_grad():
            for name, t in new_state.items():
                self._bufs[name][layer_idx].copy_(t)
        self._lens[layer_idx] += n_tokens

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Refused: recurrent state is advanced by its layer through `state` / `commit`
        (the layer owns the recurrence; the cache only stores)."""
        raise TypeError("RecurrentStateCache holds recurrent state, not keys/values: its "
                        "layer reads state(layer_idx) and writes commit(layer_idx, new_state, "
                        "n_tokens); update(k, v) is not supported")
