"""attnlab layers and TinyLM built from Hugging Face configs + state dicts, checked against
the HF modules with the same weights (tiny random-weight configs, no downloads): each
attention layer (prefill and cached decode, left padding via attention_mask /
position_ids), whole-model logits, cached decode, generate, run_with_cache."""
import functools

import pytest
import torch
import transformers as tf

from attnlab.analysis.hooks import hf_patterns, run_with_cache
from attnlab.hf import from_hf_model, from_pretrained_attention, from_pretrained_lm
from attnlab.hf.from_pretrained import attention_spec
from attnlab.layers.attention import Attention
from attnlab.layers.mla import MultiLatentAttention
from attnlab.models import ModelConfig, TinyLM, check_parallel_equals_decode, generate

COMMON = {"vocab_size": 80, "hidden_size": 48, "intermediate_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32,
          "attn_implementation": "eager"}
YARN_DS = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 0.707,
           "mscale_all_dim": 0.707, "original_max_position_embeddings": 8, "beta_fast": 32,
           "beta_slow": 1}
MLA = {"kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 12,
       "first_k_dense_replace": 2, "n_routed_experts": 4, "num_experts_per_tok": 2}
CASES = {  # name: (config class, model class, extra config)
    "llama_gqa_llama3": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 2, "head_dim": 16, "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}),
    "llama_linear_bias": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 1, "attention_bias": True, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}),
    "llama_dynamic": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 2, "max_position_embeddings": 12,
        "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}}),
    "llama_yarn": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 4, "rope_parameters": {
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "truncate": False,
            "original_max_position_embeddings": 8}}),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", {
        "num_key_value_heads": 2, "sliding_window": 5}),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", {
        "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "qwen3_qk_norm": ("Qwen3Config", "Qwen3ForCausalLM", {
        "num_key_value_heads": 2, "head_dim": 8, "use_sliding_window": True, "sliding_window": 4,
        "max_window_layers": 1}),
    "olmo2_qk_norm": ("Olmo2Config", "Olmo2ForCausalLM", {"num_key_value_heads": 2}),
    "deepseek_v2_yarn": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        MLA, q_lora_rank=24, rope_parameters=YARN_DS)),
    "deepseek_v3_bias": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        MLA, num_key_value_heads=4, q_lora_rank=None, attention_bias=True, n_group=1,
        topk_group=1)),
    "deepseek_v3_half": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        MLA, num_key_value_heads=4, q_lora_rank=24, rope_interleave=False, n_group=1,
        topk_group=1, rope_parameters=dict(YARN_DS, mscale=1.0, mscale_all_dim=0.8))),
}
LM_CASES = [c for c in CASES if not c.startswith("olmo2")]  # OLMo-2 is post-norm
ATOL = 2e-5  # float32; outputs are O(1)


@functools.cache
def hf_model(name: str):
    cfg_cls, model_cls, extra = CASES[name]
    torch.manual_seed(0)
    model = getattr(tf, model_cls)(getattr(tf, cfg_cls)(**{**COMMON, **extra})).eval()
    with torch.no_grad():  # larger than the init's 0.02 so that errors are not hidden
        for n, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, 0.25)
            elif "bias" in n:
                p.normal_(0, 0.5)
            else:  # norm weights
                p.uniform_(0.5, 1.5)
    return model


def padded_batch(n: int = 10, pad: int = 3, seed: int = 1):
    """Tokens (2, n), attention_mask with `pad` left-padding tokens in row 1, and HF's
    generate() positions (cumsum(mask) - 1, padding at 1)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, COMMON["vocab_size"], (2, n), generator=g)
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, :pad] = 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return tokens, mask, pos


def hf_calls(model, tokens, mask, pos, prefix: int):
    """Run HF prefill(prefix) + one-token cached decode steps; returns the logits per call
    and, per call, (input, output) of layer 1's attention module."""
    attn = model.model.layers[1].self_attn
    seen = []
    h = attn.register_forward_hook(
        lambda m, a, kw, out: seen.append((kw["hidden_states"], out[0])), with_kwargs=True)
    logits, cache = [], tf.DynamicCache(config=model.config)
    try:
        with torch.no_grad():
            steps = [(0, prefix)] + [(t, t + 1) for t in range(prefix, tokens.shape[1])]
            for a, b in steps:
                out = model(tokens[:, a:b], attention_mask=mask[:, :b], position_ids=pos[:, a:b],
                            cache=cache, use_cache=True)
                logits.append(out.logits)
    finally:
        h.remove()
    return torch.cat(logits, 1), seen


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_hf_attention_prefill_and_cached_decode(name):
    model = hf_model(name)
    layer = from_pretrained_attention(model.config, model.state_dict(), layer_idx=1)
    assert layer.layer_idx == 0  # a standalone layer addresses its own one-layer cache
    assert isinstance(layer, MultiLatentAttention if "deepseek" in name else Attention)
    tokens, mask, pos = padded_batch()
    _, seen = hf_calls(model, tokens, mask, pos, prefix=7)
    cache = layer.new_cache(2, tokens.shape[1])
    keep = mask.bool()
    worst, start = 0.0, 0
    with torch.no_grad():
        for x, ref in seen:
            n = x.shape[1]
            out = layer(x, cache, attention_mask=mask[:, :start + n],
                        position_ids=pos[:, start:start + n])
            real = keep[:, start:start + n]
            worst = max(worst, float((out - ref)[real].abs().max()))
            start += n
    assert worst < ATOL, f"{name}: max |attnlab - HF| {worst:.2e}"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", LM_CASES)
