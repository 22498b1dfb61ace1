"""The one cache interface (conventions §4).

Every cache — contiguous, rolling, sink, paged, quantized, latent, recurrent state —
implements `update`, `seq_len`, `capacity`, `reset`, `nbytes` (bytes actually allocated)
and `used_nbytes` (bytes holding live tokens/state). Layers call
`cache.update(layer_idx, k, v)` and attend over what it returns.

Position convention: `seq_len(layer_idx)` is the number of tokens appended so far, i.e.
the absolute position the next token will have. `kv_positions(layer_idx)` gives the
absolute position of every slot returned by the last `update` (caches that drop or
reorder tokens document what they return).

What a layer may rely on is declared here, as interface, never found out by type checks:
- `attend(layer_idx, q, k, v, ...)`: append k/v and return attention of q over what the
  cache holds. The default calls `update` and attends over the returned views; a paged
  view overrides it to read blocks in place (`in_place_attention = True`: its `update`
  would have to copy the history, so layers must go through `attend`).
- `rope_in_cache`: keys are stored before RoPE and rotated by the reader with the
  positions the cache reports (the StreamingLLM sink cache); False = keys are stored
  rotated with their absolute positions.
- `slots_in_order`: slot j of the returned keys holds absolute position j (a windowed
  reader may skip the slots before its window by slicing).
- `state(layer_idx)` / `commit(layer_idx, new_state, n_tokens)`: recurrent state
  (linear attention, SSD, RWKV); caches without state refuse with a TypeError.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .._checks import check_positive_int


class CacheOverflowError(ValueError):
    """Raised before anything is written when an append does not fit."""


def check_n_tokens(n_tokens) -> int:
    """A token count to append: an int >= 0."""
    return check_positive_int("n_tokens", n_tokens, minimum=0)


def overflow(layer_idx: int, stored: int, n_tokens: int, capacity: int) -> CacheOverflowError:
    """The one overflow error of every cache (raised before anything is written)."""
    return CacheOverflowError(
        f"cache overflow at layer {layer_idx}: {stored} stored + {n_tokens} new = "
        f"{stored + n_tokens} tokens requested, capacity is {capacity}; nothing was written")


class KVCache(ABC):
    """Abstract base of every attnlab cache."""

    n_layers: int
    rope_in_cache: bool = False  # keys stored pre-RoPE, rotated at read (sink cache)
    slots_in_order: bool = False  # slot j holds absolute position j (contiguous cache)
    in_place_attention: bool = False  # update() would copy the history: use attend()

    @abstractmethod
    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Append new entries for one layer; return what attention must read."""

    @abstractmethod
    def seq_len(self, layer_idx: int = 0) -> int:
        """Tokens appended so far for this layer (absolute position of the next token)."""

    @property
    @abstractmethod
    def capacity(self) -> int:
        """Most tokens this cache can hold per sequence (per layer)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all tokens; keep the allocation."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes actually allocated by this cache's storage."""

    @property
    def used_nbytes(self) -> int:
        """Bytes holding live entries (equals nbytes where storage is exact)."""
        return self.nbytes

    def kv_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Absolute positions of the slots returned by the last update."""
        return torch.arange(self.seq_len(layer_idx))

    def rope_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """The RoPE position of every slot returned by the last update. Default: keys
        are stored rotated with their absolute positions (`kv_positions`); a cache with
        `rope_in_cache` returns the positions its reader rotates them with."""
        return self.kv_positions(layer_idx)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               attention, q_pos: torch.Tensor, window: int | None = None,
               rotate=None, scale: float | None = None) -> torch.Tensor:
        """Append k, v (B, Hkv, N, D) and return `attention(q, k_all, v_all, q_pos=,
        kv_pos=)` over what this layer's cache holds, (B, H, N, Dv).

        `attention` evaluates the layer's mask on absolute positions; `window` (keys a
        query sees) lets a cache with `slots_in_order` skip slots no query of the call
        sees (exact); `rotate(x, positions)` is the layer's RoPE, used when the cache
        keeps keys pre-RoPE (`rope_in_cache`): queries then sit at the last N in-cache
        positions. `attention(q, k, v, q_pos=, kv_pos=, extra_mask=None)` is the layer's
        own attention (its mask, scale, backend, hook); `scale` is given for caches that
        run their own kernel (paged views)."""
        N = q.shape[2]
        k_all, v_all = self.update(layer_idx, k, v)  # (B, Hkv, L, D) views
        kv_pos = self.kv_positions(layer_idx)  # (L,)
        if self.rope_in_cache:
            if rotate is None:
                raise ValueError(f"{type(self).__name__} stores keys before RoPE; attend "
                                 "needs the layer's rotate function")
            rope = self.rope_positions(layer_idx)  # (L,) where RoPE puts each slot
            q_pos = kv_pos[-N:]
            q, k_all = rotate(q, rope[-N:]), rotate(k_all, rope)
        if window is not None and self.slots_in_order and q_pos.ndim == 1 and N:
            # keys before the first query's window are masked for every query: skip them,
            # so a decode step reads W keys, not the whole history (exact)
            lo = max(0, int(q_pos[0]) - window + 1)
            k_all, v_all, kv_pos = k_all[:, :, lo:], v_all[:, :, lo:], kv_pos[lo:]
        return attention(q, k_all, v_all, q_pos=q_pos, kv_pos=kv_pos)

    def state(self, layer_idx: int) -> dict[str, torch.Tensor]:
        """Recurrent state of one layer; caches of keys/values have none."""
        raise TypeError(f"{type(self).__name__} holds keys/values, not recurrent state; "
                        "expected a RecurrentStateCache (or the engine's state-slot view)")

    def commit(self, layer_idx: int, new_state, n_tokens: int) -> None:
        """Overwrite one layer's recurrent state after n_tokens more tokens."""
        self.state(layer_idx)  # raises for caches without state

    def check_append(self, n_tokens: int) -> None:
        """Raise `CacheOverflowError`, writing nothing, if appending `n_tokens` to every
        layer would not fit. Models call it before their first layer, so a refused step
        leaves every layer as it was (not layer 0 advanced and layer 5 refused).
        Default: seq_len + n_tokens ≤ capacity per layer; evicting caches override it."""
        check_n_tokens(n_tokens)
        for i in range(self.n_layers):
            if self.seq_len(i) + n_tokens > self.capacity:
                raise overflow(i, self.seq_len(i), n_tokens, self.capacity)

    def _check_layer(self, layer_idx: int) -> None:
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
            raise TypeError(f"layer_idx must be an int, got {type(layer_idx).__name__}")
        if not 0 <= layer_idx < self.n_layers:
            raise ValueError(f"layer_idx ({layer_idx}) must be in [0, {self.n_layers})")


