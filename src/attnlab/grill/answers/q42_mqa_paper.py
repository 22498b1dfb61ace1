"""Q42: multi-query attention comes from Shazeer 2019 — measured on Falcon-7B's geometry."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import build_cache, kv_memory
from ...layers.attention import Attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def _tied_mha_from_mqa(mqa: Attention) -> Attention:
    """An MHA layer whose every K/V head is a copy of the MQA layer's single head."""
    mha = Attention(mqa.d_model, mqa.n_heads, mqa.n_heads, mqa.head_dim, rope=mqa.rope)
    with torch.no_grad():
        mha.q_proj.weight.copy_(mqa.q_proj.weight)
        mha.o_proj.weight.copy_(mqa.o_proj.weight)
        mha.k_proj.weight.copy_(mqa.k_proj.weight.repeat(mqa.n_heads, 1))  # (H·D, d_model)
        mha.v_proj.weight.copy_(mqa.v_proj.weight.repeat(mqa.n_heads, 1))
    return mha


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    falcon = get_config("falcon-7b")  # 71 query heads, 1 KV head of 64 (docs/sources.md, HF config)
    ev.cite("multi-query attention introduced: all query heads share one key and one value "
            "head; motivated by the memory-bandwidth cost of incremental decoding",
            "Shazeer 2019, \"Fast Transformer Decoding: One Write-Head is All You Need\", §3")
    ev.cite("Falcon-7B: 71 query heads, multi_query true (one KV head of 64); later configs "
            "also carry num_kv_heads 71, which read literally would mean MHA",
            "Falcon-7B HF config.json; docs/sources.md")
    mqa = kv_memory(falcon, 2048, batch=1, dtype="fp16")
    mha = kv_memory(falcon.variant("mha"), 2048, batch=1, dtype="fp16")
    literal = kv_memory(falcon.scaled(n_kv_heads=71), 2048).bytes_per_token
    ev.measurements["Falcon-7B heads (query, KV)"] = (falcon.n_heads, falcon.n_kv_heads)
    ev.measurements["fp16 bytes/token MQA vs MHA; num_kv_heads 71 read literally"] = (
        mqa.bytes_per_token, mha.bytes_per_token, literal)
    ev.measurements["fp16 bytes/sequence at 2048, MQA vs MHA"] = (mqa.bytes_per_sequence,
                                                                 mha.bytes_per_sequence)
    # real caches from a 2-layer copy with Falcon's per-layer geometry
    small = falcon.scaled(n_layers=2)
    c_mqa, _ = build_cache(small, context=64, batch=2, dtype="fp32")
    c_mha, _ = build_cache(small.variant("mha"), context=64, batch=2, dtype="fp32")
    ev.measurements["real cache nbytes (2 layers, 64 tokens, batch 2): MQA, MHA"] = (
        c_mqa.nbytes, c_mha.nbytes)
    expect = 2 * 2 * 64 * 2 * small.head_dim * 4  # 2 (K, V) · layers · tokens · batch · d · 4 B
    ev.check("real caches: MQA holds 2·L·T·B·d_h·4 bytes, MHA 71× that",
             c_mqa.nbytes == expect and c_mha.nbytes == small.n_heads * expect,
             f"{c_mqa.nbytes:,} and {c_mha.nbytes:,} B")

    # MQA is MHA whose K/V heads are all the same one: outputs agree, with a cache too
    layer = Attention(64, 4, 1, 16)
    tied = _tied_mha_from_mqa(layer)
    x = torch.randn(2, 11, 64)
    with torch.no_grad():
        err_parallel = float((layer(x) - tied(x)).abs().max())
        ca, cb = layer.new_cache(2, 11), tied.new_cache(2, 11)
        steps = [(layer(x[:, t:t + 1], cache=ca), tied(x[:, t:t + 1], cache=cb)) for t in range(11)]
    err_decode = max(float((a - b).abs().max()) for a, b in steps)
    ev.measurements["max |MQA − tied MHA| parallel / decode"] = (err_parallel, err_decode)
    ev.check("MQA == MHA with tied K/V heads (parallel and cached decode)",
             err_parallel < 1e-5 and err_decode < 1e-5, f"{err_parallel:.1e}, {err_decode:.1e}")
    ev.check("the MQA layer's cache is 1/4 of the 4-head MHA's", cb.nbytes == 4 * ca.nbytes,
             f"{ca.nbytes} vs {cb.nbytes}")

    # Shazeer's incremental-decoding ratio: memory traffic / arithmetic ~ n/d + 1/b (MHA)
    n, d, h = 2048, falcon.d_model, falcon.n_heads
    ev.measurements["n/d (MHA) vs n/(d·h) (MQA) at n = 2048"] = (round(n / d, 4),
                                                                  round(n / (d * h), 5))
    ev.key_figure = (f"Falcon-7B MQA: {mqa.bytes_per_token:,} B/token vs MHA "
                     f"{mha.bytes_per_token:,}; MQA == tied MHA (err {err_decode:.0e})")
    return ev


