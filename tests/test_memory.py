"""KV-memory calculator: sourced figures, windows, cross-attention, MLA, and == real cache bytes."""
from __future__ import annotations

import pytest
import torch

from attnlab.analysis.configs import ArchConfig, MLAGeometry, get_config, list_configs
from attnlab.analysis.memory import (
    EXPANDED_MLA,
    build_cache,
    compare_variants,
    dtype_bytes,
    format_bytes,
    kv_memory,
    standard_kv_bytes,
)

ALL = [c.name for c in list_configs()]


def test_llama2_70b_headline_figures():
    m = kv_memory(get_config("llama-2-70b"), context=4096, batch=1, dtype="fp16")
    assert m.bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert m.bytes_per_sequence == 327_680 * 4096 == int(1.25 * 2**30)
    assert format_bytes(m.bytes_per_sequence) == "1.25 GiB"
    assert m.bytes_total == m.bytes_per_sequence
    assert kv_memory(get_config("llama-2-70b"), 4096, batch=8).bytes_total == 10 * 2**30


def test_deepseek_v2_576_elements():
    m = kv_memory(get_config("DeepSeek-V2"), context=1000)
    assert m.cached_elements_per_token_per_layer == 512 + 64 == 576
    assert m.bytes_per_token == 60 * 576 * 2


@pytest.mark.parametrize("name", ALL)
def test_fp16_bytes_per_token_match_facts_table(name):
    cfg = get_config(name)
    m = kv_memory(cfg, context=1, dtype="fp16")
    assert m.bytes_per_token == cfg.fp16_kib_per_token * 1024


def test_standard_formula_agrees_with_calculator():
    cfg = get_config("llama-3-8b")
    m = kv_memory(cfg, 3000, batch=3, dtype="bf16")
    assert m.bytes_total == standard_kv_bytes(32, 8, 128, 3000, 2, batch=3)


def test_sliding_window_caps_mistral_and_alternates_gemma():
    mistral = kv_memory(get_config("mistral-7b"), context=32768)
    assert set(mistral.tokens_per_layer) == {4096}
    assert mistral.bytes_per_sequence == 512 * 2**20  # docs/sources.md: capped at 4096 → 512 MiB/seq
    assert kv_memory(get_config("mixtral-8x7b"), 32768).bytes_per_sequence == 4 * 2**30
    g = kv_memory(get_config("gemma-2-9b"), context=8192)
    assert g.tokens_per_layer[0] == 4096 and g.tokens_per_layer[1] == 8192  # layer 0 local
    assert g.tokens_per_layer.count(4096) == g.tokens_per_layer.count(8192) == 21
    assert g.bytes_per_sequence == 21 * (4096 + 8192) * 2 * 8 * 256 * 2
    short = kv_memory(get_config("gemma-2-9b"), context=100)
    assert short.bytes_per_sequence == 100 * short.bytes_per_token  # below W nothing caps


def test_cross_attention_counts_encoder_length():
    t5 = get_config("t5-base")
    m = kv_memory(t5, context=10, encoder_length=512)
    per = 2 * 12 * 12 * 64 * 2  # 36 KiB per token (docs/sources.md)
    assert m.cross_bytes_per_encoder_token == per
    assert m.bytes_per_sequence == per * 10 + per * 512
    assert kv_memory(t5, context=7).encoder_length == 7  # default: encoder length = context
    with pytest.raises(ValueError, match="only to encoder-decoder"):
        kv_memory(get_config("gpt2"), 10, encoder_length=5)


def test_compare_variants_ratios():
    rows = {label: (rel, m) for label, rel, m in compare_variants(get_config("llama-2-70b"), 4096)}
    assert rows["GQA-8"][0] and not rows["MHA"][0]
    assert rows["MHA"][1].bytes_total == 8 * rows["GQA-8"][1].bytes_total
    assert rows["GQA-8"][1].bytes_total == 8 * rows["MQA"][1].bytes_total
    assert rows["MLA"][1].cached_elements_per_token_per_layer == 4 * 128 + 64
    falcon = {label for label, _, _ in compare_variants(get_config("falcon-7b"), 2048)}
    assert falcon == {"MHA", "MQA", "MLA"}  # 71 heads: no GQA-8
    ds = {label: m for label, _, m in compare_variants(get_config("deepseek-v2"), 128)}
    ratio = ds[EXPANDED_MLA].bytes_per_token / ds["MLA"].bytes_per_token
    # a decode caching expanded per-head K/V (d_h + d_R keys, d_v values, 128 heads) holds
    # 128·(192 + 128) / 576 ≈ 71x MLA's bytes; transformers 5.x caches the latent instead
    # (tests/test_kv_config_json.py measures its DynamicCache)
    assert ratio == pytest.approx(128 * (128 + 64 + 128) / 576)
    assert ds["MLA"].bytes_per_token / ds["MHA"].bytes_per_token == pytest.approx(576 / 32768)
    t5 = {label for label, _, _ in compare_variants(get_config("t5-base"), 16)}
    assert "MLA" not in t5


# --- the calculator equals nbytes of real attnlab caches ------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", ["fp16", "fp32", "int8"])
def test_calculator_equals_real_cache_full_depth_short_context(name, dtype):
    """Every layer of the real model, a short context: nbytes == calculator."""
    cfg = get_config(name)
    mem = kv_memory(cfg, context=5, batch=2, dtype=dtype)
    stack, cross = build_cache(cfg, context=5, batch=2, dtype=dtype)
    assert stack.n_layers == cfg.n_layers
    total = stack.nbytes + (cross.nbytes if cross is not None else 0)
    assert total == mem.bytes_total