def test_tinylm_logits_match_hf_left_padded_prefill_and_decode(name):
    model = hf_model(name)
    lm = from_hf_model(model)
    assert lm.cfg.tie_embeddings == bool(model.config.tie_word_embeddings)
    tokens, mask, pos = padded_batch()
    ref_dec, _ = hf_calls(model, tokens, mask, pos, prefix=6)
    keep = mask.bool()
    with torch.no_grad():
        ref = model(tokens, attention_mask=mask, position_ids=pos).logits
        out = lm(tokens, attention_mask=mask, position_ids=pos)
        cache = lm.new_cache(2, tokens.shape[1])
        dec = torch.cat([lm(tokens[:, :6], cache, attention_mask=mask[:, :6],
                            position_ids=pos[:, :6])]
                        + [lm(tokens[:, t:t + 1], cache, attention_mask=mask[:, :t + 1],
                              position_ids=pos[:, t:t + 1]) for t in range(6, 10)], 1)
    assert float((out - ref)[keep].abs().max()) < ATOL
    assert float((dec - ref_dec)[keep].abs().max()) < ATOL
    assert float(ref.abs().max()) > 1.0  # the comparison is not between near-zero logits
    if name != "llama_dynamic":  # see test_dynamic_ntk_past_the_original_maximum
        assert check_parallel_equals_decode(lm, tokens, prefix_len=4, atol=ATOL) < ATOL


