"""Rolling-buffer KV cache for sliding-window attention (Mistral 7B, Jiang et al. 2023, §2).

Each layer owns W slots; the key/value of absolute position p lives in slot `p mod W`
(docs/sources.md, "Sliding window"), and every slot remembers its absolute position. Memory is
capped at W tokens per layer whatever the sequence length: `nbytes = n_layers · batch ·
n_kv_heads · (head_dim + v_head_dim) · W · bytes`.

What `update(layer_idx, k, v)` returns (T new tokens at positions s .. s+T−1):
- T = 1 (decoding): the new token is written into its slot first (it evicts position
  s − W, which the query at s no longer sees) and the buffer itself is returned, in slot
  order — a view, no copy. `kv_positions` gives each slot's absolute position, and the
  layer's window mask, evaluated on those positions, makes slot order irrelevant.
- T > 1 (prefill, chunked prefill, chunks may be longer than W): the queries of the chunk
  need the previous W − 1 stored keys plus the chunk's own keys, so the stored slots and
  the new keys are returned concatenated (W + T rows); afterwards only the last W
  positions are kept.
Positions are absolute: RoPE is applied by the layer before caching with the true
position, so keys never need re-rotation. Asking `get(layer_idx, positions)` for a
position that was evicted raises `EvictedPositionError` (never stale keys).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from .base import KVCache, check_n_tokens
from .contiguous import _check_dtype_device, _same_device


class EvictedPositionError(KeyError):
    """A position outside the rolling window (evicted or not yet written) was requested."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message plainly
        return str(self.args[0])


class RollingKVCache(KVCache):
    """W-slot ring buffer per layer: K `(n_layers, B, Hkv, W, D)`, V `(…, Dv)`, positions
    `(n_layers, W)` (−1 = empty). See the module docstring for what `update` returns."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int,
                 window: int, v_head_dim: int | None = None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.n_layers = check_positive_int("n_layers", n_layers)
        self.batch = check_positive_int("batch", batch)
        self.n_kv_heads = check_positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.window = check_positive_int("window", window)
        self.v_head_dim = head_dim if v_head_dim is None else \
            check_positive_int("v_head_dim", v_head_dim)
        self.dtype, self.device = _check_dtype_device(dtype, device)
        self._k = torch.zeros(n_layers, batch, n_kv_heads, window, head_dim, dtype=dtype,
                              device=self.device)
        self._v = torch.zeros(n_layers, batch, n_kv_heads, window, self.v_head_dim,
                              dtype=dtype, device=self.device)
        self._pos = torch.full((n_layers, window), -1, dtype=torch.long, device=self.device)
        self._lens = [0] * n_layers
        self._last_pos: list[torch.Tensor] = [self._pos[i, :0] for i in range(n_layers)]

    # --- interface -------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Tokens held per layer (W); the sequence itself may grow without bound."""
        return self.window

    def check_append(self, n_tokens: int) -> None:
        """Never full: old tokens are evicted to make room."""
        check_n_tokens(n_tokens)

    def seq_len(self, layer_idx: int = 0) -> int:
        self._check_layer(layer_idx)
        return self._lens[layer_idx]

    def kv_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Absolute positions of the rows returned by the last `update` of this layer."""
        self._check_layer(layer_idx)
        return self._last_pos[layer_idx]

    def stored_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Absolute positions currently held, in slot order (−1 = empty slot)."""
        self._check_layer(layer_idx)
        return self._pos[layer_idx].clone()

    def reset(self) -> None:
        self._pos.fill_(-1)
        self._lens = [0] * self.n_layers
        self._last_pos = [self._pos[i, :0] for i in range(self.n_layers)]

    @property
    def nbytes(self) -> int:
        return (self._k.numel() + self._v.numel()) * self._k.element_size()

    @property
    def used_nbytes(self) -> int:
        per_token = self.batch * self.n_kv_heads * (self.head_dim + self.v_head_dim)
        held = sum(min(n, self.window) for n in self._lens)
        return held * per_token * self._k.element_size()

    # --- append ----------------------------------------------------------------------
    def _check_input(self, name: str, x, dim: int) -> int:
        check_tensor(name, x, 4)
        B, H, T, D = x.shape
        if (B, H, D) != (self.batch, self.n_kv_heads, dim):
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected "
                             f"({self.batch}, {self.n_kv_heads}, T, {dim})")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}; this cache stores {self.dtype}")
        if not _same_device(x.device, self.device):
            raise ValueError(f"{name} is on {x.device}; this cache lives on {self.device}")
        if T == 0:
            raise ValueError(f"{name} must hold at least one new token, got shape "
                             f"{tuple(x.shape)}")
        return T

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Append T tokens; return (k_read, v_read) for the chunk's attention (see module)."""
        self._check_layer(layer_idx)
        T = self._check_input("k", k, self.head_dim)
        if self._check_input("v", v, self.v_head_dim) != T:
            raise ValueError(f"k has {T} new tokens but v has {v.shape[2]}; expected equal")
        W, start = self.window, self._lens[layer_idx]
        new_pos = torch.arange(start, start + T, device=self.device)  # (T,)
        if T == 1:  # write first (evicts start - W, outside the query's window), then read
            self._write(layer_idx, k, v, new_pos)
            held = min(start + 1, W)  # before wrap-around slots fill in order 0, 1, ...
            self._last_pos[layer_idx] = self._pos[layer_idx, :held]
            return self._k[layer_idx, :, :, :held], self._v[layer_idx, :, :, :held]
        held = min(start, W)
        k_read = torch.cat([self._k[layer_idx, :, :, :held], k], dim=2)  # (B, Hkv, held+T, D)
        v_read = torch.cat([self._v[layer_idx, :, :, :held], v], dim=2)
        self._last_pos[layer_idx] = torch.cat([self._pos[layer_idx, :held].clone(), new_pos])
        keep = min(T, W)  # only the last W positions survive
        self._write(layer_idx, k[:, :, T - keep:], v[:, :, T - keep:], new_pos[T - keep:])
        return k_read, v_read

    def _write(self, layer_idx: int, k, v, pos: torch.Tensor) -> None:
        slots = pos % self.window  # (t,) distinct because t <= W
        self._k[layer_idx].index_copy_(2, slots, k)
        self._v[layer_idx].index_copy_(2, slots, v)
        self._pos[layer_idx, slots] = pos
        self._lens[layer_idx] = int(pos[-1]) + 1

    def get(self, layer_idx: int, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V `(B, Hkv, len(positions), ·)` stored for these absolute positions.

        Raises `EvictedPositionError` for a position no longer (or not yet) held.
        """
        self._check_layer(layer_idx)
        pos = torch.as_tensor(positions, device=self.device).long().reshape(-1)
        slots = pos % self.window
        held = self._pos[layer_idx, slots]
        bad = (held != pos) | (pos < 0)
        if bool(bad.any()):
            p = int(pos[bad][0])
            n = self._lens[layer_idx]
            raise EvictedPositionError(
                f"position {p} is not held by layer {layer_idx}: the rolling window of "
                f"{self.window} holds positions [{max(0, n - self.window)}, {n})")
        return self._k[layer_idx, :, :, slots], self._v[layer_idx, :, :, slots]

    def __repr__(self) -> str:
        return (f"RollingKVCache(n_layers={self.n_layers}, batch={self.batch}, "
                f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"v_head_dim={self.v_head_dim}, window={self.window}, dtype={self.dtype}, "
                f"device={self.device}, nbytes={self.nbytes})")
