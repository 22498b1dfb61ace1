"""Q19: BigBird — window, global and random blocks; linear block count; exact attention."""
from __future__ import annotations

import torch

from ...analysis.receptive_field import RandomAttentionStack, graph_reach, measured_reach
from ...masks import EMPTY, bigbird
from ...ops.softmax import attention, attention_reference
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    # ITC defaults of the paper's base model: 64-token blocks, 3 window, 2 global, 3 random
    b, w, glob, r = 64, 3, (0, 1), 3
    blocks = {}
    for n in (1024, 2048, 4096):
        lay = bigbird(n, b, w, glob, r, seed=ctx.seed).block_layout(n, n, b)
        blocks[n] = int((lay.kind != EMPTY).sum())
    # rows of non-global query blocks: w + g + r visible blocks each (2 global rows are full)
    per_row = {n: (blocks[n] - 2 * (n // b)) / (n // b - 2) for n in blocks}
    ev.measurements["non-empty 64x64 blocks by N"] = blocks
    ev.measurements["blocks per non-global query block"] = {n: round(x, 2) for n, x in per_row.items()}
    ev.check("a non-global query block sees at most w + g + r = 8 blocks (fewer only where "
             "its window overlaps a global or the sequence edge)",
             all(7.5 < x <= w + len(glob) + r for x in per_row.values()), str(per_row))
    ev.check("blocks grow linearly in N (per-row count ≈ constant)",
             abs(blocks[4096] / blocks[2048] - 2) < 0.25, f"x{blocks[4096] / blocks[2048]:.2f}")
    _, tables = bigbird(512, b, w, glob, r, seed=ctx.seed).bigbird
    ev.check("random blocks are disjoint from window and global blocks",
             not bool((tables["random"] & (tables["window"] | tables["global"])).any()), "")
    # exactness of attention under the mask
    n = 256
    m = bigbird(n, 16, w, glob, r, causal=True, seed=ctx.seed)
    g = torch.Generator().manual_seed(ctx.seed)
    q, k, v = (torch.randn(1, 4, n, 32, generator=g) for _ in range(3))
    backend = "block_sparse"
    diff = float((attention(q, k, v, mask=m, backend=backend)
                  - attention_reference(q, k, v, mask=m)).abs().max())
    ev.measurements[f"max |{backend} − reference|, causal BigBird N = 256"] = diff
    ev.check("BigBird attention is exact against the dense reference", diff < 1e-5, f"{diff:.1e}")
    # reach: globals make the graph diameter 2 (bidirectional)
    mb = bigbird(128, 8, 3, (0,), 1, seed=ctx.seed)
    two = measured_reach(RandomAttentionStack(mb, 2, seed=ctx.seed), 128, 8)
    ev.measurements["inputs reaching the last output in 1 / 2 layers (N = 128)"] = (
        int(graph_reach(mb, 1, 128).sum()), int(two.sum()))
    ev.check("two layers connect every pair through the global block", bool(two.all()), "")
    ev.key_figure = (f"{blocks[4096]} of {(4096 // b) ** 2} blocks at N = 4096 "
                     f"({per_row[4096]:.2f} per ordinary query block); exact ({diff:.0e})")
    return ev


QUESTION = Question(
    id=19,
    title=TITLES[19],
    short=(
        'BigBird is block-sparse attention where each query block sees a few neighbouring blocks, a '
        'few global blocks and a few random blocks. The count per block is constant, so cost is '
        'linear in N and runs as dense tiles; with the global tokens the paper proves it keeps full '
        "attention's expressiveness, universal approximation and Turing completeness. It served "
        'long-document encoders, while decoder LLMs kept full attention with fused kernels.'
    ),
    rubric=[
        KeyPoint("three parts: window + global + random",
                 [r"random", r"window|local|neighbo", r"global"]),
        KeyPoint("block-sparse: dense b×b tiles",
                 [r"block", r"tile"]),
        KeyPoint("linear cost in N",
                 [r"linear", r"o\(n\)", r"constant (number|count) (of )?blocks"],
                 formula="cost = O(N · b · (w + g + r) · d)"),
        KeyPoint("theory: universal approximator, Turing complete (needs globals)",
                 [r"universal", r"turing", r"expressiv"]),
        KeyPoint("less used than full attention + FlashAttention in LLMs",
                 [r"flash ?attention", r"full attention", r"encoders?", r"long[- ]document"]),
    ],
    answer=(
        "BigBird (Zaheer et al., NeurIPS 2020) is a block-sparse pattern with three parts, "
        "each query block of b tokens attending to: a few neighbouring blocks (the window), "
        "a few global blocks that attend to and are attended by everything, and r blocks "
        "chosen at random. Blocks keep the work in dense b×b tiles that hardware handles "
        "well, and the number of tiles per query block is constant, so cost is linear in "
        "N. The random blocks make the attention graph an expander-like graph with short "
        "paths; with the global tokens the authors prove the sparse model remains a "
        "universal approximator of sequence functions and Turing complete, like full "
        "attention. ITC makes existing tokens global, ETC adds extra global tokens. In "
        "practice it mattered for long-document encoders (QA, summarisation, genomics); "
        "decoder LLMs moved to full attention with fused kernels, where a fixed random "
        "pattern is awkward to cache and to train at scale."
    ),
    formulas=[
        "blocks per query block = w + g + r  (base model: 3 + 2 + 3)",
        "cost = O(N · b · (w + g + r) · d)  — linear in N",
        "graph diameter ≤ 2 with a global block",
    ],
    seed_note=(
        "The seed's description is fine in outline; it omits the block structure (why it is "
        "fast on accelerators), the ITC/ETC split, and that the theory (universal "
        "approximation, Turing completeness) relies on the global tokens, not the random "
        "blocks alone."
    ),
    evidence=evidence,
)
