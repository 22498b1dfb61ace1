"""Q44: multi-head latent attention comes from the DeepSeek-V2 report (2024) — its numbers."""
from __future__ import annotations

import torch

from ...analysis.configs import ArchConfig, MLAGeometry, get_config
from ...analysis.memory import EXPANDED_MLA, build_cache, compare_variants, kv_memory
from ...layers.mla import MLASpec, MultiLatentAttention
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES


def _decode_outputs(layer: MultiLatentAttention, x: torch.Tensor, prefill: int):
    """Prefill `prefill` tokens, then decode the rest one at a time; concat outputs."""
    cache = layer.new_cache(x.shape[0], x.shape[1])
    outs = [layer(x[:, :prefill], cache=cache)]
    outs += [layer(x[:, t:t + 1], cache=cache) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1), cache  # (B, N, d_model)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    ds = get_config("deepseek-v2")  # d_c 512, d_R 64, d_h 128, 128 heads, 60 layers (docs/sources.md)
    elems = ds.cached_elements_per_token_per_layer
    d_h = ds.mla.qk_nope_head_dim
    ev.measurements["cached elements/token/layer d_c + d_R"] = elems
    ev.measurements["as a multiple of d_h"] = elems / d_h
    ev.measurements["equivalent GQA groups (d_c + d_R) / (2·d_h)"] = elems / (2 * d_h)
    ev.check("DeepSeek-V2 caches 512 + 64 = 576 elements per token per layer", elems == 576,
             str(elems))
    ev.check("576 = 4.5·d_h, i.e. GQA with 2.25 groups (report Table 1)",
             elems / d_h == 4.5 and elems / (2 * d_h) == 2.25, f"{elems / d_h}·d_h")
    rows = {label: m for label, _, m in compare_variants(ds, 4096)}
    mla, mha, ex = rows["MLA"], rows["MHA"], rows[EXPANDED_MLA]
    ev.measurements["fp16 bytes/token MLA / MHA (d_h heads) / expanded K/V (naive MLA)"] = (
        mla.bytes_per_token, mha.bytes_per_token, ex.bytes_per_token)
    ev.measurements["MLA share of MHA's cache"] = round(mla.bytes_per_token / mha.bytes_per_token, 5)
    ev.check("MLA is 576 / (2·128·128) = 1.76% of a 128-head MHA cache",
             mla.bytes_per_token * 2 * 128 * 128 == mha.bytes_per_token * 576,
             f"{mla.bytes_per_token / mha.bytes_per_token:.4f}")
    ev.check("a decode caching expanded per-head K/V (naive MLA) holds ≈71× MLA's bytes",
             71 < ex.bytes_per_token / mla.bytes_per_token < 71.2,
             f"{ex.bytes_per_token / mla.bytes_per_token:.2f}×")

    # a real latent cache with DeepSeek-V2's per-layer sizes: 576 elements per token
    stack, _ = build_cache(ds.scaled(n_layers=2), context=16, batch=2, dtype="fp16")
    per_tok = stack.nbytes // (2 * 16 * 2 * 2)  # layers · tokens · batch · bytes
    ev.measurements["real LatentKVCache elements/token/layer (from nbytes)"] = per_tok
    ev.check("real cache nbytes gives 576 elements per token per layer", per_tok == 576,
             str(per_tok))

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
    ev.key_figure = (f"DeepSeek-V2: {elems} elements/token/layer = 4.5·d_h = GQA-2.25; "
                     f"{mla.bytes_per_token:,} B/token fp16 vs MHA {mha.bytes_per_token:,}; "
                     f"absorbed == naive (err {err_abs:.0e})")
    return ev


QUESTION = Question(
    id=44,
    title=TITLES[44],
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
        "its cache; DeepSeek-V2-Lite and V3 keep the same 512 + 64 layout."
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
