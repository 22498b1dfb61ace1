"""Q5: why GQA became the default (memory side measured; quality side cited)."""
from __future__ import annotations

from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._measure import decode_step_ms, variant_table

# GQA paper (Ainslie et al. 2023), T5-XXL with 5% uptraining: average score and
# inference time per sample (docs/sources.md, "GQA").
GQA_PAPER = {"MHA": (47.2, 1.51), "GQA-8": (47.1, 0.28), "MQA": (46.6, 0.24)}
GQA_SOURCE = "GQA paper (Ainslie et al. 2023), T5-XXL with 5% uptraining (docs/sources.md)"
DEEPSEEK_SOURCE = "DeepSeek-V2 report, Table 8: 7B dense, 1.33T tokens (docs/sources.md)"


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    t = variant_table("llama-3-70b", [("mha", None), ("gqa", 8), ("mqa", None)])
    mha, gqa, mqa = (t[k]["measured_bytes_per_token"] for k in ("MHA", "GQA-8", "MQA"))
    H, G = 64, 8  # Llama-3-70B: 64 query heads (docs/sources.md)
    share = (mha - gqa) / (mha - mqa) if mha != mqa else float("nan")  # nan: no saving
    share_formula = (1 - G / H) / (1 - 1 / H)
    ev.measurements["Llama-3-70B fp16 KV bytes/token (real caches): MHA / GQA-8 / MQA"] = (
        mha, gqa, mqa)
    ev.measurements["share of MQA's cache saving that GQA-8 keeps (measured bytes)"] = round(
        share, 4)
    ev.check("measured share of MQA's saving = (1 − G/H)/(1 − 1/H) with H = 64, G = 8",
             abs(share - share_formula) < 1e-9, f"{share:.4f} vs {share_formula:.4f}")
    ev.check("bytes a decode step streams: MHA / GQA-8 = H / G = 8 (real caches)",
             mha == (H // G) * gqa, f"{mha / gqa:g}×")

    # decode attention step over the cache: medians, one thread
    ctx_len = 16384 if ctx.full else 8192
    times = {name: decode_step_ms(H // 2, hkv, 128, ctx_len, seed=ctx.seed)
             for name, hkv in (("MHA", 32), ("GQA-8", 4), ("MQA", 1))}
    # 32 query heads here (Llama-2-7B-like width) keeps the MHA cache at 256 MiB
    speed = times["MHA"] / times["GQA-8"]
    ev.measurements[f"decode attention step, 32 query heads × 128, {ctx_len} tokens, fp32, "
                    "median of 7 (ms): MHA / GQA (8× fewer KV heads) / MQA"] = tuple(
        round(v, 3) for v in times.values())
    ev.measurements["reading"] = (
        f"8× fewer KV bytes made the step {speed:.1f}× faster here, not 8×: each step also "
        "pays fixed costs that do not shrink with the cache (dispatching the two matmuls and "
        "the softmax, reading the query, writing the output), and with 8 query heads per KV "
        "head the grouped step does 8× more multiply-adds per byte, so it is less purely "
        "bandwidth-bound; the time falls by less than the bytes.")
    ev.check("GQA decode step faster than MHA's by > 1.5× (8× fewer bytes; timing, median)",
             speed > 1.5, f"{speed:.2f}×", timing=True)
    ev.check("and not faster than the bytes allow (< 12×: no free lunch beyond 8×)",
             speed < 12, f"{speed:.2f}×", timing=True)

    (q_mha, s_mha), (q_gqa, s_gqa), (q_mqa, s_mqa) = (GQA_PAPER[k] for k in
                                                      ("MHA", "GQA-8", "MQA"))
    ev.cite(f"average score MHA {q_mha}, GQA-8 {q_gqa}, MQA {q_mqa} "
            f"(GQA-8 {q_mha - q_gqa:.1f} points below MHA, MQA {q_mha - q_mqa:.1f})",
            GQA_SOURCE + ", Table 1")
    ev.cite(f"inference time per sample MHA {s_mha} s, GQA-8 {s_gqa} s, MQA {s_mqa} s",
            GQA_SOURCE + ", Table 1")
    ev.cite("MMLU MHA 45.2, GQA-8 41.2, MQA 37.9 when trained from scratch", DEEPSEEK_SOURCE)
    ev.key_figure = (f"GQA-8 keeps {share:.1%} of MQA's cache saving; decode step "
                     f"{speed:.1f}× faster than MHA here (8× fewer bytes)")
    return ev


QUESTION = Question(
    id=5,
    title=TITLES[5],
    short=(
        "GQA with 8 KV heads removes almost all of the cache that MQA removes, so decoding "
        "gets most of MQA's bandwidth and batch-size win, while its quality stays close to "
        "MHA: in the GQA paper GQA-8 was 0.1 points below MHA and MQA 0.6. It also splits "
        "cleanly over 8 tensor-parallel devices, one KV head each, and an MHA checkpoint "
        "can be converted to it cheaply."
    ),
    rubric=[
        KeyPoint("keeps most of MQA's memory saving",
                 [r"most of (mqa'?s? )?(the )?(memory|saving|cache)", r"almost (all|as)",
                  r"nearly (all|as)", r"8 ?(×|x|-fold|times)", r"87\.5"],
                 formula="share of MQA's saving = (1 − G/H) / (1 − 1/H)"),
        KeyPoint("quality close to MHA (MQA loses more)",
                 [r"quality", r"close to mha", r"0\.1", r"negligible", r"minimal"]),
        KeyPoint("decode is memory-bound: fewer KV bytes → faster steps / bigger batches",
                 [r"memory[- ]bound", r"bandwidth", r"faster decod", r"batch"]),
        KeyPoint("tensor parallelism: one KV head per device",
                 [r"tensor[- ]parallel", r"\btp\b", r"shard", r"per (gpu|device)"]),
        KeyPoint("cheap conversion / uptraining from MHA",
                 [r"uptrain", r"mean[- ]pool", r"convert"]),
    ],
    answer=(
        "Because it takes almost all of the memory win for almost none of the quality loss. "
        "Going from H KV heads to G = 8 removes 1 − 8/H of the cache while MQA removes "
        "1 − 1/H; at H = 64 GQA-8 keeps the share of MQA's saving that the evidence "
        "measures on real caches. Decoding streams that cache every step, so a smaller "
        "cache means faster steps and room for larger batches — though on a real machine "
        "the step time falls by less than the bytes do (fixed per-step costs, and the "
        "grouped step does more arithmetic per byte), as the measured step times show. On "
        "quality, the GQA paper (T5-XXL, 5% uptraining) puts GQA-8 within 0.1 points of MHA "
        "and MQA 0.6 below, at per-sample times close to MQA's. Two engineering reasons add "
        "to it: with tensor parallelism over 8 devices each device keeps one whole KV head "
        "(MQA would replicate its single head on all of them), and an MHA checkpoint can be "
        "converted by mean-pooling. Llama-2-70B, Llama-3, Mistral and Gemma-2 all ship GQA. "
        "The quality side is a claim about large models that this CPU cannot reproduce; "
        "see Q7 for the committed small-scale comparison and why it ranks differently."
    ),
    formulas=[
        "cache fraction kept = G / H;   share of MQA's saving = (1 − G/H) / (1 − 1/H)",
        "decode step time ≈ t_fixed + KV bytes / bandwidth   (memory-bound part shrinks with G)",
    ],
    seed_note=(
        "The seed's '~0.1% vs MQA's ~1–2%' mixes units. The GQA paper reports points: GQA-8 "
        "is 0.1 points (0.2%) and MQA 0.6 points (1.3%) below MHA on T5-XXL's average. Other "
        "studies find larger gaps: the DeepSeek-V2 report's 7B dense ablation gives MMLU "
        "45.2 (MHA), 41.2 (GQA-8), 37.9 (MQA). 'Negligible' holds for uptrained T5-XXL, not "
        "universally. Nor does decode time fall in proportion to the cache: the 'reading' "
        "line gives the speed-up this run measured for 8× fewer bytes."
    ),
    evidence=evidence,
)
