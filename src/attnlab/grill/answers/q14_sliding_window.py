"""Q14: sliding-window attention — band mask, O(N·W) work, a KV cache capped at W."""
from __future__ import annotations

import torch

from ...layers.attention import Attention
from ...masks import EMPTY, sliding_window
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    W, N = 8, 40
    dense = sliding_window(W).to_dense(N, N)
    keys = dense.sum(-1)
    expect = torch.clamp(torch.arange(N) + 1, max=W)
    ev.measurements["keys per query (N = 40, W = 8), first 10 rows"] = keys[:10].tolist()
    ev.check("query i sees min(i + 1, W) keys, itself included", torch.equal(keys, expect),
             f"{keys.tolist()}")

    # work: non-empty 64x64 blocks of the band vs the causal triangle at N = 8192
    n, w, b = 8192, 512, 64
    band = (sliding_window(w).block_layout(n, n, b).kind != EMPTY).sum().item()
    nb = n // b
    tri = nb * (nb + 1) // 2  # tiles of the causal triangle
    ev.measurements["blocks computed at N = 8192, W = 512 (64x64 tiles): window vs causal"] = \
        (int(band), int(tri))
    ev.check("band work is at most (N/b)·(W/b + 1) tiles, over 5x fewer than causal",
             band <= (n // b) * (w // b + 1) and tri > 5 * band, f"{band} vs {tri}")

    # decode with a rolling buffer: 4·W tokens, memory capped, same answer as the band mask
    torch.manual_seed(ctx.seed)
    layer = Attention(32, 4, 2, window=W, kv_cache="rolling")
    x = torch.randn(1, 4 * W, 32)
    cache = layer.new_cache(1, 4 * W)
    with torch.no_grad():
        parallel = layer(x)
        steps = [layer(x[:, :3], cache)] + [layer(x[:, t:t + 1], cache) for t in range(3, 4 * W)]
    diff = float((torch.cat(steps, 1) - parallel).abs().max())
    ev.measurements["max |decode − parallel| over 4·W tokens"] = diff
    ev.measurements["rolling cache bytes (W slots, fp32)"] = cache.nbytes
    ev.check("token-by-token decode with a W-slot buffer equals the band-masked forward",
             diff < 1e-5, f"{diff:.2e}")
    ev.check("cache holds exactly W tokens of K and V",
             cache.nbytes == 2 * layer.n_kv_heads * layer.head_dim * W * 4
             and cache.stored_positions(0).min() == 3 * W, f"{cache.nbytes} B")
    ev.key_figure = (f"W = {W}: decode == band forward ({diff:.1e}); N = 8192, W = 512: "
                     f"{band} tiles vs {tri} for causal")
    return ev


QUESTION = Question(
    id=14,
    title=TITLES[14],
    short=(
        'Each query attends only to the W most recent keys, itself included, so the causal triangle '
        'becomes a band of width W. With a kernel that skips the empty tiles, work is O(N·W) instead '
        'of O(N²), and the KV cache becomes a ring buffer of W slots that stops growing; the price is '
        'no direct access beyond the window.'
    ),
    rubric=[
        KeyPoint("each query sees only the last W keys (a band mask)",
                 [r"last w", r"previous w", r"w (most )?recent", r"band", r"within (a |the )?window"],
                 formula="allowed(i, j) = [0 ≤ i − j < W]"),
        KeyPoint("compute O(N·W) instead of O(N²)",
                 [r"o\(n ?[·*]? ?w\)", r"n ?[·*×x] ?w", r"linear in n"]),
        KeyPoint("KV cache capped at W (ring / rolling buffer)",
                 [r"ring", r"rolling", r"capped", r"bounded", r"min\(t, ?w\)", r"mod w"],
                 formula="KV bytes per layer = 2 · H_kv · d · min(T, W) · bytes"),
        KeyPoint("off-by-one conventions (W keys incl. self; window_size = (W−1, 0))",
                 [r"incl", r"itself", r"w ?[-−] ?1", r"off[- ]by[- ]one"]),
        KeyPoint("loses direct access beyond the window",
                 [r"beyond the window", r"long[- ]range", r"further back", r"outside the window"]),
    ],
    answer=(
        "Sliding-window attention restricts each query to a fixed-length run of the most "
        "recent keys: position i may look at position j only when 0 ≤ i − j < W, i.e. at W "
        "keys counting itself. The causal triangle becomes a diagonal band of width W. "
        "Scores are only needed inside the band, so a kernel that skips empty tiles does "
        "O(N·W·d) work instead of O(N²·d), and at inference time a layer never needs a key "
        "older than W − 1 positions: the cache becomes a ring buffer of W slots (position p "
        "goes to slot p mod W), so its size stops growing once W tokens have been seen. "
        "What is lost is direct access to anything further back than the window; deeper "
        "layers recover some of it by relaying information (see Q15)."
    ),
    formulas=[
        "allowed(i, j) = [0 ≤ i − j < W]   (W keys including self)",
        "score work: Σ_i min(i+1, W) ≈ N·W  vs  N(N+1)/2 for causal",
        "KV bytes per layer = 2 · H_kv · d_head · min(T, W) · bytes",
        "FlashAttention window_size = (W − 1, 0);  FlexAttention: q_idx − kv_idx ≤ W − 1",
    ],
    seed_note=(
        "The seed lost its formulas (mask and costs). 'Previous W tokens' is ambiguous by "
        "one: attnlab (and Mistral, HF transformers ≥ 5) count the query itself among the W "
        "keys; FlashAttention's window_size=(W−1, 0) expresses the same thing. The saving "
        "is only real with a kernel that skips the masked tiles — a dense mask still costs N²."
    ),
    evidence=evidence,
)
