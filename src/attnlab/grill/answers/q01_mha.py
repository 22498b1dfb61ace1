"""Q1: multi-head attention and its KV cache."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...layers.attention import Attention
from ...ops.softmax import attention_reference
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._measure import measured_bytes_per_token_per_layer


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    d, H = 64, 4
    D = d // H
    layer = Attention(d, n_heads=H, n_kv_heads=H, rope=False).eval()
    x = torch.randn(2, 9, d)
    with torch.no_grad():
        out = layer(x)
        # every head with its own W_Q^h, W_K^h, W_V^h slice, attended independently
        heads = []
        for h in range(H):
            sl = slice(h * D, (h + 1) * D)
            q = x @ layer.q_proj.weight[sl].T  # (B, N, D)
            k = x @ layer.k_proj.weight[sl].T
            v = x @ layer.v_proj.weight[sl].T
            o = attention_reference(q[:, None], k[:, None], v[:, None],
                                    mask=layer.mask)  # (B, 1, N, D)
            heads.append(o[:, 0])
        manual = torch.cat(heads, -1) @ layer.o_proj.weight.T  # Concat(head_1..H) W_O
    err = float((out - manual).abs().max())
    ev.measurements["max |layer − per-head manual|"] = err
    ev.check("MHA = concat of H independent heads, then W_O", err < 1e-5, f"{err:.2e}")

    for name, facts_kib in (("gpt2", 36), ("llama-2-7b", 512), ("llama-2-13b", 800)):
        cfg = get_config(name)
        per_layer = measured_bytes_per_token_per_layer(cfg, "fp16")
        total = per_layer * cfg.n_layers
        formula = 2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * 2
        ev.measurements[f"{cfg.name}: fp16 KV bytes/token (real cache)"] = total
        ev.check(f"{cfg.name}: real cache = 2·L·H·d_h·2 = {facts_kib} KiB (docs/sources.md)",
                 total == formula == facts_kib * 1024, f"{total} B")
    llama = get_config("llama-2-7b")
    seq = 2 * llama.n_layers * llama.n_heads * llama.head_dim * 2 * 4096
    ev.measurements["Llama-2-7B KV per 4096-token sequence (GiB)"] = seq / 2**30
    ev.key_figure = f"Llama-2-7B MHA: 512 KiB/token, {seq / 2**30:.0f} GiB per 4K sequence (fp16)"
    return ev


QUESTION = Question(
    id=1,
    title=TITLES[1],
    short=(
        'MHA runs H attention heads in parallel, each with its own query, key and value '
        'projections of width d_h = d_model/H; their outputs are concatenated and mixed by W_O. '
        'Because every head has its own keys and values, decoding must cache 2·H·d_h numbers per '
        'token per layer: for Llama-2-7B that is 512 KiB per token in fp16.'
    ),
    rubric=[
        KeyPoint("H heads, each with its own W_Q, W_K, W_V",
                 [r"own (query|key|value|projection|w_?q|w_?k)", r"separate (projection|k|key)",
                  r"per[- ]head (projection|weights|k)", r"each head"]),
        KeyPoint("outputs concatenated and projected by W_O",
                 [r"concat", r"w_?o\b", r"output projection"],
                 formula="MHA(X) = Concat(head_1, …, head_H) W_O"),
        KeyPoint("head width d_h = d_model / H",
                 [r"d_?model ?/ ?h", r"d_?h ?= ?d", r"split (the )?(model|hidden) (dim|width)"]),
        KeyPoint("KV cache holds K and V of every head: 2·L·H·d_h per token",
                 [r"2 ?[·*x×]? ?l? ?[·*x×]? ?h ?[·*x×]? ?d", r"every head'?s? (k|key)",
                  r"cache.*(all|every) heads?", r"kv cache.*(grow|per token)"],
                 formula="KV bytes/token = 2 · n_layers · H · d_h · bytes"),
    ],
    answer=(
        "Multi-head attention (Vaswani et al. 2017) runs H attention functions side by side. "
        "Head h has its own projections W_Q^h, W_K^h, W_V^h (each d_model × d_h, usually "
        "d_h = d_model / H), attends with its own softmax, and the H outputs are "
        "concatenated and mixed by W_O. Separate heads let different heads specialise "
        "(one tracks the previous token, another matches induction patterns) at the cost of "
        "one wide attention. At inference every head's key and value of every past token "
        "must be kept, so the cache stores 2·H·d_h numbers per token per layer — for "
        "Llama-2-7B (32 layers, 32 heads of 128) that is 512 KiB per token in fp16, 2 GiB "
        "for one 4K-token sequence. That cost is what MQA, GQA and MLA attack."
    ),
    formulas=[
        "head_h = softmax((X W_Q^h)(X W_K^h)ᵀ / √d_h) (X W_V^h)",
        "MHA(X) = Concat(head_1, …, head_H) W_O",
        "KV bytes per sequence = 2 · n_layers · H · d_h · T · bytes_per_element",
    ],
    seed_note=(
        "The seed lost the symbols: the head count is H, and the cache cost it meant is "
        "2·L·H·d_h·T elements per sequence (K and V for every head, layer and token)."
    ),
    evidence=evidence,
)
