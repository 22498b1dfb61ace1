"""Sharding, positions and load balance of context parallelism (no processes spawned):
the layouts of docs/conventions.md §8 and the causal work formulas, counted in visible
query–key pairs from the mask's block layout."""
from __future__ import annotations

import pytest
import torch

from attnlab import masks as M
from attnlab.distributed import (
    all_positions,
    imbalance,
    shard,
    shard_ranges,
    unshard,
    visible_pairs,
    work_per_rank,
)
from attnlab.distributed.sharding import positions_from_lengths


def test_layouts_follow_the_floor_rule():
    assert shard_ranges(10, 3, 1) == [(3, 6)]
    assert shard_ranges(10, 2, 0, "zigzag") == [(0, 2), (7, 10)]
    assert shard_ranges(10, 2, 1, "zigzag") == [(2, 5), (5, 7)]
    for layout in ("contiguous", "zigzag"):
        for n, p in [(37, 3), (8, 4), (3, 4), (64, 2)]:
            pos = torch.cat(all_positions(n, p, layout))
            assert torch.equal(pos.sort().values, torch.arange(n))


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_shard_unshard_round_trip(layout):
    x = torch.randn(2, 3, 37, 4)
    parts = [shard(x, 3, r, layout) for r in range(3)]
    assert torch.equal(unshard(parts, all_positions(37, 3, layout)), x)


def test_lengths_must_match_the_layout():
    assert [p.tolist() for p in positions_from_lengths([2, 3], "contiguous")] == [[0, 1],
                                                                                  [2, 3, 4]]
    with pytest.raises(ValueError, match="not the contiguous sharding"):
        positions_from_lengths([3, 2], "contiguous")
    with pytest.raises(ValueError, match="layout"):
        positions_from_lengths([3, 2], "striped")


def test_visible_pairs_counts_the_dense_mask():
    qp, kp = torch.tensor([3, 4, 5, 20, 21]), torch.arange(30)
    for mask in [M.causal(), M.sliding_window(4), M.causal() & M.document(torch.arange(30) // 7)]:
        dense = mask.to_dense(5, 30, q_pos=qp, kv_pos=kp)
        assert visible_pairs(mask, qp, kp, block=4) == int(dense.sum())


@pytest.mark.parametrize("world", [2, 3, 4])
def test_contiguous_causal_work_formula(world):
    """Rank r (n = N/P queries) sees r·n² + n(n+1)/2 pairs: max/mean → (2P−1)/P."""
    n = 512
    work = work_per_rank(M.causal(), n * world, world, "contiguous")
    assert work == [r * n * n + n * (n + 1) // 2 for r in range(world)]
    mean = sum(work) / world
    assert imbalance(work) == pytest.approx(max(work) / mean)
    assert imbalance(work) == pytest.approx((2 * world - 1) / world, rel=2e-3)


def test_contiguous_causal_imbalance_values():
    assert imbalance(work_per_rank(M.causal(), 2048, 2)) == pytest.approx(1.5, rel=1e-3)
    assert imbalance(work_per_rank(M.causal(), 2048, 4)) == pytest.approx(1.75, rel=1e-3)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_zigzag_causal_is_balanced(world):
    """With N divisible by 2P every rank sees (2P−1)c² + c(c+1) pairs (c = N/2P): equal."""
    c = 96
    work = work_per_rank(M.causal(), 2 * world * c, world, "zigzag")
    assert work == [(2 * world - 1) * c * c + c * (c + 1)] * world
    assert imbalance(work) <= 1.05
    # N not divisible by 2P: balanced within a chunk row's worth
    assert imbalance(work_per_rank(M.causal(), 2 * world * c + 3, world, "zigzag")) <= 1.05
