"""Q2: multi-query attention."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...layers.attention import Attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._measure import measured_bytes_per_token_per_layer


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    falcon = get_config("falcon-7b")
    mqa = measured_bytes_per_token_per_layer(falcon, "fp16") * falcon.n_layers
    mha_cfg = falcon.variant("mha")
    mha = measured_bytes_per_token_per_layer(mha_cfg, "fp16") * mha_cfg.n_layers
    ratio = mha / mqa
    ev.measurements["Falcon-7B MQA fp16 bytes/token (real cache)"] = mqa
    ev.measurements["Falcon-7B as MHA fp16 bytes/token (real cache)"] = mha
    ev.measurements["reduction factor"] = ratio
    ev.check("Falcon-7B MQA caches 8 KiB/token (docs/sources.md)", mqa == 8 * 1024, f"{mqa} B")
    ev.check("reduction factor = number of query heads (71)", ratio == falcon.n_heads,
             f"{ratio:.1f}")

    # MQA is MHA whose K/V heads are all equal: build both and compare outputs
    torch.manual_seed(ctx.seed)
    d, H = 64, 8
    one = Attention(d, H, n_kv_heads=1).eval()
    tied = Attention(d, H, n_kv_heads=H).eval()
    with torch.no_grad():
        tied.q_proj.weight.copy_(one.q_proj.weight)
        tied.o_proj.weight.copy_(one.o_proj.weight)
        tied.k_proj.weight.copy_(one.k_proj.weight.repeat(H, 1))  # every head = the shared one
        tied.v_proj.weight.copy_(one.v_proj.weight.repeat(H, 1))
        x = torch.randn(2, 11, d)
        err = float((one(x) - tied(x)).abs().max())
    ev.measurements["max |MQA − MHA with tied K/V heads|"] = err
    ev.check("MQA == MHA whose K/V heads are tied", err < 1e-5, f"{err:.2e}")
    ev.measurements["K/V projection params MQA vs MHA"] = (
        one.k_proj.weight.numel() + one.v_proj.weight.numel(),
        tied.k_proj.weight.numel() + tied.v_proj.weight.numel())
    ev.key_figure = f"Falcon-7B: 8 KiB/token vs {mha // 1024} KiB as MHA → {ratio:.0f}× smaller"
    return ev


QUESTION = Question(
    id=2,
    title=TITLES[2],
    short=(
        'MQA keeps H query heads but gives them a single shared key head and value head. '
        'The KV cache shrinks H-fold, to 2·d_h numbers per token per layer, which makes the '
        'memory-bound decode step much cheaper; the cost is some quality, since all heads read '
        'the same keys and values.'
    ),
    rubric=[
        KeyPoint("one shared K and V head for all query heads",
                 [r"(single|one|shared) (k|key|kv)", r"share[sd]? (the |a )?(k|key|kv)",
                  r"all (query )?heads (share|read|use) (the same|one)"]),
        KeyPoint("query heads stay separate (per-head softmax)",
                 [r"(h|multiple|many|separate|all) query heads", r"queries? (stay|remain)"]),
        KeyPoint("cache shrinks by a factor H",
                 [r"factor (of )?h\b", r"\bh ?(×|x|-fold|times)", r"by h\b", r"1 ?/ ?h"],
                 formula="reduction = H;  KV bytes/token = 2 · n_layers · d_h · bytes"),
        KeyPoint("decode is memory-bound, so it speeds up decoding / frees memory for batch",
                 [r"memory[- ]bound", r"bandwidth", r"faster decod", r"larger batch"]),
        KeyPoint("quality cost", [r"quality", r"accuracy", r"degrad", r"loses?"]),
    ],
    answer=(
        "Multi-query attention (Shazeer 2019, 'Fast Transformer Decoding: One Write-Head is "
        "All You Need') keeps H query heads but gives them a single key head and a single "
        "value head that all of them read. The softmax is still per query head, so heads can "
        "still look at different positions, but they see the same keys and mix the same "
        "values. The cache shrinks by the factor H: 2·d_h numbers per token per layer "
        "instead of 2·H·d_h. Falcon-7B (71 query heads of 64) caches 8 KiB per token in "
        "fp16 instead of 568 KiB. Decoding is memory-bound — each step rereads the whole "
        "cache — so an H-times smaller cache cuts the bytes each attention step streams "
        "H-fold; the step gets much cheaper at long context, though by less than H because "
        "fixed per-step costs remain (Q5 and Q6 measure it), and the freed memory allows "
        "larger batches."
    ),
    formulas=[
        "head_h = softmax((X W_Q^h)(X W_K)ᵀ / √d_h) (X W_V)   (W_K, W_V shared by all h)",
        "KV bytes/token = 2 · n_layers · 1 · d_h · bytes   (MHA: 2 · n_layers · H · d_h · bytes)",
        "reduction = H",
    ],
    seed_note=(
        "The seed's formulas were lost; the cache is 2·L·d_h·T elements per sequence and the "
        "reduction factor is exactly H, the number of query heads. Its '8–64×' is a range "
        "of common head counts; Falcon-7B's is 71."
    ),
    evidence=evidence,
)
