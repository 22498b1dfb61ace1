"""Paged KV cache (vLLM PagedAttention, Kwon et al. SOSP 2023).

One pool of `num_blocks` physical blocks of `block_size` tokens per layer,
K `(n_layers, Hkv, num_blocks, block_size, D)` and V likewise. Each sequence owns a block
table (logical block i -> physical block) and a length; blocks are allocated on demand,
so a sequence wastes at most `block_size − 1` slots (its last block).

- `fork(parent, child)` shares every block (ref counts + 1); the first write into a
  shared, partially filled last block copies that one block (copy-on-write).
- Prefix caching: a full block is indexed by hash(parent hash, its tokens);
  `add_sequence(seq, tokens)` reuses matching blocks, even ones already freed but not yet
  evicted (LRU eviction in `BlockAllocator`). A hit is verified before reuse: the block's
  stored token ids and its parent block must equal the prompt's (a hash is only a key).
- Token tracking cannot drift: a sequence's token list always covers a prefix of its
  positions. `reserve(seq, n)` without token ids makes the sequence *untracked* from that
  position on — later token ids are not recorded and no block past that point is ever
  registered — so an untracked append can never misalign hashes with contents.
- `reserve` refuses (PoolExhaustedError) before changing anything; the serving engine
  answers by preempting a sequence (`swap_out` to host memory, or free and recompute).
- One serving step (`paged_step.PagedSteps`): `reserve_many` reserves a whole batch after
  one exact check, `step_tensors` builds its block tables / lengths / write slots in one
  pass; the tables are mirrored in a persistent tensor (`BlockTableRows`) as they change.
- `batch_view(seq_ids)` exposes a group of equal-length sequences through the KVCache
  interface (conventions §4) so a TinyLM forward can run on the pool.
- `window=W` (sliding-window layers): a block whose positions all lie before the window
  of the next query is released at `reserve` (its table entry becomes `EVICTED`, -1), so
  a sequence holds at most ⌈(W − 1 + chunk)/block_size⌉ + 1 blocks: O(W) memory whatever
  its length. Such a pool does no prefix caching (its early blocks are gone).
- `values_are_keys=True` (MLA's latent pool): one pool serves as both K and V (the
  absorbed read uses `[c_KV; k_R]` as key and its first r columns as value), so the
  latent is stored once.

Costs: reserve/fork/free O(blocks touched); a write is O(T·Hkv·D); reading goes through
`ops.paged.paged_attention` (no history copy).
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._checks import check_positive_int, check_tensor
from .block_allocator import BlockAllocator, PoolExhaustedError, block_hash
from .contiguous import _check_dtype_device
from .paged_step import BlockTableRows, PagedSteps

if TYPE_CHECKING:
    from .paged_view import PagedBatchView

__all__ = ["PagedKVCache", "PoolExhaustedError", "SwappedSequence"]


EVICTED = -1  # block-table entry of a block released because it left a layer's window


@dataclass
class SwappedSequence:
    """A preempted sequence's blocks copied to host memory (`swap_out`)."""

    k: torch.Tensor  # (n_layers, Hkv, n_blocks, block_size, D) on the host
    v: torch.Tensor  # (n_layers, Hkv, n_blocks, block_size, Dv) (k itself: values_are_keys)
    length: int
    tokens: list[int]  # ids of a prefix of the positions (all of them when tracked)
    tracked: bool = True
    live: list[int] | None = None  # logical blocks held (None = all; windowed pools)

    @property
    def nbytes(self) -> int:
        n = self.k.numel() * self.k.element_size()
        return n if self.v is self.k else n + self.v.numel() * self.v.element_size()


