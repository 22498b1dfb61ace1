"""Q44: multi-head latent attention comes from the DeepSeek-V2 report (2024) — its numbers."""
from __future__ import annotations

import torch

from ...analysis.configs import ArchConfig, MLAGeometry, get_config
from ...analysis.memory import EXPANDED_MLA, build_cache, compare_variants, kv_memory
from ...layers.mla import MLASpec, MultiLatentAttention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def _decode_outputs(layer: MultiLatentAttention, x: torch.Tensor, prefill: int):
    """Prefill `prefill` tokens, then decode the rest one at a time; concat outputs."""
    cache = layer.new_cache(x.shape[0], x.shape[1])
    outs = [layer(x[:, :prefill], cache=cache)]
    outs += [layer(x[:, t:t + 1], cache=cache) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1), cache  # (B, N, d_model)


def hf_deepseek_cache(tokens: int = 7) -> tuple[str, dict[str, int], dict[str, int]] | None:
    """What the installed HF transformers caches for DeepSeek-V2: (version, config sizes,
    cached elements per token per layer by tensor name), from a 2-layer model with random
    weights built from a small config and run over `tokens` tokens. None without
    transformers."""
    try:
        import transformers
        from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    except ImportError:
        return None
    sizes = {"n_heads": 4, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
             "v_head_dim": 16}
    cfg = DeepseekV2Config(
        vocab_size=64, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=sizes["n_heads"],
        num_key_value_heads=sizes["n_heads"], kv_lora_rank=sizes["kv_lora_rank"],
        q_lora_rank=None, qk_rope_head_dim=sizes["qk_rope_head_dim"],
        qk_nope_head_dim=sizes["qk_nope_head_dim"], v_head_dim=sizes["v_head_dim"],
        n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=2,
        max_position_embeddings=64)
    torch.manual_seed(0)
    model = DeepseekV2ForCausalLM(cfg).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 64, (1, tokens)), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values  # renamed in newer versions
    layer = cache.layers[0]  # (B, heads, T, dim) keys / values of layer 0
    per_token = {name: getattr(layer, name)[0].numel() // tokens for name in ("keys", "values")}
    return transformers.__version__, sizes, per_token


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    ds = get_config("deepseek-v2")  # d_c 512, d_R 64, d_h 128, 128 heads, 60 layers (docs/sources.md)
    m = ds.mla
    elems = m.kv_lora_rank + m.qk_rope_head_dim  # evaluated from the config's fields
    ev.cite("MLA introduced: low-rank joint KV compression c_KV = W_DKV h, per-head keys and "
            "values reconstructed by up-projections; decoupled RoPE key k_R shared by all "
            "heads", "DeepSeek-V2 report (DeepSeek-AI 2024), §2.1; docs/sources.md")
    ev.cite("DeepSeek-V2 caches d_c + d_R = 512 + 64 = 576 elements per token per layer, "
            "4.5·d_h — equal to GQA with 2.25 groups", "DeepSeek-V2 report, §2.1.4 and Table 1; "
            "released config (kv_lora_rank 512, qk_rope_head_dim 64); docs/sources.md")
    ev.measurements["cached elements/token/layer d_c + d_R (config)"] = elems
    ev.measurements["as a multiple of d_h; equivalent GQA groups"] = (
        elems / m.qk_nope_head_dim, elems / (2 * m.qk_nope_head_dim))
    rows = {label: mm for label, _, mm in compare_variants(ds, 4096)}
    mla, mha, hf = rows["MLA"], rows["MHA"], rows[EXPANDED_MLA]
    ev.measurements["fp16 bytes/token MLA / MHA (d_h heads) / expanded per-head K/V"] = (
        mla.bytes_per_token, mha.bytes_per_token, hf.bytes_per_token)
    ev.measurements["MLA share of MHA's cache; expanded K/V ÷ MLA"] = (
        round(mla.bytes_per_token / mha.bytes_per_token, 4),
        round(hf.bytes_per_token / mla.bytes_per_token, 1))

    # what the installed HF transformers caches for DeepSeek-V2, measured
    hf_run = hf_deepseek_cache()
    if hf_run is None:
        ev.measurements["HF transformers"] = "not installed: its DeepSeek cache not measured"
    else:
        version, sz, got = hf_run
        latent = {"keys": sz["kv_lora_rank"], "values": sz["qk_rope_head_dim"]}
        expanded = {"keys": sz["n_heads"] * (sz["qk_nope_head_dim"] + sz["qk_rope_head_dim"]),
                    "values": sz["n_heads"] * sz["v_head_dim"]}
        major = int(version.split(".")[0])
        expect, kind = (latent, "the latent c_KV and the rope key") if major >= 5 else \
            (expanded, "expanded per-head K and V")
        ev.measurements[f"HF transformers {version}: cached elements/token/layer (keys, values) "
                        "for a small DeepSeek-V2"] = (got["keys"], got["values"])
        ev.measurements["latent layout d_c, d_R vs expanded H·(d_nope + d_R), H·d_v"] = (
            tuple(latent.values()), tuple(expanded.values()))
        ev.check(f"installed transformers {version} caches {kind} for DeepSeek-V2 (as 5.x "
                 "does; 4.x cached the expanded K/V)", got == expect, f"measured {got}")
    # a real latent cache with DeepSeek-V2's per-layer sizes: 576 elements per token
    stack, _ = build_cache(ds.scaled(n_layers=2), context=16, batch=2, dtype="fp16")
    per_tok = stack.nbytes // (2 * 16 * 2 * 2)  # layers · tokens · batch · bytes
    ev.measurements["real LatentKVCache elements/token/layer (from nbytes)"] = per_tok
    ev.check("a real LatentKVCache with DeepSeek-V2's sizes holds d_c + d_R elements per token "
             "per layer", per_tok == elems, f"{per_tok} vs {elems}")

    # a small MLA layer: absorbed decode == naive decode == parallel; cache == calculator
    spec = MLASpec(n_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                   v_head_dim=16, q_lora_rank=24)
    naive = MultiLatentAttention(64, spec, absorb=False)
    absorbed = MultiLatentAttention(64, spec, absorb=True)
    absorbed.load_state_dict(naive.state_dict())
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        full = naive(x)
        out_n, cache = _decode_outputs(naive, x, prefill=5)
        out_a, _ = _decode_outputs(absorbed, x, prefill=5)
    err_abs = float((out_a - out_n).abs().max())
    err_par = float((out_n - full).abs().max())
    ev.measurements["max |absorbed − naive| decode, max |decode − parallel|"] = (err_abs, err_par)
    ev.check("absorbed MLA == naive MLA over a cached decode (atol 1e-5)", err_abs < 1e-5,
             f"{err_abs:.1e}")
    ev.check("cached decode == parallel forward", err_par < 1e-5, f"{err_par:.1e}")
    toy = ArchConfig("toy-MLA", n_layers=1, d_model=64, n_heads=4, n_kv_heads=None, head_dim=16,
                     max_context=12, source="this evidence",
                     mla=MLAGeometry(32, 8, 16, 16, 24))
    ev.check("the layer's cache nbytes equals the calculator",
             cache.nbytes == kv_memory(toy, 12, batch=2, dtype="fp32").bytes_total,
             f"{cache.nbytes} B")
    ev.key_figure = (f"DeepSeek-V2: {elems} elements/token/layer = {elems / m.qk_nope_head_dim}·d_h; "
                     f"{mla.bytes_per_token:,} B/token fp16 vs MHA {mha.bytes_per_token:,}; "
                     f"absorbed == naive (err {err_abs:.0e})")
    return ev


QUESTION = Question(
    id=44,
    title=TITLES[44],
    short=(
        "Multi-head latent attention comes from the DeepSeek-V2 report (DeepSeek-AI, 2024). "
        "It caches one low-rank latent per token (512 wide) plus a small shared RoPE key "
        "(64), 576 elements per layer — about what GQA with 2.25 groups would cache — while "
        "every head still gets its own keys and values by up-projection, which can be "
        "absorbed into the query and output projections at inference."
    ),
    rubric=[
        KeyPoint("DeepSeek-V2 (2024)", [r"deepseek[- ]?v2", r"deepseek"]),
        KeyPoint("cache a low-rank latent c_KV instead of per-head K/V",
                 [r"latent", r"low[- ]rank", r"compress", r"c_?kv"]),
        KeyPoint("decoupled RoPE key shared by heads",
                 [r"decoupled", r"rope", r"rotary"]),
        KeyPoint("576 elements per token per layer (≈ GQA with 2.25 groups)",
                 [r"576", r"2\.25", r"4\.5\s*(·|x|\*)?\s*d"],
                 formula="d_c + d_R = 512 + 64 = 576 = 4.5·d_h"),
        KeyPoint("up-projections absorbed into query/output projections",
                 [r"absor", r"fold"]),
    ],
    answer=(
        "Multi-head latent attention was introduced in the DeepSeek-V2 technical report "
        "(DeepSeek-AI, \"DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts "
        "Language Model\", 2024). Instead of caching per-head keys and values, each token's "
        "hidden state is compressed into one low-rank latent c_KV (512 wide in DeepSeek-V2), "
        "from which every head's key and value are reconstructed by up-projections. Because "
        "RoPE would sit between the query and key up-projection and stop them from being "
        "merged, position goes into a separate 64-wide key shared by all heads, cached beside "
        "the latent. The cache is then 576 elements per token per layer — 4.5 times one head "
        "size, what GQA would cache with 2.25 groups — while all 128 heads keep distinct keys "
        "and values. At inference the up-projections can be folded into the query and output "
        "projections (\"absorbed\"), so attention runs directly over the latent without ever "
        "materialising per-head K/V. The report found MLA stronger than MHA at a fraction of "
        "its cache; DeepSeek-V2-Lite and V3 keep the same 512 + 64 layout. What a framework "
        "actually caches is its own choice: Hugging Face transformers 4.x expanded the "
        "latent and cached per-head K and V (tens of times the latent's bytes), while 5.x "
        "caches the latent and the RoPE key; the evidence measures the installed version."
    ),
    formulas=[
        "c_KV = W_DKV h;  k_C = W_UK c_KV;  v_C = W_UV c_KV;  k_R = RoPE(W_KR h) (shared by heads)",
        "q = [q_C; q_R],  k = [k_C; k_R],  scale 1/√(d_h + d_R)",
        "cached elements/token/layer = d_c + d_R = 512 + 64 = 576 = 4.5 · d_h",
        "GQA-equivalent groups = (d_c + d_R) / (2 · d_h) = 2.25",
        "absorbed: q_Cᵀ k_C = (W_UKᵀ q_C)ᵀ c_KV,  o = W_O W_UV (Σ p · c_KV)",
    ],
    seed_note=(
        "The seed names DeepSeek-V2 but not the report's title or any number. We add the "
        "mechanism, the decoupled RoPE key (without which absorption fails), and the cache "
        "size from the released config, computed here from a real latent cache."
    ),
    evidence=evidence,
)
