"""Q46: Mistral 7B's sliding window (W = 4096) — cache, span and saving from the config."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import kv_memory
from ...analysis.receptive_field import theoretical_receptive_field
from ...cache.rolling import RollingKVCache
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    cfg = get_config("mistral-7b")  # docs/sources.md: HF config; Mistral paper §2 (W = 4096)
    ev.measurements["window W"] = cfg.window
    ev.measurements["layers / KV heads / head_dim"] = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
    ev.check("config window is 4096", cfg.window == 4096, str(cfg.window))
    # one real rolling layer in fp16 geometry (float16 storage): W slots of K and V
    layer_cache = RollingKVCache(1, 1, cfg.n_kv_heads, cfg.head_dim, cfg.window,
                                 dtype=torch.float16)
    per_seq = layer_cache.nbytes * cfg.n_layers
    ev.measurements["rolling cache bytes per layer (fp16)"] = layer_cache.nbytes
    ev.measurements["per sequence, 32 layers"] = per_seq
    ev.check("32 rolling layers hold 512 MiB per sequence (docs/sources.md)", per_seq == 512 * 2**20,
             f"{per_seq / 2**20:.1f} MiB")
    full32k = kv_memory(cfg.scaled(window=None), 32768).bytes_per_sequence
    win32k = kv_memory(cfg, 32768).bytes_per_sequence
    ev.measurements["fp16 KV at 32K tokens: full vs window"] = (full32k, win32k)
    ev.check("8x saving at 32K tokens (docs/sources.md)", full32k == 8 * win32k == 8 * per_seq,
             f"{full32k / win32k:.1f}x")
    span = theoretical_receptive_field(cfg.n_layers, cfg.window)
    ev.measurements["theoretical span L·(W−1)+1"] = span
    ev.check("span 131,041", span == 131_041, str(span))
    ev.key_figure = f"W = 4096: 512 MiB/sequence cap (8x less at 32K), span {span:,}"
    return ev


QUESTION = Question(
    id=46,
    title=TITLES[46],
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
