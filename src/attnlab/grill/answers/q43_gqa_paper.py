"""Q43: grouped-query attention comes from Ainslie et al. 2023 — Llama-2-70B's GQA-8."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import build_cache, kv_memory
from ...layers.attention import Attention
from ...layers.convert import mha_to_gqa
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def _tie_within_groups(layer: Attention, groups: int) -> None:
    """Make the K/V heads inside each group identical (a model GQA-g represents exactly)."""
    H, D = layer.n_kv_heads, layer.head_dim
    with torch.no_grad():
        for proj in (layer.k_proj, layer.v_proj):
            w = proj.weight.view(groups, H // groups, D, -1)  # (G, heads per group, D, d_model)
            w.copy_(w[:, :1].expand_as(w))


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    cfg = get_config("llama-2-70b")  # 64 query heads, 8 KV heads, d_head 128 (docs/sources.md)
    rows = {}
    for label, v in (("MHA", cfg.variant("mha")), ("GQA-8", cfg), ("MQA", cfg.variant("mqa"))):
        rows[label] = kv_memory(v, 4096, batch=1, dtype="fp16")
    ev.measurements["Llama-2-70B fp16 bytes/token MHA / GQA-8 / MQA"] = tuple(
        m.bytes_per_token for m in rows.values())
    ev.measurements["fp16 bytes/sequence at 4096, MHA / GQA-8 / MQA"] = tuple(
        m.bytes_per_sequence for m in rows.values())
    red = rows["MHA"].bytes_per_token / rows["GQA-8"].bytes_per_token
    ev.measurements["MHA ÷ GQA-8 bytes"] = red

    small = cfg.scaled(n_layers=2)  # same per-layer geometry, 2 layers
    variants = {64: small.variant("mha"), 8: small, 1: small.variant("mqa")}
    real = {g: build_cache(v, context=16, batch=1, dtype="fp32")[0].nbytes
            for g, v in variants.items()}
    ev.measurements["real cache nbytes (2 layers, 16 tokens) for 64 / 8 / 1 KV heads"] = tuple(
        real.values())
    ev.check("real caches scale with the number of KV heads (64 : 8 : 1)",
             real[64] == 8 * real[8] == 64 * real[1], str(tuple(real.values())))

    # the paper's conversion: mean-pool K/V heads within each group (mha_to_gqa)
    mha = Attention(64, 8, 8, 8)
    x = torch.randn(2, 13, 64)
    with torch.no_grad():
        ref = mha(x)
        err_h = float((mha_to_gqa(mha, 8)(x) - ref).abs().max())
        pool_err = {g: float((mha_to_gqa(mha, g)(x) - ref).abs().max()) for g in (4, 2, 1)}
        _tie_within_groups(mha, 2)  # heads 0-3 share K/V, heads 4-7 share K/V
        err_tied = float((mha_to_gqa(mha, 2)(x) - mha(x)).abs().max())
    ev.measurements["GQA-8 (=MHA) conversion error"] = err_h
    ev.measurements["mean-pooled GQA-g vs MHA output error, untrained heads (g = 4, 2, 1)"] = pool_err
    ev.measurements["GQA-2 conversion error when heads are tied within groups"] = err_tied
    ev.check("GQA with H groups is MHA (conversion is exact)", err_h < 1e-6, f"{err_h:.1e}")
    ev.check("mean-pooling is exact when the heads of a group already agree", err_tied < 1e-5,
             f"{err_tied:.1e}")
    ev.check("pooling distinct heads changes the output (hence uptraining)",
             min(pool_err.values()) > 1e-3, str({g: f"{e:.2e}" for g, e in pool_err.items()}))
    ev.cite("grouped-query attention introduced; uptraining converts an MHA checkpoint by "
            "mean-pooling the K/V heads of each group, then trains α = 5% of the original steps",
            "Ainslie et al. 2023, \"GQA: Training Generalized Multi-Query Transformer Models "
            "from Multi-Head Checkpoints\", EMNLP, §2; docs/sources.md")
    ev.cite("T5-XXL, 5% uptraining: average score / time per sample MHA 47.2 / 1.51 s, "
            "GQA-8 47.1 / 0.28 s, MQA 46.6 / 0.24 s", "Ainslie et al. 2023, Table 1; "
            "docs/sources.md")
    ev.key_figure = (f"Llama-2-70B GQA-8: {rows['GQA-8'].bytes_per_token:,} B/token vs MHA "
                     f"{rows['MHA'].bytes_per_token:,} (÷{red:.0f}); mean-pool exact on tied heads")
    return ev


QUESTION = Question(
    id=43,
    title=TITLES[43],
    short=(
        "Ainslie et al., \"GQA: Training Generalized Multi-Query Transformer Models from "
        "Multi-Head Checkpoints\" (EMNLP 2023): query heads split into groups that share a "
        "K/V head, plus uptraining an MHA checkpoint by mean-pooling its K/V heads."
    ),
    rubric=[
        KeyPoint("Ainslie et al. 2023", [r"ainslie", r"2023"]),
        KeyPoint("groups of query heads share one K/V head",
                 [r"group", r"between mha and mqa", r"interpolat"],
                 formula="cache reduction = H_q / g"),
        KeyPoint("uptraining by mean-pooling K/V heads (~5% of steps)",
                 [r"uptrain", r"mean[- ]pool", r"5\s*%"]),
    ],
    answer=(
        "Grouped-query attention is from Ainslie, Lee-Thorp, de Jong, Zemlyanskiy, Lebrón and "
        "Sanghai, \"GQA: Training Generalized Multi-Query Transformer Models from Multi-Head "
        "Checkpoints\" (EMNLP 2023). It sits between the two extremes: the h query heads are "
        "split into g groups and each group shares one key/value head, so GQA-1 is MQA and "
        "GQA-h is MHA, and the cache shrinks by h/g. The paper's second contribution is "
        "uptraining: an existing MHA checkpoint is converted by averaging the key and value "
        "projection heads inside each group (better than keeping one head or starting "
        "fresh) and then trained for about 5% of the original steps. On T5-XXL, GQA-8 "
        "nearly matched MHA's quality at close to MQA's decoding speed. Llama-2-70B uses it "
        "with 64 query heads and 8 KV heads: 8× less cache than MHA, 320 KiB per token in "
        "fp16 instead of 2.5 MiB."
    ),
    formulas=[
        "query head h reads KV head ⌊h / (H_q / g)⌋",
        "KV bytes/token = 2 · L · g · d_h · bytes;  reduction vs MHA = H_q / g",
        "uptraining start: W_K^(group j) = mean of W_K^(i) over heads i in group j (same for W_V)",
        "Llama-2-70B: 2 · 80 · 8 · 128 · 2 = 327,680 B/token vs 2 · 80 · 64 · 128 · 2 = 2,621,440",
    ],
    seed_note=(
        "The seed gives only the citation. We add the title, the grouping rule, the uptraining "
        "recipe (mean-pooling, 5% of steps) and the paper's T5-XXL figures as reported, "
        "marked as not measured here."
    ),
    evidence=evidence,
)
