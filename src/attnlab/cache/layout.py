"""What a mixer needs from a serving cache, declared by the mixer (`Mixer.serving_layout`).

The serving engine groups layers by layout, as vLLM's hybrid allocator keeps one block
table per layer group: layers with equal `PagedLayout` share one paged pool and one block
table per sequence; each `StateLayout` layer gets per-sequence state slots.
- `PagedLayout`: per-token K/V of `n_kv_heads` heads (`head_dim` / `v_head_dim`), an
  optional sliding `window` (the pool releases blocks that leave it), and
  `values_are_keys` (MLA's latent: `[c_KV; k_R]` is both key and value, stored once).
- `StateLayout`: fixed-size recurrent state tensors per sequence (`shapes`, `fill`), as a
  `RecurrentStateCache` holds them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .._checks import check_positive_int


@dataclass(frozen=True)
class PagedLayout:
    n_kv_heads: int
    head_dim: int
    v_head_dim: int
    window: int | None = None
    values_are_keys: bool = False

    def __post_init__(self) -> None:
        for name in ("n_kv_heads", "head_dim", "v_head_dim"):
            check_positive_int(name, getattr(self, name))
        if self.window is not None:
            check_positive_int("window", self.window)

    def bytes_per_token(self, dtype_bytes: int) -> int:
        """Cached bytes per token of one layer of this layout."""
        v = 0 if self.values_are_keys else self.v_head_dim
        return self.n_kv_heads * (self.head_dim + v) * dtype_bytes


@dataclass(frozen=True)
class StateLayout:
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    fill: tuple[tuple[str, float], ...] = field(default=())

    def numel(self) -> int:
        """State elements per sequence (constant in its length)."""
        total = 0
        for _, shp in self.shapes:
            n = 1
            for d in shp:
                n *= d
            total += n
        return total
