"""Q40: why combine sliding windows with global tokens — linear cost, two-hop reach."""
from __future__ import annotations

from ...analysis.receptive_field import RandomAttentionStack, measured_reach
from ...masks import EMPTY, global_tokens, sliding_window
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._sparse import band, window_plus_globals


def _tiles(mask, n, b=32):
    return int((mask.block_layout(n, n, b).kind != EMPTY).sum())


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    # cost: non-empty 32x32 tiles at growing N, window 64 with 2 global positions
    costs = {}
    for n in (512, 1024, 2048):
        m = sliding_window(64) | global_tokens([0, 1])
        costs[n] = (_tiles(m, n), (n // 32) ** 2)
    ev.measurements["tiles computed (window 64 + 2 globals) vs full, by N"] = costs
    growth = costs[2048][0] / costs[1024][0]
    full_growth = costs[2048][1] / costs[1024][1]
    ev.check("window + globals work grows linearly: ×2 per doubling of N (1.8–2.2), while "
             "full attention's tiles grow ×4", 1.8 <= growth <= 2.2 and full_growth == 4,
             f"×{growth:.2f} vs full ×{full_growth:.0f}")
    # reach: 2 layers of a radius-2 band vs the same plus one global token
    N = 40
    only = measured_reach(RandomAttentionStack(band(2), 2, seed=ctx.seed), N, 8, query=20)
    both = measured_reach(RandomAttentionStack(window_plus_globals(2, [0]), 2, seed=ctx.seed),
                          N, 8, query=20)
    ev.measurements["inputs reaching position 20 after 2 layers: band / band + global"] = \
        (int(only.sum()), int(both.sum()))
    ev.check("band alone: 2 layers reach 2·2·2 + 1 = 9 inputs", int(only.sum()) == 9,
             str(int(only.sum())))
    ev.check("with a global token: all inputs", bool(both.all()), str(int(both.sum())))
    ev.key_figure = (f"tiles x{growth:.2f} per doubling of N; reach 9 → {int(both.sum())} "
                     "inputs with one global")
    return ev


QUESTION = Question(
    id=40,
    title=TITLES[40],
    short=(
        "Each covers the other's weakness: the window keeps cost and cache linear, O(N·W), "
        "but its reach grows only W−1 per layer; a few global tokens that attend to and are "
        "attended by everything connect any two positions in two hops, for only O(N·G) more "
        "work. That is Longformer's and BigBird's recipe."
    ),
    rubric=[
        KeyPoint("window: linear cost, bounded cache", [r"linear", r"o\(\s*n\s*(·|\*)?\s*w",
                                                          r"bounded", r"cheap"],
                 formula="cost = O(N·(W + G)·d)"),
        KeyPoint("window alone: reach grows slowly with depth",
                 [r"receptive field", r"reach", r"w\s*[-−]\s*1 per layer", r"long[- ]range"]),
        KeyPoint("globals link any two positions in two hops",
                 [r"two hops?", r"2 hops?", r"broadcast", r"hub", r"every (token|position)"]),
        KeyPoint("Longformer / BigBird", [r"longformer", r"bigbird", r"big bird"]),
    ],
    answer=(
        "Each half covers the other's weakness. A window alone is cheap — O(N·W) scores and "
        "a cache capped at W — but its reach grows only by W − 1 per layer. Global tokens "
        "alone cannot model local detail. Together, every pair of positions is linked in "
        "two hops through a global, so long-range information has a short path from the "
        "first layers on, while the cost stays linear: each of the G globals adds one row "
        "and one column of scores, O(N·(W+G)) in total. This is Longformer's recipe (and "
        "part of BigBird's); the price is choosing which positions are global and a kernel "
        "that handles the irregular pattern. In causal decoders the idea survives as "
        "attention sinks plus windows, or as interleaved full-attention layers."
    ),
    formulas=[
        "cost = O(N·(W + G)·d) scores, vs O(N²·d)",
        "path length between any two positions: ≤ 2 hops via a global",
        "window-only reach after L layers: L·(W−1)+1",
    ],
    seed_note=(
        "The seed's reasoning is sound but its complexity formula was lost; the 'broadcast "
        "channel' works both ways only in bidirectional models — causally a global collects "
        "only from earlier positions."
    ),
    evidence=evidence,
)
