"""Up-front agreement and mask-aware peer selection (docs/conventions.md §8).

`agree` runs before any data moves: one all-gather of every rank's shapes, dtype, method,
block sizes and scale, one of its positions. `PeerPlan` then classifies, from the mask's
block layout on absolute positions, every (my queries, rank j's keys) pair and every
(rank i's queries, my keys) pair: a rank receives K/V only from ranks whose pair is not
empty and sends only to ranks that need it, so a sliding window W ≪ N/P talks to its
neighbour(s) and a document mask skips ranks holding other documents. The layouts are
hashed and compared across ranks (each pair is classified by both ranks that touch it):
a rank with a different mask fails up front, whatever the mask's name.
Cost: O(N²/P) predicate evaluations per rank at most (less with key bounds), O(P) metadata.
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch

from ..masks import EMPTY, FULL, PARTIAL, Mask
from ..ops.softmax.block_sparse import block_kinds, tile_plan
from ..ops.softmax.tiles import TilePlan, make_tile_mask
from .comm import Comm
from .sharding import check_layout, positions_from_lengths

METHODS = ("ring", "zigzag", "ulysses", "hybrid")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_META = ("batch", "q heads", "kv heads", "head_dim", "value head_dim", "dtype", "method",
         "layout", "mask given", "q_block", "kv_block", "scale", "ulysses_size",
         "q_pos given", "kv_pos given")


@dataclass(frozen=True)
class Setup:
    """What every rank agreed on, and every rank's positions."""

    rank: int
    world: int
    B: int
    Hq: int
    Hkv: int
    D: int
    Dv: int
    q_pos: list  # per rank, int64 (n_r,)
    kv_pos: list


def _scale_bits(scale: float | None) -> int:
    return -1 if scale is None else struct.unpack("<q", struct.pack("<d", float(scale)))[0]


def _check_pos(name: str, pos, n: int) -> torch.Tensor:
    pos = torch.as_tensor(pos)
    if pos.dtype.is_floating_point or pos.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer positions, got dtype {pos.dtype}")
    if pos.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(pos.shape)}")
    if n and int(pos.min()) < 0:
        raise ValueError(f"{name} must be >= 0, got min {int(pos.min())}")
    return pos.long().cpu()


def agree(comm: Comm, q, k, v, *, method: str, mask, scale, layout: str, q_pos, kv_pos,
          q_block: int, kv_block: int, ulysses_size: int = 0) -> Setup:
    """Gather and compare every rank's metadata, then every rank's positions."""
    B, Hq, nq, D = q.shape
    Hkv, nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    if q.dtype not in _DTYPES:
        raise TypeError(f"q dtype ({q.dtype}) must be one of {_DTYPES}")
    meta = [B, Hq, Hkv, D, Dv, _DTYPES.index(q.dtype), METHODS.index(method),
            ("contiguous", "zigzag").index(check_layout(layout)), int(mask is not None),
            q_block, kv_block, _scale_bits(scale), ulysses_size,
            int(q_pos is not None), int(kv_pos is not None)]
    mine = torch.tensor(meta + [nq, nk], dtype=torch.long)
    rows = torch.stack(comm.all_gather(mine, "meta", "agreement on shapes and method"))
    for i, name in enumerate(_META):
        col = rows[:, i]
        if not bool((col == col[0]).all()):
            bad = int((col != col[0]).nonzero()[0])
            raise ValueError(f"ranks disagree on {name}: rank 0 has {int(col[0])}, rank {bad} "
                             f"has {int(col[bad])}; every rank must call context_parallel_attention "
                             "with the same shapes (except the sequence), dtype, method and options")
    nqs, nks = rows[:, -2].tolist(), rows[:, -1].tolist()
    if q_pos is None and kv_pos is None and nqs != nks:
        raise ValueError(f"q shard lengths {nqs} differ from k/v shard lengths {nks}: pass "
                         "q_pos and kv_pos explicitly")
    qps = (positions_from_lengths(nqs, layout) if q_pos is None
           else _gather_pos(comm, _check_pos("q_pos", q_pos, nq), nqs))
    kps = (positions_from_lengths(nks, layout) if kv_pos is None
           else _gather_pos(comm, _check_pos("kv_pos", kv_pos, nk), nks))
    return Setup(comm.rank, comm.size, B, Hq, Hkv, D, Dv, qps, kps)


