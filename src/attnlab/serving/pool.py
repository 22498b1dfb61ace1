"""The engine's memory: one paged pool per layer group + recurrent state slots.

`ServingCache(model, num_blocks, block_size)` asks every mixer for its
`serving_layout()` and groups layers with equal layouts (vLLM's hybrid allocator keeps
one block table per group): full-attention layers of one geometry share a pool and a
block table per sequence; windowed layers get their own group, whose pool releases the
blocks that leave the window (O(W) memory per sequence); MLA layers share a latent pool
(`[c_KV; k_R]` per token, stored once); recurrent layers get state slots
(`state_slots.StateSlots`). Every operation of the engine (add, reserve, free, swap) is
applied to every group, and checked on every group before any of them changes.

`step(seq_ids, starts, n)` gives the forward's container: a `CacheStack` of per-layer
views (`PagedLayerView`, `StateSlotView`) for a batch of sequences each at its own
offset, with the new tokens' slots already reserved. Prefix caching applies when the
model is one group of full-attention (or MLA) layers; otherwise prompts are recomputed
(see `state_slots`).
"""
from __future__ import annotations

import torch

from ..cache.base import CacheStack, KVCache, check_n_tokens
from ..cache.layout import PagedLayout, StateLayout
from ..cache.paged import PagedKVCache, PoolExhaustedError, SwappedSequence
from ..cache.paged_view import paged_attend
from .state_slots import StateSlots


