"""BigBird ITC block mask (Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences").

The sequence is cut into blocks of `block_size` tokens. Query block `i` attends to
- **window** blocks: `window_blocks` blocks around it (bidirectional: centred, so the count
  must be odd; causal: itself and the `window_blocks - 1` blocks before it);
- **global** blocks (ITC: internal tokens act as globals): they attend to every block and
  every block attends to them;
- **random** blocks: `random_blocks` further blocks per query block, drawn without
  replacement from a seeded generator among the blocks that are neither window nor global
  (causal: only earlier blocks). A row with fewer candidates takes all of them, so no row is
  ever degenerate (the window always holds the block itself).
The causal variant additionally applies token-level causality `q >= k`.

The result is an ordinary `Mask` (a lookup in a (n_blocks, n_blocks) table), so it lowers to
dense and to a block layout like every other mask; the layout at the native block size is
built straight from the table in O(n_blocks²). Attention cost with a block-sparse kernel:
O(N · b · (window + globals + r) · D) instead of O(N² · D).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .._checks import check_positive_int
from .layout import EMPTY, FULL, PARTIAL, BlockLayout
from .predicates import Mask


@dataclass
class BigBirdConfig:
    """Shape of a BigBird pattern over `seq_len` tokens. `n_blocks` is derived."""

    seq_len: int
    block_size: int = 64
    window_blocks: int = 3
    global_blocks: Sequence[int] = (0,)
    random_blocks: int = 2
    causal: bool = False
    seed: int = 0
    n_blocks: int = field(init=False)

    def __post_init__(self) -> None:
        check_positive_int("seq_len", self.seq_len)
        check_positive_int("block_size", self.block_size)
        if self.block_size > self.seq_len:
            raise ValueError(f"block_size ({self.block_size}) must be <= seq_len "
                             f"({self.seq_len}): the block does not fit")
        self.n_blocks = -(-self.seq_len // self.block_size)  # the last block may be ragged
        check_positive_int("window_blocks", self.window_blocks)
        if not self.causal and self.window_blocks % 2 == 0:
            raise ValueError(f"window_blocks ({self.window_blocks}) must be odd for a "
                             "bidirectional BigBird mask (centred window)")
        if self.window_blocks > self.n_blocks:
            raise ValueError(f"window_blocks ({self.window_blocks}) must be <= n_blocks "
                             f"({self.n_blocks} blocks of {self.block_size} tokens)")
        check_positive_int("random_blocks", self.random_blocks, minimum=0)
        check_positive_int("seed", self.seed, minimum=0)
        g = list(self.global_blocks)
        for x in g:
            if isinstance(x, bool) or not isinstance(x, int):
                raise TypeError(f"global_blocks must hold ints, got {x!r}")
            if not 0 <= x < self.n_blocks:
                raise ValueError(f"global_blocks entry ({x}) must be in [0, {self.n_blocks})")
        if len(set(g)) != len(g):
            raise ValueError(f"global_blocks must not repeat, got {g}")
        self.global_blocks = tuple(sorted(g))


def bigbird_block_table(cfg: BigBirdConfig) -> dict[str, torch.Tensor]:
    """Boolean (n_blocks, n_blocks) tables `window`, `global`, `random` (disjoint) and `all`.

    Random blocks come from `torch.Generator().manual_seed(cfg.seed)`: same seed, same
    pattern. Row i draws min(r, #candidates) blocks without replacement.
    """
    nb = cfg.n_blocks
    i = torch.arange(nb).view(nb, 1)
    j = torch.arange(nb).view(1, nb)
    if cfg.causal:
        window = (j <= i) & (i - j < cfg.window_blocks)
    else:
        half = cfg.window_blocks // 2
        window = (i - j).abs() <= half
    is_g = torch.zeros(nb, dtype=torch.bool)
    if cfg.global_blocks:
        is_g[list(cfg.global_blocks)] = True
    glob = (is_g.view(nb, 1) | is_g.view(1, nb)) & ~window
    if cfg.causal:
        glob &= j <= i
    rand = torch.zeros(nb, nb, dtype=torch.bool)
    gen = torch.Generator().manual_seed(cfg.seed)
    for row in range(nb):
        if is_g[row] or cfg.random_blocks == 0:
            continue  # a global row already sees everything
        cand = ~(window[row] | glob[row])
        if cfg.causal:
            cand &= j[0] <= row
        idx = torch.nonzero(cand).flatten()
        if idx.numel() == 0:
            continue
        pick = idx[torch.randperm(idx.numel(), generator=gen)[:cfg.random_blocks]]
        rand[row, pick] = True
    return {"window": window, "global": glob, "random": rand, "all": window | glob | rand}


def bigbird(seq_len: int, block_size: int = 64, window_blocks: int = 3,
            global_blocks: Sequence[int] = (0,), random_blocks: int = 2, *,
            causal: bool = False, seed: int = 0) -> Mask:
    """BigBird ITC mask over absolute positions `[0, seq_len)` (see module docstring).

    The predicate looks up `table[q // b, k // b]` (and `q >= k` when causal); positions
    outside `[0, seq_len)` raise. `mask.bigbird` holds the config and block tables.
    """
    cfg = BigBirdConfig(seq_len, block_size, window_blocks, tuple(global_blocks),
                        random_blocks, causal, seed)
    tables = bigbird_block_table(cfg)
    table = tables["all"]
    b = cfg.block_size

    def fn(bi, hi, q, k):
        if q.numel() and k.numel() and (int(q.min()) < 0 or int(q.max()) >= seq_len
                          or int(k.min()) < 0 or int(k.max()) >= seq_len):
            raise ValueError(f"bigbird mask covers positions [0, {seq_len}) but was "
                             "evaluated outside it")
        out = table[q // b, k // b]
        return out & (q >= k) if causal else out

    name = (f"bigbird(N={seq_len}, b={b}, window={window_blocks}, globals="
            f"{list(cfg.global_blocks)}, random={random_blocks}, "
            f"{'causal' if causal else 'bidirectional'}, seed={seed})")
    mask = Mask(fn, name)
    mask.bigbird = (cfg, tables)  # type: ignore[attr-defined]
    base = native_layout(cfg, table)
    for f in (1, 2, 4):  # executors tile at b or a small multiple of it (e.g. 128 for b = 64)
        if f == 1 or b * f <= seq_len:
            lay = base if f == 1 else pool_layout(base, f)
            mask._layouts[(seq_len, seq_len, b * f, b * f, None, None, None)] = lay
    return mask


def native_layout(cfg: BigBirdConfig, table: torch.Tensor) -> BlockLayout:
    """The block layout at block size b straight from the table (equals `block_layout`).

    A visible block is FULL, except diagonal blocks under causality and blocks touching
    the ragged last block in the causal case, which are PARTIAL.
    """
    nb, b, n = cfg.n_blocks, cfg.block_size, cfg.seq_len
    kind = torch.where(table, FULL, EMPTY).to(torch.int8)
    if cfg.causal:
        diag = torch.arange(nb)
        # diagonal block: strictly upper entries are masked unless the block has 1 token
        last_len = n - (nb - 1) * b
        sizes = torch.full((nb,), b)
        sizes[-1] = last_len
        partial = sizes > 1
        kind[diag[partial], diag[partial]] = PARTIAL
    return BlockLayout(n, n, b, b, kind.view(1, 1, nb, nb), torch.arange(n), torch.arange(n))


def pool_layout(lay: BlockLayout, factor: int) -> BlockLayout:
    """The layout at block size `factor`·b from the one at b: a big block is EMPTY if all
    its sub-blocks are, FULL if all are FULL, else PARTIAL (exact; ragged edges allowed)."""
    kind = lay.kind[0, 0]  # (nb, nb)
    nb = kind.shape[0]
    n_big = -(-nb // factor)
    pad = n_big * factor - nb

    def pooled(fill: int) -> torch.Tensor:  # (n_big, factor, n_big, factor)
        k = torch.nn.functional.pad(kind, (0, pad, 0, pad), value=fill)
        return k.view(n_big, factor, n_big, factor)

    any_vis = (pooled(EMPTY) != EMPTY).any(3).any(1)
    all_full = (pooled(FULL) == FULL).all(3).all(1)
    big = torch.where(all_full, FULL, torch.where(any_vis, PARTIAL, EMPTY)).to(torch.int8)
    bs = lay.q_block * factor
    return BlockLayout(lay.nq, lay.nk, bs, bs, big.view(1, 1, n_big, n_big), lay.q_pos,
                       lay.kv_pos)