@pytest.mark.filterwarnings("ignore")
def test_dynamic_ntk_past_the_original_maximum():
    """Dynamic NTK rescales with the call's length: for sequences within
    max_position_embeddings (12) parallel and cached decode agree; a parallel forward over
    20 tokens rotates every position with the frequencies for 20, while cached decode keeps
    keys rotated by the calls that wrote them, so the two differ (the same way in HF and
    attnlab: each matches its HF counterpart)."""
    model, name = hf_model("llama_dynamic"), "llama_dynamic"
    lm = from_hf_model(model)
    assert lm.cfg.max_seq_len == 48  # 12 · factor 4: the point is to run past 12
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, COMMON["vocab_size"], (1, 20), generator=g)
    mask = torch.ones_like(tokens)
    pos = torch.arange(20)[None]
    ref_dec, _ = hf_calls(model, tokens, mask, pos, prefix=8)
    with torch.no_grad():
        ref_par = model(tokens).logits
        par = lm(tokens)
        par_short = lm(tokens[:, :12])
    dec = torch.cat([lm(tokens[:, :8], c := lm.new_cache(1, 20))]
                    + [lm(tokens[:, t:t + 1], c) for t in range(8, 20)], 1).detach()
    assert float((par - ref_par).abs().max()) < ATOL, name
    assert float((dec - ref_dec).abs().max()) < ATOL, name
    assert float((par_short - dec[:, :12]).abs().max()) < ATOL  # a sequence within 12
    assert float((par - dec).abs().max()) > 1e-3  # past it the two differ


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["llama_gqa_llama3", "deepseek_v2_yarn"])
def test_generate_and_run_with_cache_on_converted_model(name):
    model = hf_model(name)
    lm = from_pretrained_lm(model.config, model.state_dict())
    tokens, _, _ = padded_batch(n=6)
    ours = generate(lm, tokens, max_new_tokens=8)
    with torch.no_grad():
        ref = model.generate(tokens, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert torch.equal(ours, ref)
    tokens, mask, _ = padded_batch(n=6)  # prompts of 6 and 3 tokens, left-padded
    ours = generate(lm, tokens, max_new_tokens=8, attention_mask=mask)
    with torch.no_grad():
        ref = model.generate(tokens, attention_mask=mask, max_new_tokens=8, do_sample=False,
                             min_new_tokens=8)
    assert torch.equal(ours, ref)
    acts = run_with_cache(lm, tokens)
    torch.testing.assert_close(acts.logits, model(tokens).logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(acts.patterns(), hf_patterns(model, tokens), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore")
def test_absorbed_mla_and_attention_fn_hook():
    model = hf_model("deepseek_v2_yarn")
    lm = from_hf_model(model, absorb=True)
    tokens, mask, pos = padded_batch()
    with torch.no_grad():
        ref = model(tokens, attention_mask=mask, position_ids=pos).logits
        out = lm(tokens, attention_mask=mask, position_ids=pos)
    assert float((out - ref)[mask.bool()].abs().max()) < ATOL
    # Attention.attention_fn routes the layer's attention through another function
    llama = hf_model("llama_gqa_llama3")
    layer = from_pretrained_attention(llama.config, llama.state_dict(), layer_idx=0)
    x = torch.randn(2, 5, COMMON["hidden_size"])
    calls = []

    def spy(q, k, v, **kw):
        calls.append(tuple(q.shape))
        return torch.zeros_like(q)

    with torch.no_grad():
        base = layer(x)
        layer.attention_fn = spy
        routed = layer(x)
    assert calls == [(2, 4, 5, 16)]
    torch.testing.assert_close(routed, layer.o_proj(torch.zeros(2, 5, 64)))
    assert not torch.allclose(base, routed)


@pytest.mark.filterwarnings("ignore")
def test_bad_inputs_are_refused():
    model = hf_model("llama_gqa_llama3")
    cfg, sd = model.config, model.state_dict()
    with pytest.raises(ValueError, match=r"layer_idx \(2\) must be < num_hidden_layers \(2\)"):
        from_pretrained_attention(cfg, sd, layer_idx=2)
    missing = {k: v for k, v in sd.items() if "layers.0.self_attn.k_proj" not in k}
    with pytest.raises(ValueError, match="(?s)does not fit layer 0 of Attention.*Missing.*k_proj"):
        from_pretrained_attention(cfg, missing, layer_idx=0)
    with pytest.raises(ValueError, match=r"config.model_type \('bert'\) is not supported"):
        attention_spec(tf.BertConfig())
    moe = tf.DeepseekV2Config(**{**COMMON, **MLA, "first_k_dense_replace": 1})
    with pytest.raises(ValueError, match=r"first_k_dense_replace \(1\) < num_hidden_layers \(2\)"):
        from_pretrained_lm(moe, {})
    gelu = tf.LlamaConfig(**{**COMMON, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match=r"hidden_act \('gelu'\) is not supported"):
        from_pretrained_lm(gelu, {})
    with pytest.raises(ValueError, match="OLMo|olmo2"):
        from_hf_model(hf_model("olmo2_qk_norm"))
    layer = from_pretrained_attention(cfg, sd, layer_idx=0)
    x = torch.randn(2, 4, COMMON["hidden_size"])
    with pytest.raises(ValueError, match=r"attention_mask must have shape .* \(2, 4\)"):
        layer(x, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="attention_mask must be bool or integer 0/1"):
        layer(x, attention_mask=torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match=r"position_ids must have shape \(4,\) or \(2, 4\)"):
        layer(x, position_ids=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids must be >= 0"):
        layer(x, position_ids=torch.tensor([-1, 0, 1, 2]))
    from attnlab.cache.sink import SinkKVCache

    sink = SinkKVCache(1, 2, 2, 16, n_sink=1, window=4)
    with pytest.raises(ValueError, match="SinkKVCache assigns positions itself"):
        layer(x, sink, position_ids=torch.arange(4))
    from attnlab.layers.rwkv import RWKVSpec

    rwkv = TinyLM(ModelConfig(vocab_size=16, d_model=32, n_layers=1,
                              mixers=RWKVSpec(n_heads=2)))
    with pytest.raises(ValueError, match=r"attention_mask given, but blocks\[0\].mixer"):
        rwkv(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["qwen2_bias", "qwen3_qk_norm", "llama_gqa_llama3"])
def test_kv_layout_conversions_keep_bias_norm_and_scaling(name):
    """layers.convert on checkpoint layers: GQA -> MHA is exact and MHA -> GQA of the tied
    heads returns the same layer (per-projection bias, per-head q/k norm and RoPE scaling
    carried over)."""
    from attnlab.layers.convert import gqa_to_mha, mha_to_gqa

    model = hf_model(name)
    layer = from_pretrained_attention(model.config, model.state_dict(), layer_idx=0)
    x = torch.randn(2, 6, COMMON["hidden_size"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mha = gqa_to_mha(layer)
        back = mha_to_gqa(mha, layer.n_kv_heads)
        torch.testing.assert_close(mha(x), layer(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(back(x), layer(x), atol=1e-6, rtol=0)
    olmo = hf_model("olmo2_qk_norm")
    proj = from_pretrained_attention(olmo.config, olmo.state_dict(), layer_idx=0)
    with pytest.raises(ValueError, match=r"qk_norm \('proj'\) normalises over all KV heads"):
        gqa_to_mha(proj)


@pytest.mark.filterwarnings("ignore")
def test_config_dict_and_checkpoint_dtype():
    """A config.json-style dict works like the config object; the layer takes the
    checkpoint's dtype (weights copied, not shared)."""
    model = hf_model("qwen2_bias")
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    layer = from_pretrained_attention(model.config.to_dict(), sd, layer_idx=1)
    assert layer.q_proj.weight.dtype == torch.bfloat16 and layer.o_proj.bias is None
    assert layer.q_proj.bias is not None and layer.q_proj.weight.data_ptr() != \
        sd["model.layers.1.self_attn.q_proj.weight"].data_ptr()
    x = torch.randn(1, 4, COMMON["hidden_size"], dtype=torch.bfloat16)
    ref = from_pretrained_attention(model.config, model.state_dict(), layer_idx=1)
    with torch.no_grad():
        err = (layer(x).float() - ref(x.float())).abs().max()
    assert float(err) < 0.1  # bf16 weights and activations against float32
