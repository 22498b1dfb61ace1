"""What one serving step asks of a paged pool: a batched reserve and the step's tensors.

`PagedSteps` (a part of `PagedKVCache`): `reserve_many` reserves the next tokens of a
whole batch after one exact check (token ids on every ask; copy-on-write of a shared last
block counted once per copy, `blocks_needed_many`), and `step_tensors` gives the forward
its block tables, lengths and write slots in one pass over the sequences.

The block tables as one persistent tensor:

`PagedKVCache` keeps each sequence's block table as a Python list (the bookkeeping); the
decode kernels want a (B, W) long tensor. Building that tensor from the lists costs
O(B·W) Python work every step, although a decode step changes at most one entry per
sequence every `block_size` steps. `BlockTableRows` mirrors the lists in one
preallocated (rows, width) tensor, one row per live sequence, written only where a
table changes (`write(seq, table, start)`); a step's tables are one `index_select` of
its rows. Entries past a table's end, and entries of blocks a windowed pool released,
hold some block id in [0, num_blocks) that is never read (the kernels read positions
< length, windowed reads only positions inside the window). Rows and width grow by
doubling. Cost: a write is O(entries written); `select` is O(B·W) in one tensor copy.
"""
from __future__ import annotations

from array import array
from collections.abc import Hashable

import torch

from .._checks import check_positive_int
from .block_allocator import PoolExhaustedError


def long_tensor(values: list[int]) -> torch.Tensor:
    """A host int64 tensor (n,) of Python ints, through a buffer: several times cheaper
    than `torch.tensor(list)` for the few dozen ids a serving step passes each time."""
    if not values:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(array("q", values), dtype=torch.long)


class BlockTableRows:
    """Persistent (rows, width) long tensor of block tables (see the module docstring)."""

    def __init__(self, rows: int = 8, width: int = 8, device: torch.device | str = "cpu"):
        self.t = torch.zeros((rows, width), dtype=torch.long, device=device)
        self.row: dict[Hashable, int] = {}
        self._free: list[int] = list(range(rows - 1, -1, -1))

    def _grow(self, rows: int, width: int) -> None:
        old = self.t
        R, W = old.shape
        self.t = torch.zeros((max(rows, R), max(width, W)), dtype=torch.long,
                             device=old.device)
        self.t[:R, :W] = old
        self._free.extend(range(self.t.shape[0] - 1, R - 1, -1))

    def write(self, seq_id: Hashable, table: list[int], start: int = 0) -> None:
        """Mirror table[start:] into the sequence's row (a new sequence gets a row).
        Negative entries (released blocks) are written as block 0: never read."""
        r = self.row.get(seq_id)
        if r is None:
            if not self._free:
                self._grow(2 * self.t.shape[0], 0)
            r = self.row[seq_id] = self._free.pop()
            start = 0
        n = len(table)
        if n > self.t.shape[1]:
            self._grow(0, max(n, 2 * self.t.shape[1]))
        if n - start == 1:  # one appended or copied-on-write block: no list → tensor
            self.t[r, start] = max(table[start], 0)
        elif n > start:
            self.t[r, start:n] = long_tensor([max(b, 0) for b in table[start:]])

    def drop(self, seq_id: Hashable) -> None:
        self._free.append(self.row.pop(seq_id))

    def select(self, seq_ids: list, width: int) -> torch.Tensor:
        """(B, max(1, width)) block tables of `seq_ids` (a copy)."""
        rows = long_tensor([self.row[s] for s in seq_ids])
        return self.t.narrow(1, 0, max(1, width)).index_select(0, rows)  # (B, width)


class PagedSteps:
    """Batch operations of `PagedKVCache` for one serving step (see the module
    docstring); they read and change the pool's tables, lengths and token ids."""

    def blocks_needed_many(self, asks: list[tuple]) -> int:
        """Fresh blocks reserving n tokens for each (seq_id, n, ...) of `asks`, in order,
        takes.

        A last block shared by several of them is copied by all but the last to write
        (its ref count drops with each copy), so copy-on-write is counted as the
        reserves will really do it, not once per sharer."""
        bs, ref, lens = self.block_size, self.allocator.ref, self.lens
        refs: dict[int, int] = {}
        need = 0
        for a in asks:
            s, n = a[0], a[1]
            table = self._seq(s)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                check_positive_int("n", n, minimum=0)  # raises, naming n
            L = lens[s]
            need += -(-(L + n) // bs) - len(table)
            if n > 0 and L % bs:
                last = table[-1]
                r = refs.get(last, ref[last])
                if r > 1:
                    need += 1
                    refs[last] = r - 1
        return need

    def reserve_many(self, asks: list[tuple]) -> None:
        """`reserve` for every (seq_id, n, tokens) of `asks`, in order, after one check
        that the pool holds them all (copy-on-write counted as `blocks_needed_many`);
        refuses (PoolExhaustedError) before changing anything. Every ask carries its n
        token ids; the slots are not returned (a step reads them with `step_tensors`)."""
        seen = set()
        for s, n, tokens in asks:
            if tokens is None or len(tokens) != n or s in seen:
                raise ValueError(f"sequence {s!r}: expected the ids of its n ({n}) new tokens "
                                 f"(got {tokens!r}) and one ask per sequence")
            seen.add(s)
        need = self.blocks_needed_many(asks)
        if need > self.allocator.n_free:
            raise PoolExhaustedError(
                f"pool exhausted: {len(asks)} sequences need {need} blocks, "
                f"{self.allocator.n_free} of {self.num_blocks} free")
        lens, ids, tracked, tables = self.lens, self.tokens, self.tracked, self.tables
        bs, ref, plain = self.block_size, self.allocator.ref, self.window is None
        for s, n, tokens in asks:
            L = lens[s]
            if n == 1 and plain and L % bs and ref[tables[s][-1]] == 1:
                lens[s] = L + 1  # decode into its own, not full, last block: nothing else
                if tracked[s]:  # changes (no block, no copy, no release, same table)
                    ids[s].append(int(tokens[0]))
            else:
                self._extend(s, n, tokens)

    def step_tensors(self, seq_ids: list, n: int) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor, int]:
        """What one forward over `seq_ids` needs, each of whose last n positions were just
        reserved, in one pass over the sequences: block tables (B, W) (`tables_tensor`),
        lengths (B,), the flat slots (B·n,) of those n positions (where their K/V go) and
        the longest length."""
        bs, rows, lens, slots, width = self.block_size, [], [], [], 1
        for s in seq_ids:
            table, L = self._seq(s), self.lens[s]
            if not 0 < n <= L:
                raise ValueError(f"n ({n}) must lie in [1, {L}], the reserved tokens of "
                                 f"sequence {s!r}")
            rows.append(self._rows.row[s])
            lens.append(L)
            width = max(width, len(table))
            if n == 1:  # decode: one slot
                slots.append(table[(L - 1) // bs] * bs + (L - 1) % bs)
            else:
                slots.extend(table[p // bs] * bs + p % bs for p in range(L - n, L))
        tables = self._rows.t.narrow(1, 0, width).index_select(0, long_tensor(rows))
        return tables, long_tensor(lens), long_tensor(slots).to(self.device), \
            max(lens, default=0)

    def tables_tensor(self, seq_ids: list) -> torch.Tensor:
        """(B, max_blocks) long block tables from the persistent mirror (`BlockTableRows`):
        entries past a row's end or of released blocks hold in-range ids, never read."""
        width = max(len(self._seq(s)) for s in seq_ids)
        return self._rows.select(seq_ids, width)  # (B, width), kept up to date by reserve
