"""Q3: grouped-query attention."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...layers.attention import Attention
from ...layers.convert import mha_to_gqa
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._measure import variant_table


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    table = variant_table("llama-2-70b", [("mha", None), ("gqa", 8), ("mqa", None)])
    mha, gqa8, mqa = (table[k]["measured_bytes_per_token"] for k in ("MHA", "GQA-8", "MQA"))
    for k, row in table.items():
        ev.measurements[f"Llama-2-70B as {k}: fp16 bytes/token (real cache)"] = \
            row["measured_bytes_per_token"]
    ev.check("GQA-8 caches 320 KiB/token (docs/sources.md)", gqa8 == 320 * 1024, f"{gqa8} B")
    ev.check("reduction MHA → GQA-8 = H / G = 64 / 8 = 8", mha // gqa8 == 8, f"{mha / gqa8:.1f}×")
    ev.check("reduction MHA → MQA = 64", mha // mqa == 64, f"{mha / mqa:.1f}×")
    cfg = get_config("llama-2-70b")
    ev.measurements["Llama-2-70B n_heads / n_kv_heads"] = f"{cfg.n_heads} / {cfg.n_kv_heads}"

    # GQA interpolates: GQA-H == MHA exactly; GQA-1 == MQA; uptraining start = mean-pooling
    torch.manual_seed(ctx.seed)
    d, H = 64, 8
    mha_layer = Attention(d, H).eval()
    x = torch.randn(2, 13, d)
    with torch.no_grad():
        same = mha_to_gqa(mha_layer, H)
        e_same = float((same(x) - mha_layer(x)).abs().max())
        g2 = mha_to_gqa(mha_layer, 2)
        pooled = mha_layer.k_proj.weight.view(2, 4, d // H, d).mean(1).reshape(-1, d)
        e_pool = float((g2.k_proj.weight - pooled).abs().max())
        drift = float((g2(x) - mha_layer(x)).abs().max())
    ev.measurements["max |GQA-H − MHA|"] = e_same
    ev.measurements["max |GQA-2 K weights − group means|"] = e_pool
    ev.measurements["output change after mean-pooling to GQA-2 (untrained)"] = drift
    ev.check("GQA with H groups is MHA", e_same < 1e-6, f"{e_same:.1e}")
    ev.check("conversion mean-pools K/V heads within each group", e_pool < 1e-7)
    ev.check("pooling changes outputs (hence the paper's 5% uptraining)", drift > 1e-3,
             f"{drift:.3f}")
    ev.key_figure = f"Llama-2-70B: {mha // 1024} KiB → {gqa8 // 1024} KiB/token with 8 KV heads (8×)"
    return ev


QUESTION = Question(
    id=3,
    title=TITLES[3],
    short=(
        'GQA splits the H query heads into G groups that each share one key and value head, so '
        'it interpolates between MHA (G = H) and MQA (G = 1) and cuts the cache by H/G. '
        'Llama-2-70B uses 64 query heads and 8 KV heads, an 8× smaller cache at almost MHA '
        "quality, and an MHA checkpoint can be converted by mean-pooling each group's K/V heads "
        'and briefly uptraining.'
    ),
    rubric=[
        KeyPoint("G groups of query heads, each sharing one K/V head",
                 [r"groups?", r"g kv heads", r"share.*(k|key|kv) head"]),
        KeyPoint("interpolates: G = H is MHA, G = 1 is MQA",
                 [r"g ?= ?h", r"g ?= ?1", r"between (mha|mqa)", r"interpolat", r"compromise",
                  r"middle ground"]),
        KeyPoint("cache reduction H/G",
                 [r"h ?/ ?g", r"8 ?(×|x|-fold|times)", r"factor"],
                 formula="KV bytes/token = 2 · n_layers · G · d_h · bytes;  reduction H/G"),
        KeyPoint("Llama-2-70B: 64 query heads, 8 KV heads",
                 [r"\b8 kv", r"64 (query )?heads", r"llama"]),
        KeyPoint("uptraining: mean-pool K/V heads, ~5% of pre-training",
                 [r"mean[- ]pool", r"uptrain", r"5 ?%", r"average the (k|key)"]),
    ],
    answer=(
        "Grouped-query attention (Ainslie et al. 2023) sits between MHA and MQA: the H query "
        "heads are split into G groups and each group shares one key head and one value "
        "head, so query head h reads KV head ⌊h / (H/G)⌋. G = H is MHA, G = 1 is MQA. The "
        "cache shrinks by H/G. Llama-2-70B uses 64 query heads and 8 KV heads: 320 KiB per "
        "token in fp16 instead of 2.5 MiB, an 8× cut, so a 4K-token sequence needs 1.25 GiB "
        "instead of 10 GiB. The paper also shows how to get there cheaply: mean-pool the "
        "K and V heads of each group of a trained MHA checkpoint and continue training for "
        "about 5% of the original steps."
    ),
    formulas=[
        "KV head of query head h = ⌊h / (H/G)⌋",
        "KV bytes/token = 2 · n_layers · G · d_h · bytes",
        "reduction vs MHA = H / G   (Llama-2-70B: 64 / 8 = 8)",
        "uptraining start: W_K^g = mean_{h ∈ group g} W_K^h (same for W_V)",
    ],
    seed_note=(
        "The seed's symbols were lost: G groups, each serving H/G query heads, a reduction "
        "of H/G; for LLaMA-2 70B, H = 64 and G = 8. 'Negligible quality loss' is the GQA "
        "paper's T5-XXL result after 5% uptraining (average 47.1 vs 47.2 for MHA), not a "
        "measurement on LLaMA-2 itself."
    ),
    evidence=evidence,
)