def _gather_pos(comm: Comm, pos: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    pad = torch.full((max(lengths),), -1, dtype=torch.long)
    pad[:pos.numel()] = pos
    got = comm.all_gather(pad, "meta", "exchange of positions")
    return [g[:n] for g, n in zip(got, lengths)]


def pair_kinds(mask, B: int, Hq: int, qp: torch.Tensor, kp: torch.Tensor, q_block: int,
               kv_block: int) -> torch.Tensor:
    """(n_q_blocks, n_kv_blocks) EMPTY/PARTIAL/FULL of queries `qp` against keys `kp`."""
    if qp.numel() == 0 or kp.numel() == 0:
        return torch.zeros(-(-qp.numel() // q_block), -(-kp.numel() // kv_block), dtype=torch.int8)
    return block_kinds(mask, B, Hq, qp.numel(), kp.numel(), q_block, kv_block, q_pos=qp, kv_pos=kp)


def layout_hash(kinds: torch.Tensor) -> int:
    """A 63-bit hash of a block layout (its shape and every block's kind)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(struct.pack("<2q", *kinds.shape))
    h.update(kinds.contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass(frozen=True)
class Pair:
    """My queries against rank `src`'s keys: the tiles to visit and the tile mask."""

    src: int
    plan: TilePlan
    tile_mask: object
    visible_blocks: int


@dataclass(frozen=True)
class PeerPlan:
    """Who sends to whom. `recv[j]` exists iff my queries see some key of rank j;
    `send` lists the ranks (≠ me) whose queries see some of my keys."""

    rank: int
    world: int
    recv: dict
    send: tuple

    def steps(self) -> list[int]:
        """Ring steps s (partner in = rank − s, out = rank + s) with any traffic or work."""
        P, r = self.world, self.rank
        return [s for s in range(P)
                if ((r - s) % P in self.recv) or ((r + s) % P in self.send)]


def build_peer_plan(comm: Comm, setup: Setup, mask, q_block: int, kv_block: int) -> PeerPlan:
    """Classify my row and column of (query rank, key rank) pairs; check the layouts agree
    across ranks (by hash); return the peers this rank talks to."""
    P, r, B, Hq = setup.world, setup.rank, setup.B, setup.Hq
    qp, kp = setup.q_pos, setup.kv_pos

    def kinds(i, j):
        return pair_kinds(mask, B, Hq, qp[i], kp[j], q_block, kv_block)

    row = [kinds(r, j) for j in range(P)]
    col = [row[r] if i == r else kinds(i, r) for i in range(P)]
    nxt = (r + 1) % P
    diag_next = kinds(nxt, nxt)  # the diagonal pair is otherwise seen by one rank only
    mine = torch.tensor([layout_hash(x) for x in row + col + [diag_next]], dtype=torch.long)
    allh = torch.stack(comm.all_gather(mine, "meta", "agreement on the mask"))  # (P, 2P+1)
    for a in range(P):
        for b in range(P):
            h_row, h_col = int(allh[a, b]), int(allh[b, P + a])
            if h_row != h_col:
                raise ValueError(
                    f"ranks disagree on the mask: rank {a} and rank {b} classify the blocks of "
                    f"(rank {a}'s queries, rank {b}'s keys) differently (layout hashes {h_row} "
                    f"!= {h_col}); every rank must pass the same mask")
        if int(allh[a, 2 * P]) != int(allh[(a + 1) % P, (a + 1) % P]):
            raise ValueError(f"ranks disagree on the mask: rank {a} and rank {(a + 1) % P} "
                             f"classify rank {(a + 1) % P}'s own blocks differently")
    recv = {}
    for j in range(P):
        visible = int((row[j] != EMPTY).sum())
        if visible:
            nq, nk = qp[r].numel(), kp[j].numel()
            plan = tile_plan(row[j], nq, nk, q_block, kv_block)
            tm = make_tile_mask(mask, B, Hq, nq, nk, qp[r], kp[j]) if bool(
                (row[j] == PARTIAL).any()) else None
            recv[j] = Pair(j, plan, tm, visible)
    send = tuple(i for i in range(P) if i != r and bool((col[i] != EMPTY).any()))
    return PeerPlan(r, P, recv, send)


def visible_pairs(mask, q_pos: torch.Tensor, kv_pos: torch.Tensor, block: int = 64) -> int:
    """Visible (query, key) pairs, counted from the block layout: FULL blocks by area,
    PARTIAL blocks by evaluating the predicate on their tile (batch row 0, head 0)."""
    if mask is None:
        return q_pos.numel() * kv_pos.numel()
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a Mask or None, got {type(mask).__name__}")
    kinds = pair_kinds(mask, 1, 1, q_pos, kv_pos, block, block)
    total = 0
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    for qb, kb in (kinds != EMPTY).nonzero().tolist():
        qt, kt = q_pos[qb * block:(qb + 1) * block], kv_pos[kb * block:(kb + 1) * block]
        if int(kinds[qb, kb]) == FULL:
            total += qt.numel() * kt.numel()
        else:
            total += int(mask(zero, zero, qt.view(1, 1, -1, 1), kt.view(1, 1, 1, -1)).sum())
    return total


def work_per_rank(mask, n: int, world: int, layout: str = "contiguous",
                  block: int = 64) -> list[int]:
    """Visible query–key pairs each rank computes (its queries against all N keys)."""
    from .sharding import all_positions

    keys = torch.arange(n)
    return [visible_pairs(mask, p, keys, block) for p in all_positions(n, world, layout)]


def imbalance(work: list[int]) -> float:
    """max / mean work per rank (1.0 = balanced)."""
    mean = sum(work) / len(work)
    return math.inf if mean == 0 else max(work) / mean