QUESTION = Question(
    id=42,
    title=TITLES[42],
    short=(
        "Noam Shazeer, \"Fast Transformer Decoding: One Write-Head is All You Need\" "
        "(2019): every query head shares a single key/value head, cutting the KV cache and "
        "decode memory traffic by the number of heads."
    ),
    rubric=[
        KeyPoint("Shazeer 2019", [r"shazeer", r"2019"]),
        KeyPoint("one write-head: one shared K/V head",
                 [r"one write[- ]head", r"fast transformer decoding", r"single (k|key)",
                  r"shared? (k|key)"]),
        KeyPoint("KV cache and decode traffic shrink by the number of heads",
                 [r"by the number of heads", r"÷\s*h", r"h\s*(×|x|times) smaller", r"kv cache"],
                 formula="KV bytes/token: 2·L·h·d_h → 2·L·d_h"),
    ],
    answer=(
        "Multi-query attention was proposed by Noam Shazeer in \"Fast Transformer Decoding: "
        "One Write-Head is All You Need\" (arXiv 2019). All query heads keep their own "
        "projections but share a single key head and a single value head. His argument was "
        "about incremental decoding: each generated token must read the whole cache, so for "
        "multi-head attention the ratio of memory traffic to arithmetic stays near n/d + 1/b "
        "(n context, d model width, b batch) and decoding is bandwidth bound; with one shared "
        "K/V head the n/d term shrinks by the number of heads h, and so does the cache. He "
        "measured much faster decoding at a small quality cost. Falcon-7B is an MQA model: "
        "71 query heads and one 64-wide KV head, so its cache is 71 times smaller than the "
        "MHA equivalent (8 KiB instead of 568 KiB per token in fp16). MQA is the one-group "
        "end of GQA, and equals an MHA layer whose key/value heads are all copies of one head."
    ),
    formulas=[
        "MQA: head_i = Attention(X W_i^Q, X W^K, X W^V)  (one shared W^K, W^V)",
        "KV bytes/token: MHA 2 · L · h · d_h · bytes → MQA 2 · L · d_h · bytes (÷ h)",
        "incremental decoding: memory/arithmetic ≈ n/d + 1/b (MHA) → n/(d·h) + 1/b (MQA)",
        "Falcon-7B fp16: 2 · 32 · 1 · 64 · 2 = 8,192 B/token (MHA: 71 × that)",
    ],
    seed_note=(
        "The seed gives only the citation. We add the title, the decoding-bandwidth argument "
        "that motivated it, and a real MQA model (Falcon-7B), whose later configs carry "
        "num_kv_heads: 71 beside multi_query: true — read literally that is MHA's cache; the "
        "effective value is 1."
    ),
    evidence=evidence,
)
