"""The block tables of a paged pool kept as one persistent tensor, for the kernels.

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
