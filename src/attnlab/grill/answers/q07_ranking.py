"""Q7: ranking MHA / GQA / MQA / MLA by KV memory (measured) and quality (cited)."""
from __future__ import annotations

from ...analysis.configs import get_config
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES
from ._kv_quality import add_small_scale
from ._measure import variant_table


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    t = variant_table("llama-2-70b", [("mha", None), ("gqa", 16), ("gqa", 8), ("mla", None),
                                      ("mqa", None)])
    elems = {k: v["elements_per_token_per_layer"] for k, v in t.items()}
    for k, v in t.items():
        ev.measurements[f"Llama-2-70B shape as {k}: elements/token/layer"] = elems[k]
        ev.measurements[f"Llama-2-70B shape as {k}: fp16 bytes/token (real cache)"] = \
            v["measured_bytes_per_token"]
    order = sorted(elems, key=elems.get)
    ev.measurements["smallest → largest cache"] = " < ".join(order)
    ev.check("memory order: MQA < MLA < GQA-8 < GQA-16 < MHA",
             order == ["MQA", "MLA", "GQA-8", "GQA-16", "MHA"], " < ".join(order))
    ds = get_config("deepseek-v2")
    ev.measurements["DeepSeek-V2 MLA as GQA groups (576 / 2·128)"] = \
        ds.cached_elements_per_token_per_layer / (2 * ds.mla.qk_nope_head_dim)
    ev.check("MLA at DeepSeek shapes = 2.25 GQA groups",
             ds.cached_elements_per_token_per_layer == 576)
    ev.check("every real cache matches the calculator",
             all(v["measured_bytes_per_token"] == v["calc_bytes_per_token"] for v in t.values()))
    ev.key_figure = "elements/token/layer: " + ", ".join(f"{k} {elems[k]}" for k in order)
    add_small_scale(ev, ctx)  # measured small-scale comparison (KV-sharing experiment)
    return ev


QUESTION = Question(
    id=7,
    title=TITLES[7],
    answer=(
        "By cache size per token per layer, for Llama-2-70B's shape (64 heads of 128): MQA "
        "256 elements < MLA 576 (DeepSeek's latent of 512 plus a 64-dim RoPE key) < GQA-8 "
        "2,048 < GQA-16 4,096 < MHA 16,384. MLA's cache equals GQA with 2.25 groups. By "
        "quality, the published evidence orders MHA ≥ GQA-16 ≥ GQA-8 > MQA for the "
        "head-sharing family (GQA paper; DeepSeek-V2's 7B ablation: MMLU 45.2 / 41.2 / 37.9 "
        "for MHA / GQA-8 / MQA), and the DeepSeek-V2 report places MLA at or above MHA, not "
        "below GQA. So MLA and GQA-8 are both on the memory–quality Pareto front, with MLA "
        "paying in attention compute (wider latent dot products) and implementation "
        "complexity (decoupled RoPE, absorption) rather than in quality."
    ),
    formulas=[
        "elements/token/layer: MHA 2·H·d_h,  GQA-G 2·G·d_h,  MQA 2·d_h,  MLA d_c + d_R",
        "MLA = GQA with (d_c + d_R)/(2·d_h) groups = 576/256 = 2.25",
    ],
    seed_note=(
        "The seed's comparison symbols were lost, and its quality ranking puts MLA below "
        "GQA-8; the DeepSeek-V2 report (Table 1 and its MLA-vs-MHA ablations) finds MLA "
        "stronger than MHA. By memory MLA also beats GQA-8 (576 vs 2,048 elements) — it is "
        "not merely 'about equal'. Only MQA is smaller."
    ),
    evidence=evidence,
)
