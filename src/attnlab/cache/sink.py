"""Attention-sink cache (StreamingLLM, Xiao et al. 2023): the first `n_sink` tokens plus a
window of the most recent tokens, at a fixed size whatever the stream length.

As in the paper, keys are cached BEFORE RoPE and rotated at read time with their
positions *inside the cache*, not in the original text (docs/sources.md, StreamingLLM: cache
[0,1,2,3,6,7,8] decoding token 9 uses positions 0..7). So the model never sees a position
beyond `n_sink + window`, and generation can run past its training length.

Contract with the attention layer (`rope_in_cache = True`, declared on the cache
interface): the layer does not rotate keys before caching; `attend` reads
`rope_positions(layer_idx)` (in-cache positions 0..L−1 of the returned slots), rotates
the returned keys with them and the queries with the last N of them.

`update(layer_idx, k (B, Hkv, T, D) pre-RoPE, v)` returns the slots attention must read,
in order [sinks, recent]:
- T = 1: the new token is stored (evicting the oldest recent token when full) and the
  n_sink + window buffer is returned — a view.
- T > 1: the stored slots and the whole chunk are returned concatenated (the chunk's
  queries attend to everything kept plus the chunk, causally); afterwards only the sinks
  and the last `window` tokens are kept. Token-by-token and chunked feeding agree while
  nothing is evicted inside the chunk.
`seq_len` is the number of stored tokens (the in-cache position bookkeeping the layer
uses); `tokens_seen` counts every token ever appended; `abs_positions` gives each slot's
position in the original stream. Memory: `2·n_layers·B·Hkv·D·(n_sink + window)` elements.
Evicting shifts the window by one slot: O(window·D) per step, the same order as the
re-rotation of the keys that the read needs anyway.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from .base import KVCache, check_n_tokens
from .contiguous import _check_dtype_device


class SinkKVCache(KVCache):
    """n_sink first tokens + `window` recent tokens per layer, keys stored pre-RoPE."""

    rope_in_cache = True  # keys are rotated by the reader with in-cache positions

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, *,
                 n_sink: int = 4, window: int = 1020, v_head_dim: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        # defaults: 4 sinks + 1020 recent (the paper's 1024-token cache; docs/sources.md)
        self.n_layers = check_positive_int("n_layers", n_layers)
        self.batch = check_positive_int("batch", batch)
        self.n_kv_heads = check_positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.n_sink = check_positive_int("n_sink", n_sink, minimum=0)
        self.window = check_positive_int("window", window)
        self.v_head_dim = head_dim if v_head_dim is None else \
            check_positive_int("v_head_dim", v_head_dim)
        self.dtype, self.device = _check_dtype_device(dtype, device)
        S = self.n_sink + self.window
        self._k = torch.zeros(n_layers, batch, n_kv_heads, S, head_dim, dtype=dtype,
                              device=self.device)
        self._v = torch.zeros(n_layers, batch, n_kv_heads, S, self.v_head_dim, dtype=dtype,
                              device=self.device)
        self._abs = torch.full((n_layers, S), -1, dtype=torch.long)  # stream position per slot
        self._n = [0] * n_layers  # stored tokens
        self._seen = [0] * n_layers
        self._last = [0] * n_layers  # slots returned by the last update

    @property
    def capacity(self) -> int:
        return self.n_sink + self.window

    def check_append(self, n_tokens: int) -> None:
        """Never full: old tokens are evicted to make room."""
        check_n_tokens(n_tokens)

    def seq_len(self, layer_idx: int = 0) -> int:
        self._check_layer(layer_idx)
        return self._n[layer_idx]

    def tokens_seen(self, layer_idx: int = 0) -> int:
        self._check_layer(layer_idx)
        return self._seen[layer_idx]

    def kv_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """In-cache positions 0..L−1 of the slots returned by the last update."""
        self._check_layer(layer_idx)
        return torch.arange(self._last[layer_idx], device=self.device)

    def rope_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """RoPE positions of the returned slots: their places in the cache (StreamingLLM's
        rule), the same as `kv_positions`; `abs_positions` gives the stream positions.
        In-cache order is stream order, so a causal mask gives the same answer on either."""
        return self.kv_positions(layer_idx)

    def abs_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Stream positions of the stored slots, in slot order."""
        self._check_layer(layer_idx)
        return self._abs[layer_idx, : self._n[layer_idx]].clone()

    def reset(self) -> None:
        self._n = [0] * self.n_layers
        self._seen = [0] * self.n_layers
        self._last = [0] * self.n_layers
        self._abs.fill_(-1)

    @property
    def nbytes(self) -> int:
        return (self._k.numel() + self._v.numel()) * self._k.element_size()

    @property
    def used_nbytes(self) -> int:
        per = (self._k[0].numel() + self._v[0].numel()) // self.capacity
        return sum(self._n) * per * self._k.element_size()

    def _check(self, layer_idx, k, v) -> int:
        self._check_layer(layer_idx)
        check_tensor("k", k, 4)
        check_tensor("v", v, 4)
        want_k = (self.batch, self.n_kv_heads, k.shape[2], self.head_dim)
        want_v = (self.batch, self.n_kv_heads, k.shape[2], self.v_head_dim)
        if tuple(k.shape) != want_k or tuple(v.shape) != want_v:
            raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must be (B={self.batch}, "
                             f"Hkv={self.n_kv_heads}, T, D={self.head_dim}/{self.v_head_dim})")
        if k.dtype != self.dtype or v.dtype != self.dtype:
            raise TypeError(f"k/v dtype ({k.dtype}, {v.dtype}) must be {self.dtype}")
        return k.shape[2]

    def _keep(self, li: int, k_all, v_all, abs_all) -> None:
        """Store sinks + last `window` of the given ordered slots."""
        n = k_all.shape[2]
        if n <= self.capacity:
            idx = torch.arange(n)
        else:
            idx = torch.cat([torch.arange(self.n_sink), torch.arange(n - self.window, n)])
        m = idx.numel()
        self._k[li, :, :, :m] = k_all[:, :, idx]
        self._v[li, :, :, :m] = v_all[:, :, idx]
        self._abs[li, :m] = abs_all[idx]
        self._n[li] = m

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        T = self._check(layer_idx, k, v)
        li, n, S = layer_idx, self._n[layer_idx], self.capacity
        new_abs = torch.arange(self._seen[li], self._seen[li] + T)
        self._seen[li] += T
        if T == 1:
            if n == S:  # evict the oldest recent token: shift the window left by one
                lo = self.n_sink
                self._k[li, :, :, lo:S - 1] = self._k[li, :, :, lo + 1:S].clone()
                self._v[li, :, :, lo:S - 1] = self._v[li, :, :, lo + 1:S].clone()
                self._abs[li, lo:S - 1] = self._abs[li, lo + 1:S].clone()
                n = S - 1
            self._k[li, :, :, n:n + 1] = k
            self._v[li, :, :, n:n + 1] = v
            self._abs[li, n] = new_abs[0]
            self._n[li] = self._last[li] = n + 1
            return self._k[li, :, :, :n + 1], self._v[li, :, :, :n + 1]  # views
        k_all = torch.cat([self._k[li, :, :, :n], k], 2)  # (B, Hkv, n + T, D)
        v_all = torch.cat([self._v[li, :, :, :n], v], 2)
        abs_all = torch.cat([self._abs[li, :n], new_abs])
        self._keep(li, k_all, v_all, abs_all)
        self._last[li] = n + T
        return k_all, v_all