SCALED = [  # (name, changes) — fewer layers / smaller window, per-layer geometry kept
    ("llama-2-70b", {"n_layers": 3}),
    ("falcon-7b", {"n_layers": 2}),
    ("mistral-7b", {"n_layers": 2, "window": 16}),
    ("gemma-2-9b", {"n_layers": 5, "window": 16}),
    ("deepseek-v2", {"n_layers": 3}),
    ("deepseek-v2-lite", {"n_layers": 2}),
    ("t5-base", {"n_layers": 2, "encoder_layers": 2}),
]


@pytest.mark.parametrize("name, changes", SCALED)
def test_calculator_equals_real_cache_scaled_down(name, changes):
    full = get_config(name)
    cfg = full.scaled(**changes)
    T, B = 40, 2
    enc = 23 if cfg.is_encoder_decoder else None
    mem = kv_memory(cfg, context=T, batch=B, dtype="fp32", encoder_length=enc)
    stack, cross = build_cache(cfg, context=T, batch=B, dtype="fp32", encoder_length=enc)
    assert stack.nbytes + (cross.nbytes if cross else 0) == mem.bytes_total
    # same per-layer geometry: the full model's per-layer figure is the scaled one's
    assert mem.cached_elements_per_token_per_layer == full.cached_elements_per_token_per_layer
    assert kv_memory(full, 1).bytes_per_token // full.n_layers == \
        kv_memory(cfg, 1).bytes_per_token // cfg.n_layers
    # fill every layer to the context through the real update path: used == allocated
    g = torch.Generator().manual_seed(0)
    for i in range(cfg.n_layers):
        layer = stack.layer(i)
        if cfg.mla is not None:
            new = (torch.randn(B, T, cfg.mla.kv_lora_rank, generator=g),
                   torch.randn(B, T, cfg.mla.qk_rope_head_dim, generator=g))
        else:
            n = layer.capacity  # a window layer keeps the last min(T, W) tokens
            new = (torch.randn(B, cfg.n_kv_heads, n, cfg.head_dim, generator=g),
                   torch.randn(B, cfg.n_kv_heads, n, cfg.v_head_dim, generator=g))
        stack.update(i, *new)
    assert stack.used_nbytes == mem.self_bytes_per_sequence * B


def test_hand_built_config_and_windows_in_real_cache():
    cfg = ArchConfig("toy", n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16,
                     max_context=64, source="test", window=8, window_pattern="alternate")
    stack, _ = build_cache(cfg, context=20, batch=1, dtype="fp32")
    assert [stack.layer(i).capacity for i in range(4)] == [8, 20, 8, 20]
    assert stack.nbytes == kv_memory(cfg, 20, dtype="fp32").bytes_total == (8 + 20) * 2 * 2 * 2 * 16 * 4


# --- configs and bad input -------------------------------------------------------------
def test_lookup_is_case_insensitive_with_aliases():
    assert get_config("LLAMA-2-70B") is get_config("llama2-70b") is get_config("Llama_2_70b")
    assert get_config("gpt2").name == "GPT-2"
    with pytest.raises(ValueError, match=r"unknown model \('gpt-5'\); known models: .*Llama-2-70B"):
        get_config("gpt-5")
    with pytest.raises(TypeError, match="model name must be a str"):
        get_config(70)


def test_config_facts():
    l70 = get_config("llama-2-70b")
    assert (l70.n_kv_heads, l70.group_size, l70.kind) == (8, 8, "gqa")
    f = get_config("falcon-7b")
    assert f.kind == "mqa" and f.n_heads == 71 and f.head_dim * f.n_heads == f.d_model
    assert "71" in f.notes
    assert get_config("mixtral-8x7b").window is None and "4096" in get_config("mixtral").notes
    assert get_config("gemma-2-27b").layer_windows[:4] == (4096, None, 4096, None)
    ds = get_config("deepseek-v2")
    assert ds.mla == MLAGeometry(512, 64, 128, 128, 1536) and ds.n_kv_heads is None
    assert get_config("deepseek-v2-lite").mla.q_lora_rank is None
    for cfg in list_configs():
        assert cfg.source


def test_bad_input_messages():
    cfg = get_config("gpt2")
    with pytest.raises(ValueError, match=r"context \(0\) must be >= 1"):
        kv_memory(cfg, 0)
    with pytest.raises(ValueError, match=r"batch \(-1\) must be >= 1"):
        kv_memory(cfg, 10, batch=-1)
    with pytest.raises(ValueError, match=r"dtype \('fp8'\) must be one of"):
        kv_memory(cfg, 10, dtype="fp8")
    assert dtype_bytes("BF16") == 2 and dtype_bytes("float32") == 4
    with pytest.raises(ValueError, match=r"n_heads \(12\) must be divisible by n_kv_heads \(5\)"):
        cfg.variant("gqa", 5)
    with pytest.raises(ValueError, match="kind"):
        cfg.variant("mxa")
    with pytest.raises(ValueError, match=r"window \(0\) must be >= 1"):
        cfg.scaled(window=0)
    with pytest.raises(ValueError, match="unknown field"):
        cfg.scaled(n_layer=3)
    with pytest.raises(ValueError, match="n_kv_heads must be given"):
        ArchConfig("x", 1, 8, 2, None, 4, 8, source="t")
    assert kv_memory(get_config("llama-2-7b"), 8192).exceeds_max_context
