"""Lowering a mask predicate to a dense boolean mask and to a block layout.

Block layout: for every (query block, key block) pair, whether the block is EMPTY (all
masked: kernels skip it), PARTIAL (mixed: kernels apply the mask) or FULL (all visible:
kernels skip mask evaluation). Any block size; lengths need not divide it (the last block
is ragged and classified over its valid entries only).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_positive_int
from .memo import memo_for
from .predicates import Mask

EMPTY, PARTIAL, FULL = 0, 1, 2


def _positions(nq: int, nk: int, q_offset: int | None, q_pos, kv_pos):
    check_positive_int("nq", nq, minimum=0)
    check_positive_int("nk", nk, minimum=0)
    if q_pos is None:
        off = nk - nq if q_offset is None else q_offset
        q_pos = torch.arange(nq) + off
    else:
        q_pos = torch.as_tensor(q_pos).long()
        if q_pos.shape != (nq,):
            raise ValueError(f"q_pos must have shape ({nq},), got {tuple(q_pos.shape)}")
    if kv_pos is None:
        kv_pos = torch.arange(nk)
    else:
        kv_pos = torch.as_tensor(kv_pos).long()
        if kv_pos.shape != (nk,):
            raise ValueError(f"kv_pos must have shape ({nk},), got {tuple(kv_pos.shape)}")
    return q_pos, kv_pos


def _bh(mask: Mask, batch: int | None, heads: int | None):
    if mask.uses_batch and batch is None:
        raise ValueError(f"{mask.name} depends on the batch index: pass batch=")
    if mask.uses_head and heads is None:
        raise ValueError(f"{mask.name} depends on the head index: pass heads=")
    nb = batch if (batch is not None and mask.uses_batch) else 1
    nh = heads if (heads is not None and mask.uses_head) else 1
    return nb, nh


def _evaluate(mask: Mask, nb: int, nh: int, q_pos, kv_pos) -> torch.Tensor:
    b = torch.arange(nb).view(nb, 1, 1, 1)
    h = torch.arange(nh).view(1, nh, 1, 1)
    q = q_pos.view(1, 1, -1, 1)
    k = kv_pos.view(1, 1, 1, -1)
    out = mask(b, h, q, k)
    if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
        raise TypeError(f"{mask.name} must return a bool tensor, got "
                        f"{getattr(out, 'dtype', type(out).__name__)}")
    return out.expand(nb, nh, q.shape[2], k.shape[3])


def to_dense(mask: Mask, nq: int, nk: int, *, q_offset: int | None = None, q_pos=None,
             kv_pos=None, batch: int | None = None, heads: int | None = None) -> torch.Tensor:
    """Dense boolean mask: `(Nq, Nk)`, or `(B|1, H|1, Nq, Nk)` when batch/heads are given."""
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a Mask, got {type(mask).__name__}")
    q_pos, kv_pos = _positions(nq, nk, q_offset, q_pos, kv_pos)
    nb, nh = _bh(mask, batch, heads)
    dense = _evaluate(mask, nb, nh, q_pos, kv_pos)
    if batch is None and heads is None:
        return dense[0, 0]
    return dense


@dataclass(frozen=True)
class BlockLayout:
    """Per (query block, key block): EMPTY / PARTIAL / FULL.

    `kind` is int8 of shape `(Bm, Hm, n_q_blocks, n_kv_blocks)` with `Bm`, `Hm` equal to 1
    unless the mask depends on batch / head.
    """

    nq: int
    nk: int
    q_block: int
    kv_block: int
    kind: torch.Tensor
    q_pos: torch.Tensor = field(repr=False)
    kv_pos: torch.Tensor = field(repr=False)

    @property
    def n_q_blocks(self) -> int:
        return self.kind.shape[-2]

    @property
    def n_kv_blocks(self) -> int:
        return self.kind.shape[-1]

    def blocks(self, qb: int, b: int = 0, h: int = 0) -> tuple[list[int], list[int]]:
        """(full key-block indices, partial key-block indices) for query block `qb`."""
        row = self.kind[min(b, self.kind.shape[0] - 1), min(h, self.kind.shape[1] - 1), qb]
        return (torch.nonzero(row == FULL).flatten().tolist(),
                torch.nonzero(row == PARTIAL).flatten().tolist())

    def counts(self) -> dict[str, int]:
        k = self.kind
        return {"empty": int((k == EMPTY).sum()), "partial": int((k == PARTIAL).sum()),
                "full": int((k == FULL).sum())}

    def density(self) -> float:
        """Fraction of blocks that are not empty (the work a block-sparse kernel does)."""
        return float((self.kind != EMPTY).float().mean())

    def describe(self) -> str:
        chars = {EMPTY: "·", PARTIAL: "▒", FULL: "█"}
        rows = [(f"block layout {self.nq}x{self.nk}, blocks {self.q_block}x{self.kv_block} "
                 "(█ full, ▒ partial, · empty)")]
        for r in self.kind[0, 0].tolist():
            rows.append("".join(chars[c] for c in r))
        return "\n".join(rows)


def block_layout(mask: Mask, nq: int, nk: int, q_block: int, kv_block: int | None = None, *,
                 q_offset: int | None = None, q_pos=None, kv_pos=None,
                 batch: int | None = None, heads: int | None = None) -> BlockLayout:
    """Classify every (query block, key block) of `mask` as EMPTY / PARTIAL / FULL.

    Exact: a block is decided from the predicate on all of its valid entries, but only
    inside the mask's key bounds, so banded masks cost O(N·W) evaluations, not O(N²).
    Masks with `classify_blocks` (global tokens) are classified in O(Nq + Nk); an OR is
    classified from its parts (FULL if a part is FULL, EMPTY if every part is EMPTY) and
    the predicate is evaluated only on the remaining blocks, so `sliding_window(W) |
    global_tokens(g)` costs O(N·(W + |g|·block)), not the O(N²) of its key-bound hull.
    Layouts with default positions are memoised by the mask's structure (`masks.memo`).
    """
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a Mask, got {type(mask).__name__}")
    check_positive_int("q_block", q_block)
    kv_block = q_block if kv_block is None else kv_block
    check_positive_int("kv_block", kv_block)
    key = None
    if q_pos is None and kv_pos is None:
        store, prefix = memo_for(mask)
        key = prefix + (nq, nk, q_block, kv_block, q_offset, batch, heads)
        hit = store.get(key)
        if hit is not None:
            return hit
    q_pos, kv_pos = _positions(nq, nk, q_offset, q_pos, kv_pos)
    nb, nh = _bh(mask, batch, heads)
    if mask.classify_blocks is not None:
        full, empty = mask.classify_blocks(q_pos, kv_pos, q_block, kv_block)
        kind = _kinds(full, empty).expand(nb, nh, -1, -1).clone()
    elif mask.op == "|":
        kind = _or_kinds(mask, nb, nh, q_pos, kv_pos, q_block, kv_block, batch, heads)
    else:
        kind = _scan_kinds(mask, nb, nh, q_pos, kv_pos, q_block, kv_block)
    layout = BlockLayout(nq, nk, q_block, kv_block, kind, q_pos, kv_pos)
    if key is not None:
        store.put(key, layout, kind.numel())
    return layout


def _kinds(full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL)).to(torch.int8)


def _classify_row(mask: Mask, nb: int, nh: int, qp: torch.Tensor, kv_pos: torch.Tensor,
                  kbs: torch.Tensor, kv_block: int) -> torch.Tensor:
    """Kinds (nb, nh, len(kbs)) of key blocks `kbs` for the queries `qp` of one query
    block, from the predicate on every valid entry (a ragged last block counts only its
    valid keys)."""
    nk = kv_pos.shape[0]
    cols = kbs.view(-1, 1) * kv_block + torch.arange(kv_block)  # (n, kv_block) key slots
    valid = cols < nk
    tile = _evaluate(mask, nb, nh, qp, kv_pos[cols.clamp(max=nk - 1).flatten()])
    tile = tile.reshape(nb, nh, qp.shape[0], kbs.numel(), kv_block)  # (nb, nh, q, n, kv_block)
    if int(cols[-1, -1]) >= nk:  # a ragged last block: padding never decides a block
        anyb = (tile & valid).any(-1).any(2)  # (nb, nh, n)
        allb = (tile | ~valid).all(-1).all(2)
    else:
        anyb, allb = tile.any(-1).any(2), tile.all(-1).all(2)
    return _kinds(allb, ~anyb)


def _scan_kinds(mask: Mask, nb: int, nh: int, q_pos, kv_pos, q_block: int,
                kv_block: int) -> torch.Tensor:
    """Evaluate the predicate per query block, inside the mask's key bounds."""
    nq, nk = q_pos.shape[0], kv_pos.shape[0]
    n_qb, n_kb = -(-nq // q_block), -(-nk // kv_block)
    kind = torch.zeros(nb, nh, n_qb, n_kb, dtype=torch.int8)
    kv_sorted = bool((kv_pos[1:] >= kv_pos[:-1]).all()) if nk > 1 else True
    for qb in range(n_qb):
        qp = q_pos[qb * q_block:(qb + 1) * q_block]
        # key-block range that can hold visible keys (bounds are in positions; with sorted
        # slots, positions map monotonically to key blocks)
        kb_lo, kb_hi = 0, n_kb
        if kv_sorted and nk > 0:
            lo, hi = mask.kv_bounds(qp, int(kv_pos[-1]) + 1)
            lo_p, hi_p = int(lo.min()), int(hi.max())
            if hi_p <= lo_p:
                continue
            s_lo = int(torch.searchsorted(kv_pos, torch.tensor(lo_p)))
            s_hi = int(torch.searchsorted(kv_pos, torch.tensor(hi_p)))
            kb_lo, kb_hi = s_lo // kv_block, -(-s_hi // kv_block)
        if kb_hi <= kb_lo:
            continue
        kind[:, :, qb, kb_lo:kb_hi] = _classify_row(mask, nb, nh, qp, kv_pos,
                                                    torch.arange(kb_lo, kb_hi), kv_block)
    return kind


def _or_kinds(mask: Mask, nb: int, nh: int, q_pos, kv_pos, q_block: int, kv_block: int,
              batch, heads) -> torch.Tensor:
    """An OR from its parts' layouts; the predicate runs only on undecided blocks."""
    nq, nk = q_pos.shape[0], kv_pos.shape[0]
    parts = torch.stack([
        block_layout(p, nq, nk, q_block, kv_block, q_pos=q_pos, kv_pos=kv_pos,
                     batch=batch, heads=heads).kind.expand(nb, nh, -1, -1)
        for p in mask.parts])  # (n_parts, nb, nh, n_qb, n_kb)
    full, empty = (parts == FULL).any(0), (parts == EMPTY).all(0)
    kind = _kinds(full, empty)
    undecided = (~full & ~empty).any(1).any(0)  # (n_qb, n_kb): mixed parts, no FULL one
    for qb in undecided.any(1).nonzero().flatten().tolist():
        kbs = undecided[qb].nonzero().flatten()
        qp = q_pos[qb * q_block:(qb + 1) * q_block]
        kind[:, :, qb, kbs] = _classify_row(mask, nb, nh, qp, kv_pos, kbs, kv_block)
    return kind


def describe(mask: Mask, nq: int, nk: int | None = None, *, q_offset: int | None = None,
             max_size: int = 64) -> str:
    """ASCII grid of a small mask: rows are queries, columns keys (█ attend, · masked)."""
    nk = nq if nk is None else nk
    if nq > max_size or nk > max_size:
        raise ValueError(f"describe is for small masks: nq ({nq}) and nk ({nk}) must be "
                         f"<= max_size ({max_size})")
    dense = to_dense(mask, nq, nk, q_offset=q_offset,
                     batch=1 if mask.uses_batch else None, heads=1 if mask.uses_head else None)
    if dense.ndim == 4:
        dense = dense[0, 0]
    off = nk - nq if q_offset is None else q_offset
    width = len(str(nq + off - 1 if nq else 0))
    lines = [f"{mask.name}: {nq} queries x {nk} keys (█ attend, · masked)"]
    for i, row in enumerate(dense.tolist()):
        lines.append(f"{i + off:>{width}} " + "".join("█" if x else "·" for x in row))
    return "\n".join(lines)