class ServingCache:
    """Paged groups + state slots of one model (see the module docstring)."""

    def __init__(self, model, num_blocks: int, block_size: int = 16, *,
                 prefix_caching: bool = True, max_sequences: int = 64,
                 window_blocks: int | None = None):
        params = next(model.parameters())
        dtype, device = params.dtype, params.device
        layouts = []
        for i, blk in enumerate(model.blocks):
            try:
                layouts.append(blk.mixer.serving_layout())
            except ValueError as exc:
                raise ValueError(f"model.blocks[{i}].mixer ({type(blk.mixer).__name__}) is "
                                 f"not servable: {exc}") from exc
        paged = sorted({lay for lay in layouts if isinstance(lay, PagedLayout)},
                       key=lambda lay: (lay.window is not None, layouts.index(lay)))
        states = {i: lay for i, lay in enumerate(layouts) if isinstance(lay, StateLayout)}
        self.n_layers = len(layouts)
        self.block_size = block_size
        self.prefix_caching = bool(prefix_caching) and not states and len(paged) == 1 \
            and paged[0].window is None
        self.groups: list[tuple[PagedLayout, list[int], PagedKVCache]] = []
        self.where: list[tuple[str, int, int]] = [("", 0, 0)] * self.n_layers
        for g, lay in enumerate(paged):
            members = [i for i, x in enumerate(layouts) if x == lay]
            n = num_blocks if lay.window is None or window_blocks is None else window_blocks
            pool = PagedKVCache(len(members), lay.n_kv_heads, lay.head_dim, n, block_size,
                                lay.v_head_dim, dtype=dtype, device=device,
                                prefix_caching=self.prefix_caching and lay.window is None,
                                window=lay.window, values_are_keys=lay.values_are_keys)
            self.groups.append((lay, members, pool))
            for j, li in enumerate(members):
                self.where[li] = ("paged", g, j)
        self._pools = [p for _, _, p in self.groups]  # the groups never change
        self.states = StateSlots(states, max_sequences, dtype=dtype, device=device) \
            if states else None
        for li in states:
            self.where[li] = ("state", 0, li)

    @property
    def pools(self) -> list[PagedKVCache]:
        return self._pools

    @property
    def main(self) -> PagedKVCache:
        """The first group's pool (full attention when the model has any): the block
        tables `sequences` / `block_table` / `seq_len` / `allocator` report."""
        if not self.groups:
            raise ValueError("this model keeps only recurrent state; it has no paged pool")
        return self.groups[0][2]

    @property
    def sequences(self) -> list:
        return self.main.sequences

    def block_table(self, seq_id) -> list[int]:
        return self.main.block_table(seq_id)

    def seq_len(self, seq_id) -> int:
        return self.main.seq_len(seq_id)

    @property
    def allocator(self):
        return self.main.allocator

    # --- sequences -------------------------------------------------------------------
    def has_sequence(self, seq_id) -> bool:
        return any(p.has_sequence(seq_id) for p in self.pools) or \
            (self.states is not None and self.states.has_sequence(seq_id))

    def add_sequence(self, seq_id, tokens: list[int]) -> int:
        """Start a sequence in every group; returns prompt tokens already cached (prefix
        hit, only with prefix caching on)."""
        if self.states is not None and self.states.n_free == 0:
            raise ValueError("no free state slot; expected fewer running sequences than "
                             f"max_sequences ({self.states.n_slots})")
        hits = [p.add_sequence(seq_id, tokens) for p in self.pools]
        if self.states is not None:
            self.states.add(seq_id)
        return min(hits) if hits else 0

    def blocks_for(self, total: int, chunk: int) -> int:
        """Most blocks one sequence of `total` tokens holds in any group at once (a
        windowed group holds the window + one chunk, whatever the length)."""
        bs, need = self.block_size, 0
        for lay, _, _ in self.groups:
            full = -(-total // bs)
            if lay.window is not None:
                full = min(full, -(-(lay.window - 1 + chunk) // bs) + 1)
            need = max(need, full)
        return need

    def fits(self, seq_id, n: int) -> bool:
        """Whether reserving n more tokens for seq_id fits in every group."""
        return all(p.blocks_needed(seq_id, n) <= p.allocator.n_free for p in self.pools)

    def fits_swap_in(self, saved: dict, n: int) -> bool:
        """Whether a swapped-out sequence can come back and take n more tokens."""
        bs = self.block_size
        for (_, _, p), sw in zip(self.groups, saved["paged"]):
            grow = -(-(sw.length + n) // bs) - -(-sw.length // bs)  # blocks the n tokens add
            if sw.k.shape[2] + grow > p.allocator.n_free:
                return False
        return self.states is None or self.states.n_free > 0

    def fits_many(self, asks: list[tuple]) -> bool:
        """Whether reserving n tokens for every (seq_id, n) of `asks`, in order, fits in
        every group (a windowed group's releases during the reserves are not counted:
        True means it surely fits)."""
        return all(p.blocks_needed_many(asks) <= p.allocator.n_free for p in self.pools)

    def reserve_many(self, asks: list[tuple]) -> None:
        """One reserve for a step's sequences: (seq_id, n, token ids of the n tokens) each,
        in order; checked on every group before any of them changes."""
        if len(self.pools) > 1 and not self.fits_many(asks):
            raise PoolExhaustedError(f"{len(asks)} sequences' tokens do not fit in every "
                                     "group; nothing was reserved")
        for p in self.pools:  # (one pool checks, and refuses, before it changes)
            p.reserve_many(asks)

    def reserve(self, seq_id, n: int, tokens: list[int]) -> None:
        check_n_tokens(n)
        if not self.fits(seq_id, n):
            raise ValueError(f"sequence {seq_id!r}: {n} tokens do not fit; call fits() first")
        for p in self.pools:
            p.reserve(seq_id, n, tokens=tokens)

    def register_full_blocks(self, seq_id) -> None:
        for p in self.pools:
            p.register_full_blocks(seq_id)

    def free(self, seq_id) -> None:
        for p in self.pools:
            p.free(seq_id)
        if self.states is not None:
            self.states.free(seq_id)

    def swap_out(self, seq_id) -> dict:
        saved = {"paged": [p.swap_out(seq_id) for p in self.pools],
                 "state": self.states.swap_out(seq_id) if self.states is not None else None}
        return saved

    def swap_in(self, seq_id, saved: dict) -> None:
        for p, sw in zip(self.pools, saved["paged"]):
            p.swap_in(seq_id, sw)
        if self.states is not None:
            self.states.swap_in(seq_id, saved["state"])

    @staticmethod
    def swapped_nbytes(saved: dict) -> int:
        n = sum(sw.nbytes for sw in saved["paged"])
        if saved["state"] is not None:
            n += sum(t.numel() * t.element_size() for d in saved["state"].values()
                     for t in d.values())
        return n

    # --- one forward -----------------------------------------------------------------
    def step(self, seq_ids: list, n_new: int) -> CacheStack:
        """Per-layer views for `seq_ids`, whose next n_new tokens are reserved."""
        views: list[KVCache | None] = [None] * self.n_layers
        for lay, members, pool in self.groups:  # tensors built once per group and step
            # tables (B, W), lengths (B,), write slots (B·N,), the longest length
            tables, lens, slots, longest = pool.step_tensors(seq_ids, n_new)
            for j, li in enumerate(members):
                views[li] = PagedLayerView(pool, j, tables, lens, slots, lay.window, longest)
        if self.states is not None:
            idx = self.states.indices(seq_ids)  # (B,) state slots, shared by the layers
            for li, (kind, _, _) in enumerate(self.where):
                if kind == "state":
                    views[li] = self.states.view(li, idx, n_new)
        return ServingStep(views)

    # --- memory ----------------------------------------------------------------------
    @property
    def n_owned(self) -> int:
        return sum(p.allocator.n_owned for p in self.pools)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pools) + \
            (self.states.nbytes if self.states is not None else 0)

    @property
    def used_nbytes(self) -> int:
        """Bytes of blocks owned by sequences + state slots in use."""
        n = sum(p.bytes_per_block * p.allocator.n_owned for p in self.pools)
        if self.states is not None:
            n += self.states.bytes_per_sequence() * len(self.states.slot_of)
        return n

    def sequence_nbytes(self, seq_id) -> int:
        """Bytes one sequence holds: its live blocks in every group + its state slot."""
        n = sum(p.live_blocks(seq_id) * p.bytes_per_block for p in self.pools)
        if self.states is not None and self.states.has_sequence(seq_id):
            n += self.states.bytes_per_sequence()
        return n

    def check_invariants(self) -> None:
        for p in self.pools:
            p.check_invariants()

    def gather(self, seq_id, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of one paged layer's K/V of a sequence (tests)."""
        kind, g, j = self.where[layer]
        if kind != "paged":
            raise ValueError(f"layer {layer} keeps recurrent state, not paged K/V")
        return self.groups[g][2].gather(seq_id, j)


class PagedLayerView(KVCache):
    """One layer of a paged pool for one step's batch: a cache of the §4 interface whose
    `attend` writes the new K/V into the reserved slots and reads the blocks in place."""

    n_layers = 1
    in_place_attention = True

    def __init__(self, pool: PagedKVCache, layer: int, tables: torch.Tensor,
                 lens: torch.Tensor, slots: torch.Tensor, window: int | None,
                 longest: int | None = None):
        self.pool, self.layer, self.tables, self.lens = pool, layer, tables, lens
        self.slots, self.window = slots, window
        self._longest = int(lens.max()) if longest is None else longest

    def _write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        B, Hkv, N, D = k.shape
        if B * N != self.slots.numel():
            raise ValueError(f"k has {B}×{N} new tokens; this step reserved "
                             f"{self.slots.numel()} slots")
        self.pool.write_reserved(self.layer, self.slots,
                                 k.transpose(0, 1).reshape(Hkv, B * N, D),
                                 v.transpose(0, 1).reshape(Hkv, B * N, v.shape[-1]))

    def attend(self, layer_idx, q, k, v, *, attention, q_pos, window=None, rotate=None,
               scale=None):
        self._check_layer(layer_idx)
        self._write(k, v)
        return paged_attend(self.pool, self.layer, self.tables, self.lens, q, scale=scale,
                            window=self.window, attention=attention)

    def update(self, layer_idx, k, v):
        """Write, then return the batch's history gathered (B, Hkv, L, D) — a copy, for
        callers outside a layer (equal lengths only); layers read through `attend`."""
        self._check_layer(layer_idx)
        if int(self.lens.min()) != int(self.lens.max()):
            raise ValueError("update() returns one (B, Hkv, L, D) tensor: the batch's "
                             f"sequences must have equal lengths, got {self.lens.tolist()}")
        self._write(k, v)
        from ..ops.paged import gather_sequence

        L = int(self.lens[0])
        ks = [gather_sequence(self.pool.k_pool[self.layer], t, L) for t in self.tables]
        vs = [gather_sequence(self.pool.v_pool[self.layer], t, L) for t in self.tables]
        return torch.stack(ks), torch.stack(vs)

    def seq_len(self, layer_idx: int = 0) -> int:
        """Longest sequence of the batch, its new tokens included (each sequence's own
        length is in `lens`; positions come from the step's context)."""
        return self._longest

    @property
    def capacity(self) -> int:
        return self.pool.num_blocks * self.pool.block_size

    def check_append(self, n_tokens: int) -> None:
        check_n_tokens(n_tokens)  # reserved by the engine before the forward

    def reset(self) -> None:
        raise NotImplementedError("a step view cannot forget tokens; free the sequences")

    @property
    def nbytes(self) -> int:
        return len(set(self.tables.flatten().tolist())) * self.pool.bytes_per_block


class ServingStep(CacheStack):
    """The per-layer views of one engine step; room was reserved before the forward."""

    def check_append(self, n_tokens: int) -> None:
        check_n_tokens(n_tokens)

    def seq_len(self, layer_idx: int = 0) -> int:
        return self.layer(layer_idx).seq_len(0)


__all__ = ["PagedLayerView", "ServingCache", "ServingStep", "SwappedSequence"]