class PagedKVCache(PagedSteps):
    """A pool of KV blocks shared by many sequences, addressed through block tables."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, num_blocks: int,
                 block_size: int = 16, v_head_dim: int | None = None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 prefix_caching: bool = True, window: int | None = None,
                 values_are_keys: bool = False):
        self.n_layers = check_positive_int("n_layers", n_layers)
        self.n_kv_heads = check_positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.v_head_dim = head_dim if v_head_dim is None else \
            check_positive_int("v_head_dim", v_head_dim)
        self.block_size = check_positive_int("block_size", block_size)  # vLLM default 16
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.dtype, self.device = _check_dtype_device(dtype, device)
        self.window = None if window is None else check_positive_int("window", window)
        if self.window is not None and prefix_caching:
            raise ValueError(f"window ({window}) releases early blocks, so it needs "
                             "prefix_caching=False")
        self.prefix_caching = bool(prefix_caching)
        self.values_are_keys = bool(values_are_keys)
        if self.values_are_keys and self.v_head_dim != self.head_dim:
            raise ValueError(f"values_are_keys needs v_head_dim ({self.v_head_dim}) == "
                             f"head_dim ({self.head_dim})")
        shape = (n_layers, n_kv_heads, num_blocks, block_size)
        self.k_pool = torch.zeros((*shape, head_dim), dtype=dtype, device=self.device)
        self.v_pool = self.k_pool if self.values_are_keys else \
            torch.zeros((*shape, self.v_head_dim), dtype=dtype, device=self.device)
        self.allocator = BlockAllocator(num_blocks)
        self.tables: dict[Hashable, list[int]] = {}
        self.lens: dict[Hashable, int] = {}
        self.tokens: dict[Hashable, list[int]] = {}  # token ids of positions 0..len-1
        self.tracked: dict[Hashable, bool] = {}  # False once an untracked reserve happened
        self._hashed: dict[Hashable, list[int]] = {}  # chain hashes of registered blocks
        self._rows = BlockTableRows()  # the tables as one (host) tensor
        # per-layer views, made once: (Hkv, NB, bs, D) to read, (Hkv, NB·bs, D) to write
        self.layer_pools = [(self.k_pool[i], self.v_pool[i]) for i in range(n_layers)]
        self._flat = [(k.view(n_kv_heads, -1, head_dim), v.view(n_kv_heads, -1, self.v_head_dim))
                      for k, v in self.layer_pools]
        v = 0 if self.values_are_keys else self.v_pool[:, :, 0].numel()
        self._bytes_per_block = (self.k_pool[:, :, 0].numel() + v) * self.k_pool.element_size()

    @classmethod
    def from_memory(cls, n_layers: int, n_kv_heads: int, head_dim: int, budget_bytes: int,
                    block_size: int = 16, v_head_dim: int | None = None, *,
                    dtype: torch.dtype = torch.float32, **kw) -> PagedKVCache:
        """As many blocks as `budget_bytes` holds; refuses a budget below one block."""
        check_positive_int("budget_bytes", budget_bytes)
        check_positive_int("block_size", block_size)
        per_block = n_layers * n_kv_heads * block_size * (
            head_dim + (head_dim if v_head_dim is None else v_head_dim)) * \
            torch.empty((), dtype=dtype).element_size()
        if budget_bytes < per_block:
            raise ValueError(f"budget_bytes ({budget_bytes}) is smaller than one block "
                             f"({per_block} bytes); expected room for at least one block")
        return cls(n_layers, n_kv_heads, head_dim, budget_bytes // per_block, block_size,
                   v_head_dim, dtype=dtype, **kw)

    # --- sequences -------------------------------------------------------------------
    def _seq(self, seq_id) -> list[int]:
        if seq_id not in self.tables:
            raise ValueError(f"seq_id ({seq_id!r}) is not a live sequence of this cache "
                             "(never added, or already freed)")
        return self.tables[seq_id]

    def has_sequence(self, seq_id) -> bool:
        return seq_id in self.tables

    @property
    def sequences(self) -> list:
        return list(self.tables)

    def add_sequence(self, seq_id: Hashable, tokens: list[int] | None = None) -> int:
        """Start an empty sequence; with `tokens` (its prompt) and prefix caching on, share
        the longest run of cached full blocks of that prompt. Returns the number of prompt
        tokens already in the cache (always < len(tokens), so one token is left to run)."""
        if seq_id in self.tables:
            raise ValueError(f"seq_id ({seq_id!r}) already exists; expected a new id")
        table: list[int] = []
        hashes: list[int] = []
        if tokens is not None and self.prefix_caching:
            bs = self.block_size
            for i in range((len(tokens) - 1) // bs):
                h = block_hash(hashes[-1] if hashes else None, tuple(tokens[i * bs:(i + 1) * bs]))
                block_tokens = tuple(tokens[i * bs:(i + 1) * bs])
                b = self.allocator.lookup(h)
                if b is None or not self.allocator.verify(b, table[-1] if table else None,
                                                          block_tokens):
                    break
                self.allocator.incref(b)
                table.append(b)
                hashes.append(h)
        self.tables[seq_id] = table
        self._rows.write(seq_id, table)
        self.lens[seq_id] = len(table) * self.block_size
        self.tokens[seq_id] = [int(t) for t in tokens[: self.lens[seq_id]]] \
            if tokens is not None else []
        self.tracked[seq_id] = tokens is not None
        self._hashed[seq_id] = hashes
        return self.lens[seq_id]

    def seq_len(self, seq_id) -> int:
        self._seq(seq_id)
        return self.lens[seq_id]

    def block_table(self, seq_id) -> list[int]:
        return list(self._seq(seq_id))

    def fork(self, parent, child) -> None:
        """`child` shares all of `parent`'s blocks (copy-on-write on the first divergent write)."""
        table = self._seq(parent)
        if child in self.tables:
            raise ValueError(f"child seq_id ({child!r}) already exists; expected a new id")
        for b in table:
            if b != EVICTED:
                self.allocator.incref(b)
        self.tables[child] = list(table)
        self._rows.write(child, table)
        self.lens[child] = self.lens[parent]
        self.tokens[child] = list(self.tokens[parent])
        self.tracked[child] = self.tracked[parent]
        self._hashed[child] = list(self._hashed[parent])

    def free(self, seq_id) -> None:
        """Release a sequence; its blocks return to the pool when no one else shares them."""
        table = self._seq(seq_id)
        for b in reversed(table):  # tail first: LRU evicts a chain's end before its head
            if b != EVICTED:
                self.allocator.decref(b)
        for d in (self.tables, self.lens, self.tokens, self.tracked, self._hashed):
            del d[seq_id]
        self._rows.drop(seq_id)

    # --- appending -------------------------------------------------------------------
    def blocks_needed(self, seq_id, n: int) -> int:
        """Fresh blocks `reserve(seq_id, n)` would take (new blocks + a copy-on-write)."""
        table = self._seq(seq_id)
        L, bs = self.lens[seq_id], self.block_size
        new = -(-(L + n) // bs) - len(table)
        cow = n > 0 and L % bs != 0 and self.allocator.ref[table[-1]] > 1
        return new + int(cow)

    def reserve(self, seq_id, n: int, tokens: list[int] | None = None) -> torch.Tensor:
        """Make room for n more tokens; return their flat slots (n,) = block·bs + offset.

        Allocates blocks on demand and copies a shared last block before it is written
        (copy-on-write). Raises PoolExhaustedError before changing anything if the pool
        is short; the caller then writes K/V with `write` for every layer. `tokens` are
        the ids of the n new tokens; without them the sequence stops being tracked for
        prefix caching (its later blocks are never registered or shared).
        """
        table = self._seq(seq_id)
        check_positive_int("n", n, minimum=0)
        if tokens is not None and len(tokens) != n:
            raise ValueError(f"tokens has {len(tokens)} entries; expected n ({n})")
        need = self.blocks_needed(seq_id, n)
        if need > self.allocator.n_free:
            raise PoolExhaustedError(
                f"pool exhausted: sequence {seq_id!r} needs {need} blocks for {n} tokens, "
                f"{self.allocator.n_free} of {self.num_blocks} free")
        L, bs = self.lens[seq_id], self.block_size
        self._extend(seq_id, n, tokens)
        if n == 1:  # decode: one slot, no tensor indexing
            return torch.tensor([table[L // bs] * bs + L % bs])
        pos = torch.arange(L, L + n)
        blocks = torch.tensor(table, dtype=torch.long)[pos // bs]  # (n,)
        return blocks * bs + pos % bs  # (n,) flat slots

    def _extend(self, seq_id, n: int, tokens: list[int] | None) -> None:
        """The changes of a checked reserve: copy-on-write, new blocks, length, token
        ids, window release, the tensor mirror of the table."""
        table = self.tables[seq_id]
        L, bs = self.lens[seq_id], self.block_size
        first = len(table)  # first table entry this reserve changes
        if n and L % bs and self.allocator.ref[table[-1]] > 1:  # copy-on-write
            old = table[-1]
            (new,) = self.allocator.allocate(1)
            self.k_pool[:, :, new].copy_(self.k_pool[:, :, old])  # one block, all layers
            if not self.values_are_keys:
                self.v_pool[:, :, new].copy_(self.v_pool[:, :, old])
            self.allocator.decref(old)
            table[-1] = new
            first -= 1
        if L + n > len(table) * bs:  # new blocks
            table.extend(self.allocator.allocate(-(-(L + n) // bs) - len(table)))
        self.lens[seq_id] = L + n
        if tokens is None:
            if n:
                self.tracked[seq_id] = False  # positions from L on have no recorded ids
        elif self.tracked[seq_id]:
            self.tokens[seq_id].extend(map(int, tokens))
        if self.window is not None:
            self._release_out_of_window(table, L)  # released entries: never read again
        if first < len(table):
            self._rows.write(seq_id, table, first)

    def _release_out_of_window(self, table: list[int], first_query: int) -> None:
        """Release blocks none of whose positions a query at >= `first_query` sees
        (every position < first_query − W + 1)."""
        lo = first_query - self.window + 1  # oldest position still visible
        for j in range(max(0, lo) // self.block_size):
            if table[j] != EVICTED:
                self.allocator.decref(table[j])
                table[j] = EVICTED

    def live_blocks(self, seq_id) -> int:
        """Blocks the sequence holds (a windowed pool releases the ones out of window)."""
        return sum(b != EVICTED for b in self._seq(seq_id))

    def slots(self, seq_id, start: int, n: int) -> torch.Tensor:
        """Flat slots (n,) of already reserved positions start..start+n−1 of a sequence."""
        table = self._seq(seq_id)
        if not 0 <= start <= start + n <= self.lens[seq_id]:
            raise ValueError(f"positions [{start}, {start + n}) must lie within the "
                             f"{self.lens[seq_id]} reserved tokens of sequence {seq_id!r}")
        pos = torch.arange(start, start + n)
        return torch.tensor(table, dtype=torch.long)[pos // self.block_size] * \
            self.block_size + pos % self.block_size

    def batch_view(self, seq_ids: list) -> PagedBatchView:
        """Equal-length sequences as one batch behind the KVCache interface (see paged_view)."""
        from .paged_view import PagedBatchView

        return PagedBatchView(self, seq_ids)

    def write(self, layer_idx: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store k (Hkv, T, D), v (Hkv, T, Dv) of one layer at `slots` (T,) from `reserve`."""
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or \
                not 0 <= layer_idx < self.n_layers:
            raise ValueError(f"layer_idx ({layer_idx!r}) must be an int in [0, {self.n_layers})")
        check_tensor("slots", slots, 1)
        check_tensor("k", k, 3)
        check_tensor("v", v, 3)
        T = slots.shape[0]
        if k.shape != (self.n_kv_heads, T, self.head_dim) or \
                v.shape != (self.n_kv_heads, T, self.v_head_dim):
            raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must be "
                             f"({self.n_kv_heads}, {T}, {self.head_dim}) / "
                             f"({self.n_kv_heads}, {T}, {self.v_head_dim})")
        if k.dtype != self.dtype or v.dtype != self.dtype:
            raise TypeError(f"k/v dtype ({k.dtype}, {v.dtype}) must be {self.dtype}")
        for b in (slots // self.block_size).unique().tolist():
            if not 0 <= b < self.num_blocks or self.allocator.ref[b] < 1:
                raise ValueError(f"slots point into block {b}, which is not owned by any "
                                 "sequence (freed or never reserved); expected reserved slots")
        self.write_reserved(layer_idx, slots, k, v)

    def write_reserved(self, layer_idx: int, slots: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor) -> None:
        """`write` without its checks, for callers that reserved `slots` this step
        (the serving step's per-layer views): k (Hkv, T, D), v (Hkv, T, Dv)."""
        kf, vf = self._flat[layer_idx]  # (Hkv, NB·bs, D), (Hkv, NB·bs, Dv)
        kf.index_copy_(1, slots, k)
        if not self.values_are_keys:  # the latent pool stores [c_KV; k_R] once
            vf.index_copy_(1, slots, v)

    def register_full_blocks(self, seq_id) -> None:
        """Index the sequence's newly completed blocks for prefix caching (after writing)."""
        if not self.prefix_caching:
            return
        table, hashes, toks = self._seq(seq_id), self._hashed[seq_id], self.tokens[seq_id]
        bs = self.block_size
        full = min(self.lens[seq_id], len(toks)) // bs
        for i in range(len(hashes), full):
            block_tokens = tuple(toks[i * bs:(i + 1) * bs])
            h = block_hash(hashes[-1] if hashes else None, block_tokens)
            self.allocator.register(table[i], h, parent=table[i - 1] if i else None,
                                    tokens=block_tokens)
            hashes.append(h)

    # --- reading ---------------------------------------------------------------------
    def gather(self, seq_id, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A contiguous copy (Hkv, L, D) / (Hkv, L, Dv) of one sequence's K/V (for tests)."""
        from ..ops.paged import gather_sequence

        if EVICTED in self._seq(seq_id):
            raise ValueError(f"sequence {seq_id!r} released blocks that left its window; "
                             "expected a sequence whose every block is held")
        table = torch.tensor(self._seq(seq_id), dtype=torch.long)
        L = self.lens[seq_id]
        return (gather_sequence(self.k_pool[layer_idx], table, L),
                gather_sequence(self.v_pool[layer_idx], table, L))

    # --- preemption ------------------------------------------------------------------
    def swap_out(self, seq_id) -> SwappedSequence:
        """Copy the sequence's blocks to host memory and free them in the pool."""
        table = self._seq(seq_id)
        live = [j for j, b in enumerate(table) if b != EVICTED]
        idx = torch.tensor([table[j] for j in live], dtype=torch.long, device=self.device)
        k = self.k_pool.index_select(2, idx).to("cpu")
        v = k if self.values_are_keys else self.v_pool.index_select(2, idx).to("cpu")
        saved = SwappedSequence(k=k, v=v, length=self.lens[seq_id],
                                tokens=list(self.tokens[seq_id]), tracked=self.tracked[seq_id],
                                live=None if len(live) == len(table) else live)
        self.free(seq_id)
        return saved

    def swap_in(self, seq_id, saved: SwappedSequence) -> None:
        """Restore a swapped-out sequence into fresh blocks (refuses when the pool is short)."""
        if seq_id in self.tables:
            raise ValueError(f"seq_id ({seq_id!r}) already exists; cannot swap it in")
        n = saved.k.shape[2]
        blocks = self.allocator.allocate(n)  # raises before any write
        idx = torch.tensor(blocks, dtype=torch.long, device=self.device)
        self.k_pool.index_copy_(2, idx, saved.k.to(self.device))
        if not self.values_are_keys:
            self.v_pool.index_copy_(2, idx, saved.v.to(self.device))
        if saved.live is not None:  # a windowed sequence: released entries stay released
            table = [EVICTED] * -(-saved.length // self.block_size)
            for j, b in zip(saved.live, blocks):
                table[j] = b
            blocks = table
        self.tables[seq_id] = blocks
        self._rows.write(seq_id, blocks)
        self.lens[seq_id] = saved.length
        self.tokens[seq_id] = list(saved.tokens)
        self.tracked[seq_id] = saved.tracked
        self._hashed[seq_id] = []
        self.register_full_blocks(seq_id)

    # --- memory & invariants ---------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        return self._bytes_per_block

    @property
    def nbytes(self) -> int:
        """Bytes of the whole pool (allocated up front)."""
        return self.bytes_per_block * self.num_blocks

    @property
    def reserved_nbytes(self) -> int:
        """Bytes of blocks owned by sequences."""
        return self.bytes_per_block * self.allocator.n_owned

    @property
    def used_nbytes(self) -> int:
        """Bytes holding live tokens; a block shared by k sequences counts once."""
        per_token = self.bytes_per_block // self.block_size
        filled: dict[int, int] = {}
        for s, table in self.tables.items():
            L = self.lens[s]
            for i, b in enumerate(table):
                if b == EVICTED:
                    continue
                filled[b] = max(filled.get(b, 0), min(self.block_size, L - i * self.block_size))
        return per_token * sum(filled.values())

    def check_invariants(self) -> None:
        """Every block free xor owned; ref count = table references; tables fit lengths."""
        owners: dict[int, int] = {}
        for s, table in self.tables.items():
            if len(table) != -(-self.lens[s] // self.block_size):
                raise AssertionError(f"sequence {s!r}: {len(table)} blocks for length "
                                     f"{self.lens[s]}")
            if len(self.tokens[s]) > self.lens[s] or \
                    (self.tracked[s] and len(self.tokens[s]) != self.lens[s]):
                raise AssertionError(f"sequence {s!r}: {len(self.tokens[s])} token ids for "
                                     f"{self.lens[s]} positions (tracked={self.tracked[s]})")
            for b in table:
                if b != EVICTED:
                    owners[b] = owners.get(b, 0) + 1
        self.allocator.check_invariants(owners)

    def __repr__(self) -> str:
        return (f"PagedKVCache(n_layers={self.n_layers}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, num_blocks={self.num_blocks}, "
                f"block_size={self.block_size}, sequences={len(self.tables)}, "
                f"free_blocks={self.allocator.n_free})")
