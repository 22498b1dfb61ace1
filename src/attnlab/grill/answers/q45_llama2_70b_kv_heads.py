"""Q45: LLaMA-2 70B has 8 KV heads — read from its config, checked on a real cache."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import build_cache, format_bytes, kv_memory
from ...ops.softmax import attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    cfg = get_config("llama-2-70b")  # HF config.json: 80 layers, 64 heads, 8 KV heads, d 128
    ev.measurements["n_layers, n_heads, n_kv_heads, head_dim"] = (
        cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
    ev.measurements["group size n_heads / n_kv_heads"] = cfg.group_size
    ev.cite("Llama-2-70B: 64 query heads, num_key_value_heads 8, 80 layers, head size 128",
            "Llama-2-70B HF config.json; docs/sources.md")
    ev.cite("GQA is used by the 34B and 70B LLaMA-2 models; 7B and 13B use MHA (the 34B "
            "model was not released)", "Touvron et al. 2023, \"Llama 2\", Table 1; "
            "docs/sources.md")
    mem = kv_memory(cfg, 4096, batch=1, dtype="fp16")
    ev.measurements["fp16 bytes/token"] = mem.bytes_per_token
    ev.measurements["fp16 bytes per 4096-token sequence"] = mem.bytes_per_sequence

    # a real cache with all 80 layers (8 tokens, fp16): bytes per token from nbytes
    stack, _ = build_cache(cfg, context=8, batch=1, dtype="fp16")
    per_token = stack.nbytes // 8
    ev.measurements["real 80-layer cache: nbytes / tokens"] = per_token
    formula = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2  # evaluated here
    ev.check("a real 80-layer cache allocates 2·L·H_kv·d·2 bytes per token slot, and the "
             "calculator agrees", per_token == formula == mem.bytes_per_token
             and stack.n_layers == cfg.n_layers, f"{per_token:,} B vs {formula:,}")

    # the grouping rule with LLaMA-2-70B's head counts: query head h reads KV head h // 8
    g = torch.Generator().manual_seed(ctx.seed)
    B, N, D = 1, 3, 4
    q = torch.randn(B, 64, N, D, generator=g)
    k = torch.randn(B, 8, N, D, generator=g)
    v = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1).expand(B, 8, N, D)  # head j ≡ j
    out = attention(q, k, v, backend="reference")  # (B, 64, N, D)
    read = out[0, :, 0, 0].round().long()  # which KV head each query head read
    expect = torch.arange(64) // 8
    ev.measurements["KV head read by query heads 0, 7, 8, 63"] = [int(read[i]) for i in (0, 7, 8, 63)]
    ev.check("query head h reads KV head h // 8 (conventions §1 grouping)", bool((read == expect).all()),
             str(read.tolist()[:16]))
    ev.key_figure = (f"n_kv_heads 8 (64 query heads, groups of 8): {mem.bytes_per_token:,} B/token "
                     f"fp16, {format_bytes(mem.bytes_per_sequence)} per 4K sequence")
    return ev


QUESTION = Question(
    id=45,
    title=TITLES[45],
    short=(
        "8 key/value heads: LLaMA-2 70B uses grouped-query attention with 64 query heads in "
        "8 groups, an 8× smaller KV cache than MHA."
    ),
    rubric=[
        KeyPoint("8 KV heads", [r"\b8\b", r"eight"],
                 formula="group size = 64 / 8 = 8"),
        KeyPoint("grouped-query attention", [r"gqa", r"grouped[- ]query", r"group"]),
        KeyPoint("64 query heads → 8× smaller cache than MHA",
                 [r"64 query", r"8\s*(×|x|times)", r"eight times"],
                 formula="2 · 80 · 8 · 128 · 2 = 327,680 B/token (fp16)"),
    ],
    answer=(
        "LLaMA-2 70B uses grouped-query attention with 8 key/value heads for its 64 query "
        "heads, so each KV head serves a group of 8 query heads (both numbers are 8, which is "
        "why the one-word answer is ambiguous). The smaller LLaMA-2 models (7B, 13B) kept "
        "full multi-head attention; GQA was used for the 34B and 70B models (Llama 2 paper, "
        "Table 1; the 34B was never released), where the cache mattered most. "
        "With 80 layers and 128-wide heads that is 2·80·8·128 = 163,840 cached elements per "
        "token, 320 KiB in fp16, so a full 4096-token context costs 1.25 GiB per sequence "
        "instead of the 10 GiB that 64 KV heads would need."
    ),
    formulas=[
        "group size = n_heads / n_kv_heads = 64 / 8 = 8",
        "bytes/token = 2 · 80 · 8 · 128 · 2 = 327,680 (fp16)",
        "bytes/sequence(4096) = 327,680 · 4096 = 1.25 GiB",
    ],
    seed_note=(
        "The seed lost the symbol being asked about: the quantity is n_kv_heads (the number "
        "of KV heads, i.e. GQA groups) = 8; the group size, 64/8, is also 8. Elsewhere the "
        "seed implies GQA was a 70B-only choice; the Llama 2 paper's Table 1 lists GQA for "
        "the 34B model too."
    ),
    evidence=evidence,
)
