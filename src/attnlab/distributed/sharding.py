"""Sequence sharding for context parallelism (docs/conventions.md §8).

Two layouts of N positions over P ranks, with integer (floor) division:
- **contiguous**: rank r holds positions [⌊r·N/P⌋, ⌊(r+1)·N/P⌋);
- **zigzag**: chunk c is [⌊c·N/(2P)⌋, ⌊(c+1)·N/(2P)⌋) and rank r holds chunks r and
  2P−1−r, so under a causal mask every rank sees the same number of query–key pairs
  (exactly when N is divisible by 2P).

Each rank passes the absolute positions it holds as `q_pos` / `kv_pos`; masks are
evaluated on them. O(N) per call.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout ({layout!r}) must be one of {LAYOUTS}")
    return layout


def shard_ranges(n: int, world: int, rank: int, layout: str = "contiguous") -> list[tuple[int, int]]:
    """The [start, end) position ranges rank `rank` holds, in increasing order."""
    check_positive_int("n", n, minimum=0)
    check_positive_int("world", world)
    check_positive_int("rank", rank, minimum=0)
    if rank >= world:
        raise ValueError(f"rank ({rank}) must be < world ({world})")
    check_layout(layout)
    if layout == "contiguous":
        return [(rank * n // world, (rank + 1) * n // world)]
    c = 2 * world

    def chunk(i):
        return (i * n // c, (i + 1) * n // c)

    return [chunk(rank), chunk(c - 1 - rank)]


def shard_positions(n: int, world: int, rank: int, layout: str = "contiguous") -> torch.Tensor:
    """Absolute positions (int64, increasing) that rank `rank` holds."""
    parts = [torch.arange(a, b) for a, b in shard_ranges(n, world, rank, layout)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def all_positions(n: int, world: int, layout: str = "contiguous") -> list[torch.Tensor]:
    """Positions of every rank, `[shard_positions(n, world, r, layout) for r]`."""
    return [shard_positions(n, world, r, layout) for r in range(world)]


def shard(x: torch.Tensor, world: int, rank: int, layout: str = "contiguous",
          dim: int = 2) -> torch.Tensor:
    """Rank `rank`'s shard of `x` along the sequence dimension `dim` (default 2: §1 layout)."""
    pos = shard_positions(x.shape[dim], world, rank, layout)
    return x.index_select(dim, pos.to(x.device))


def unshard(shards: list[torch.Tensor], positions: list[torch.Tensor], dim: int = 2) -> torch.Tensor:
    """Reassemble a sequence from every rank's shard and positions (any layout)."""
    if len(shards) != len(positions) or not shards:
        raise ValueError(f"shards ({len(shards)}) and positions ({len(positions)}) must be "
                         "equal, non-empty lists")
    pos = torch.cat([torch.as_tensor(p).long() for p in positions])
    n = pos.numel()
    if not torch.equal(pos.sort().values, torch.arange(n)):
        raise ValueError(f"positions must cover 0..{n - 1} exactly once")
    cat = torch.cat(shards, dim=dim)
    inv = torch.empty_like(pos)
    inv[pos] = torch.arange(n)
    return cat.index_select(dim, inv.to(cat.device))


def positions_from_lengths(lengths: list[int], layout: str) -> list[torch.Tensor]:
    """Default positions when only each rank's shard length is known: N = Σ lengths, and
    the lengths must be those of `layout` (else a ValueError naming the mismatch)."""
    check_layout(layout)
    n, world = sum(lengths), len(lengths)
    pos = all_positions(n, world, layout)
    expected = [p.numel() for p in pos]
    if list(lengths) != expected:
        raise ValueError(f"shard lengths {list(lengths)} are not the {layout} sharding of "
                         f"N = {n} over {world} ranks (expected {expected}); pass q_pos/kv_pos "
                         "explicitly or shard with attnlab.distributed.shard")
    return pos
