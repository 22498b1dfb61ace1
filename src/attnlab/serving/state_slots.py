"""Per-sequence recurrent state slots for the serving engine (linear attention, SSD, RWKV).

A recurrent layer keeps a fixed-size state per sequence, so serving it needs no blocks:
each running sequence owns one slot of `StateSlots` (a `(n_slots, *shape)` buffer per
state tensor and layer). A step's `StateSlotView` gathers the batch's slots into
`(B, *shape)` for the layer (`state`) and scatters the new state back (`commit`):
O(state) per step, constant in the sequence length. Preemption by swap copies the slot
to host memory and frees it; by recompute just frees it (the state is rebuilt by the
re-prefill).

Prefix sharing for these layers: recompute the prefix. A shared prompt's blocks only
help layers that keep per-token K/V; a model with recurrent (or windowed) layers gets no
prefix hits and prefills every prompt fully (chosen over snapshotting states at block
boundaries: one code path, no snapshot memory; a test checks a shared prefix gives the
same continuation as an unshared one).
"""
from __future__ import annotations

from collections.abc import Hashable

import torch

from .._checks import check_positive_int
from ..cache.base import KVCache, check_n_tokens
from ..cache.block_allocator import PoolExhaustedError
from ..cache.layout import StateLayout


class StateSlots:
    """State slots of the recurrent layers `layers` (model layer index -> layout)."""

    def __init__(self, layers: dict[int, StateLayout], n_slots: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.n_slots = check_positive_int("n_slots", n_slots)
        self.layouts = dict(layers)
        self.dtype, self.device = dtype, torch.device(device)
        self.bufs = {li: {name: torch.zeros((n_slots, *shp), dtype=dtype, device=self.device)
                          for name, shp in lay.shapes}
                     for li, lay in self.layouts.items()}  # (n_slots, *shape) per tensor
        self.slot_of: dict[Hashable, int] = {}
        self._free = list(range(n_slots - 1, -1, -1))

    @property
    def n_free(self) -> int:
        return len(self._free)

    def has_sequence(self, seq_id) -> bool:
        return seq_id in self.slot_of

    def add(self, seq_id) -> int:
        """A slot holding the initial state (the fill values) for a new sequence."""
        if seq_id in self.slot_of:
            raise ValueError(f"seq_id ({seq_id!r}) already holds a state slot")
        if not self._free:
            raise PoolExhaustedError(f"no free state slot for sequence {seq_id!r} "
                                     f"(n_slots {self.n_slots})")
        slot = self._free.pop()
        for li, lay in self.layouts.items():
            fill = dict(lay.fill)
            for name, buf in self.bufs[li].items():
                buf[slot].fill_(fill.get(name, 0.0))
        self.slot_of[seq_id] = slot
        return slot

    def free(self, seq_id) -> None:
        self._free.append(self._slot(seq_id))
        del self.slot_of[seq_id]

    def _slot(self, seq_id) -> int:
        if seq_id not in self.slot_of:
            raise ValueError(f"seq_id ({seq_id!r}) holds no state slot (never added, or "
                             "already freed)")
        return self.slot_of[seq_id]

    def swap_out(self, seq_id) -> dict:
        """Host copies of the sequence's state (every layer); frees its slot."""
        slot = self._slot(seq_id)
        saved = {li: {n: b[slot].to("cpu", copy=True) for n, b in bufs.items()}
                 for li, bufs in self.bufs.items()}
        self.free(seq_id)
        return saved

    def swap_in(self, seq_id, saved: dict) -> None:
        slot = self.add(seq_id)
        for li, bufs in self.bufs.items():
            for n, b in bufs.items():
                b[slot].copy_(saved[li][n])

    def bytes_per_sequence(self) -> int:
        return sum(lay.numel() for lay in self.layouts.values()) * \
            torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        return self.bytes_per_sequence() * self.n_slots

    def indices(self, seq_ids: list) -> torch.Tensor:
        """(B,) long: the slot of each sequence."""
        return torch.tensor([self._slot(s) for s in seq_ids], dtype=torch.long,
                            device=self.device)

    def view(self, layer: int, idx: torch.Tensor, n_new: int) -> StateSlotView:
        """Layer `layer`'s state of the sequences in slots `idx` (`indices`)."""
        return StateSlotView(self, layer, idx, n_new)


class StateSlotView(KVCache):
    """One recurrent layer's state for a batch of sequences (one engine step): the
    `state` / `commit` interface of `RecurrentStateCache`, on slots."""

    n_layers = 1

    def __init__(self, slots: StateSlots, layer: int, idx: torch.Tensor, n_new: int):
        self.slots, self.layer, self.idx, self.n_new = slots, layer, idx, n_new

    def state(self, layer_idx: int) -> dict[str, torch.Tensor]:
        self._check_layer(layer_idx)
        return {n: b.index_select(0, self.idx) for n, b in self.slots.bufs[self.layer].items()}

    def commit(self, layer_idx: int, new_state, n_tokens: int) -> None:
        self._check_layer(layer_idx)
        check_n_tokens(n_tokens)
        bufs = self.slots.bufs[self.layer]
        if set(new_state) != set(bufs):
            raise ValueError(f"new_state names {sorted(new_state)}; expected {sorted(bufs)}")
        with torch.no_grad():
            for n, t in new_state.items():
                bufs[n].index_copy_(0, self.idx, t.to(bufs[n].dtype))

    def update(self, layer_idx, k, v):
        raise TypeError("a state-slot view holds recurrent state, not keys/values; its layer "
                        "reads state() and writes commit()")

    def seq_len(self, layer_idx: int = 0) -> int:
        return 0  # positions come from the step's context

    @property
    def capacity(self) -> int:
        return 1 << 62  # a state does not grow

    def check_append(self, n_tokens: int) -> None:
        check_n_tokens(n_tokens)

    def reset(self) -> None:
        raise NotImplementedError("a step view cannot forget tokens; free the sequences")

    @property
    def nbytes(self) -> int:
        return self.slots.bytes_per_sequence() * self.idx.numel()
