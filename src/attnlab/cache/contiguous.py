"""Preallocated contiguous KV cache (conventions §4).

Every layer owns a slab of `capacity` slots allocated once. Appending T tokens writes
exactly those T slots (O(T) element writes; the history is never copied) and returns
views of the filled prefix, so attention reads the cache in place.

Memory: `nbytes = n_layers · batch · n_kv_heads · (head_dim + v_head_dim) · capacity ·
bytes`, i.e. the familiar `2 · L · H_kv · d_head · T · bytes` when `v_head_dim ==
head_dim` (Pope et al. 2022, "Efficiently Scaling Transformer Inference", §2).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from .base import CountedCache


def _check_dtype_device(dtype, device) -> tuple[torch.dtype, torch.device]:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__} ({dtype!r})")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device ({device!r}) is not a valid torch device") from exc
    return dtype, dev


def _same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` name one device; compare type and index where both are given."""
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


class _SlabCache(CountedCache):
    """Shared machinery: two per-layer slabs (`first`, `second`) with time at `time_dim`.

    Subclasses give the per-layer trailing shapes and the names of the two inputs; this
    class validates, checks capacity before writing, writes in place and returns views.
    """

    _names: tuple[str, str] = ("k", "v")
    _geometry: tuple[str, ...] = ()  # subclass attributes shown by repr

    def __init__(self, n_layers: int, batch: int, capacity: int,
                 shape_a: tuple[int, ...], shape_b: tuple[int, ...], time_dim: int,
                 dtype: torch.dtype, device) -> None:
        self._init_counts(n_layers, batch, capacity)
        self.dtype, self.device = _check_dtype_device(dtype, device)
        self._time_dim = time_dim  # time axis inside one layer's (B, ...) slab
        # per-layer slab shapes with a capacity-long time axis inserted at time_dim
        full_a = (batch, *shape_a[: time_dim - 1], capacity, *shape_a[time_dim - 1:])
        full_b = (batch, *shape_b[: time_dim - 1], capacity, *shape_b[time_dim - 1:])
        self._buf_a = torch.zeros((n_layers, *full_a), dtype=dtype, device=self.device)
        self._buf_b = torch.zeros((n_layers, *full_b), dtype=dtype, device=self.device)

    # --- interface -------------------------------------------------------------------
    def kv_positions(self, layer_idx: int = 0) -> torch.Tensor:
        return torch.arange(self.seq_len(layer_idx), device=self.device)

    def reset(self) -> None:
        self._lens = [0] * self.n_layers

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` tokens of every layer (speculative-decoding rollback).

        Layers holding fewer tokens are unchanged. Storage is kept; nothing is copied.
        """
        check_positive_int("max_length", max_length, minimum=0)
        self._lens = [min(n, max_length) for n in self._lens]

    truncate = crop

    @property
    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two preallocated slabs, `(n_layers, B, ..., capacity, ...)`, for inspection."""
        return self._buf_a, self._buf_b

    @property
    def nbytes(self) -> int:
        return (self._buf_a.numel() + self._buf_b.numel()) * self._buf_a.element_size()

    @property
    def used_nbytes(self) -> int:
        per_token = (self._buf_a[0].numel() + self._buf_b[0].numel()) // self._capacity
        return sum(self._lens) * per_token * self._buf_a.element_size()

    # --- append ----------------------------------------------------------------------
    def _layer_view(self, buf: torch.Tensor, layer_idx: int, stop: int) -> torch.Tensor:
        return buf[layer_idx].narrow(self._time_dim, 0, stop)

    def _check_input(self, name: str, x, buf: torch.Tensor) -> int:
        """Validate one input against its slab; return its number of new tokens."""
        expect = list(buf.shape[1:])
        check_tensor(name, x, len(expect))
        got = list(x.shape)
        t = got[self._time_dim]
        got[self._time_dim] = expect[self._time_dim] = -1
        if got != expect:
            shown = ", ".join("T" if d == -1 else str(d) for d in expect)
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected ({shown}) "
                             f"for this {type(self).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}; this cache stores {self.dtype}")
        if not _same_device(x.device, self.device):
            raise ValueError(f"{name} is on {x.device}; this cache lives on {self.device}")
        return t

    def _append(self, layer_idx: int, a, b) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer_idx)
        na, nb = self._names
        ta = self._check_input(na, a, self._buf_a)
        tb = self._check_input(nb, b, self._buf_b)
        if ta != tb:
            raise ValueError(f"{na} has {ta} new tokens but {nb} has {tb}; expected equal")
        start = self._lens[layer_idx]
        stop = self._check_room(layer_idx, ta)  # before any write: stored tokens stay intact
        self._buf_a[layer_idx].narrow(self._time_dim, start, ta).copy_(a)  # O(T) writes
        self._buf_b[layer_idx].narrow(self._time_dim, start, tb).copy_(b)
        self._lens[layer_idx] = stop
        return (self._layer_view(self._buf_a, layer_idx, stop),
                self._layer_view(self._buf_b, layer_idx, stop))

    def __repr__(self) -> str:
        fields = ("n_layers", "batch", *self._geometry, "capacity", "dtype", "device", "nbytes")
        return f"{type(self).__name__}(" + ", ".join(
            f"{f}={getattr(self, f)}" for f in fields) + ")"

    def get(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of what is stored for a layer, without appending."""
        n = self.seq_len(layer_idx)
        return self._layer_view(self._buf_a, layer_idx, n), self._layer_view(self._buf_b, layer_idx, n)


class ContiguousKVCache(_SlabCache):
    """K and V slabs `(n_layers, B, Hkv, capacity, D)` / `(…, Dv)` allocated up front.

    `update(layer_idx, k (B, Hkv, T, D), v (B, Hkv, T, Dv)) -> (k_all, v_all)`, both
    views `(B, Hkv, L, ·)` of the slab with L = tokens stored for that layer. Appending
    costs O(T · Hkv · D) writes, independent of the history length. Overflow raises
    `CacheOverflowError` before anything is written.
    """

    _names = ("k", "v")
    _geometry = ("n_kv_heads", "head_dim", "v_head_dim")
    slots_in_order = True  # slot j holds absolute position j

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int,
                 capacity: int, v_head_dim: int | None = None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.n_kv_heads = check_positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.v_head_dim = head_dim if v_head_dim is None else \
            check_positive_int("v_head_dim", v_head_dim)
        super().__init__(n_layers, batch, capacity, (n_kv_heads, head_dim),
                         (n_kv_heads, self.v_head_dim), time_dim=2, dtype=dtype, device=device)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        return self._append(layer_idx, k, v)
