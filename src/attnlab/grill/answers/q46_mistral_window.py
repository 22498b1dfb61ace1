"""Q46: Mistral 7B's sliding window (W = 4096) — cache, span and saving from the config."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import kv_memory
from ...cache.rolling import RollingKVCache
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    cfg = get_config("mistral-7b")  # docs/sources.md: HF config; Mistral paper §2 (W = 4096)
    W = cfg.window
    ev.cite("Mistral 7B: sliding window W = 4096 in each of 32 layers, rolling buffer cache "
            "(slot i mod W); theoretical attention span ≈ 131K tokens; 8× cache saving at 32K",
            "Mistral 7B paper (Jiang et al. 2023), §2; HF config.json (sliding_window 4096); "
            "docs/sources.md")
    ev.measurements["window W; layers / KV heads / head_dim"] = (
        W, (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim))
    # one real rolling layer in Mistral's fp16 geometry, fed W + 100 tokens in chunks
    g = torch.Generator().manual_seed(ctx.seed)
    layer_cache = RollingKVCache(1, 1, cfg.n_kv_heads, cfg.head_dim, W, dtype=torch.float16)
    total, step = W + 100, 1024
    for t0 in range(0, total, step):
        n = min(step, total - t0)
        kv = torch.randn(1, cfg.n_kv_heads, n, cfg.head_dim, generator=g).half()
        layer_cache.update(0, kv, kv)
    held = sorted(int(p) for p in layer_cache.stored_positions(0) if p >= 0)
    ev.measurements[f"positions held after {total} tokens: first, last, count"] = (
        held[0], held[-1], len(held))
    ev.check(f"after {total} tokens the rolling cache holds exactly the last W", held ==
             list(range(total - W, total)), f"{held[0]}..{held[-1]} ({len(held)} positions)")
    per_layer = 2 * cfg.n_kv_heads * cfg.head_dim * W * 2  # K and V, fp16, evaluated here
    per_seq = layer_cache.nbytes * cfg.n_layers
    ev.measurements["rolling cache bytes per layer (fp16); per sequence, 32 layers"] = (
        layer_cache.nbytes, per_seq)
    ev.check("its storage is 2·H_kv·d·W·2 bytes per layer, whatever the sequence length",
             layer_cache.nbytes == per_layer, f"{layer_cache.nbytes:,} vs {per_layer:,} B")
    full32k = kv_memory(cfg.scaled(window=None), 32768).bytes_per_sequence
    win32k = kv_memory(cfg, 32768).bytes_per_sequence
    ev.measurements["fp16 KV at 32K tokens: full vs window (calculator)"] = (full32k, win32k)
    ev.check("the calculator's windowed cache equals the real rolling layers, 32768 / W times "
             "less than full attention's", win32k == per_seq and full32k * W == win32k * 32768,
             f"{full32k / win32k:.1f}×")
    span = cfg.n_layers * (W - 1) + 1
    ev.measurements["theoretical span L·(W−1)+1"] = span
    ev.key_figure = (f"W = {W}: {per_seq / 2**20:.0f} MiB/sequence cap "
                     f"({full32k / win32k:.0f}× less at 32K), span {span:,}")
    return ev


QUESTION = Question(
    id=46,
    title=TITLES[46],
    short=(
        "4096 tokens: each of Mistral 7B's 32 layers attends to itself and the previous 4095 "
        "tokens, with a rolling buffer that caps the cache at 4096 entries per layer."
    ),
    rubric=[
        KeyPoint("4096 tokens", [r"4096", r"4,096", r"4\s*k\b"], formula="W = 4096"),
        KeyPoint("rolling buffer caps the cache", [r"rolling", r"ring", r"cap", r"i mod w"]),
        KeyPoint("every one of the 32 layers (Mistral 7B v0.1)",
                 [r"32 layers", r"each (of .{0,20})?layers?", r"every layer", r"v0\.1"]),
    ],
    answer=(
        "Mistral 7B (v0.1) uses a 4096-token window in every one of its 32 layers: each "
        "query sees itself and the 4095 tokens before it. With a rolling buffer a sequence "
        "never keeps more than 4096 keys and values per layer — 512 MiB in fp16 with its "
        "8 KV heads of size 128 — so at its 32K maximum length the cache is 8 times smaller "
        "than full attention would need, while the stacked windows still span 131,041 "
        "positions in principle."
    ),
    formulas=[
        "W = 4096 keys (self included)",
        "cache/sequence = 2 · 32 · 8 · 128 · 4096 · 2 B = 512 MiB",
        "span = 32 · 4095 + 1 = 131,041",
    ],
    seed_note=(
        "The seed's 4096 is right for Mistral 7B v0.1. Later Mistral releases (v0.2 onward) "
        "and Mixtral's official config have no sliding window; copies that say 4096 for "
        "Mixtral are stale (docs/sources.md)."
    ),
    evidence=evidence,
)