class CountedCache(KVCache):
    """A cache that holds up to `capacity` tokens per layer and counts them per layer
    (contiguous, latent, quantized, recurrent state): the shared bookkeeping."""

    def _init_counts(self, n_layers: int, batch: int, capacity: int) -> None:
        self.n_layers = check_positive_int("n_layers", n_layers)
        self.batch = check_positive_int("batch", batch)
        self._capacity = check_positive_int("capacity", capacity)
        self._lens = [0] * n_layers  # tokens stored per layer, tracked independently

    @property
    def capacity(self) -> int:
        return self._capacity

    def seq_len(self, layer_idx: int = 0) -> int:
        self._check_layer(layer_idx)
        return self._lens[layer_idx]

    def _check_room(self, layer_idx: int, n_tokens: int) -> int:
        """End position after appending `n_tokens`; raises before anything is written."""
        start = self._lens[layer_idx]
        if start + n_tokens > self._capacity:
            raise overflow(layer_idx, start, n_tokens, self._capacity)
        return start + n_tokens


class CacheStack(KVCache):
    """A model's cache: one per-layer cache object per layer, possibly of different kinds.

    `update(i, ...)` delegates to `caches[i].update(0, ...)`, so hybrid models (GQA next
    to MLA next to a recurrent state) share one object behind the same interface.
    """

    def __init__(self, caches: list[KVCache]):
        if not caches:
            raise ValueError("caches must be a non-empty list of per-layer caches")
        for i, c in enumerate(caches):
            if not isinstance(c, KVCache):
                raise TypeError(f"caches[{i}] must be a KVCache, got {type(c).__name__}")
        self.caches = list(caches)
        self.n_layers = len(caches)

    def layer(self, layer_idx: int) -> KVCache:
        self._check_layer(layer_idx)
        return self.caches[layer_idx]

    def update(self, layer_idx, k, v):
        return self.layer(layer_idx).update(0, k, v)

    def attend(self, layer_idx, q, k, v, **kw):
        return self.layer(layer_idx).attend(0, q, k, v, **kw)

    def state(self, layer_idx):
        return self.layer(layer_idx).state(0)

    def commit(self, layer_idx, new_state, n_tokens):
        return self.layer(layer_idx).commit(0, new_state, n_tokens)

    def seq_len(self, layer_idx: int = 0) -> int:
        return self.layer(layer_idx).seq_len(0)

    def kv_positions(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layer(layer_idx).kv_positions(0)

    def rope_positions(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layer(layer_idx).rope_positions(0)

    def check_append(self, n_tokens: int) -> None:
        """Every layer's own check, before any layer writes (layers may differ in kind and
        capacity)."""
        for i, c in enumerate(self.caches):
            try:
                c.check_append(n_tokens)
            except CacheOverflowError as e:
                raise type(e)(f"layer {i} of the stack: {e}") from e

    @property
    def capacity(self) -> int:
        return min(c.capacity for c in self.caches)

    def reset(self) -> None:
        for c in self.caches:
            c.reset()

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches)

    @property
    def used_nbytes(self) -> int:
        return sum(c.used_nbytes for c in self.caches)
