"""`attnlab kv path/to/config.json` equals the bytes a real transformers `DynamicCache` holds.

Each case builds a tiny random-weight model from a transformers config, saves its
config.json, prefills a batch longer than any sliding window, and counts every tensor's
bytes in the cache it returns; the calculator, reading only the saved config.json, must
give exactly that figure (and the CLI too).
"""
from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from typer.testing import CliRunner

from attnlab.analysis.hf_config import read_hf_config
from attnlab.analysis.memory import kv_memory
from attnlab.cli import _load_commands, app

_load_commands()
SMALL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
DS = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
      "num_hidden_layers": 2, "num_attention_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24,
      "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
      "max_position_embeddings": 128}
CASES = {  # name -> (config, number of window layers expected)
    "llama": (lambda: T.LlamaConfig(**SMALL), 0),
    "mistral-window": (lambda: T.MistralConfig(**SMALL, sliding_window=8), 3),
    "gemma2-alternating": (lambda: T.Gemma2Config(**dict(SMALL, num_hidden_layers=4),
                                                  head_dim=8, sliding_window=8), 2),
    "qwen2-bias": (lambda: T.Qwen2Config(**SMALL), 0),
    "qwen2-max-window-layers": (lambda: T.Qwen2Config(**SMALL, use_sliding_window=True,
                                                      sliding_window=6, max_window_layers=1), 2),
    "deepseek-v2-mla": (lambda: T.DeepseekV2Config(**DS), 0),
    "deepseek-v3-mla": (lambda: T.DeepseekV3Config(**DS, n_group=1, topk_group=1), 0),
    "gpt2": (lambda: T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=64), 0),
    "falcon-mqa": (lambda: T.FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, multi_query=True), 0),
    "falcon-new-arch": (lambda: T.FalconConfig(vocab_size=64, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               num_kv_heads=2,
                                               new_decoder_architecture=True), 0),
}


def kv_tensors(cache) -> list[torch.Tensor]:
    """The K and V tensors of every layer (self- and cross-attention caches). Window layers
    also hold an 8-byte int64 scalar (their window size): bookkeeping, not counted."""
    parts = [cache.self_attention_cache, cache.cross_attention_cache] \
        if hasattr(cache, "cross_attention_cache") else [cache]
    return [t for c in parts for layer in c.layers for t in (layer.keys, layer.values)]


def cache_bytes(cache) -> int:
    """Bytes of the cached K/V tensors (numel · element size)."""
    return sum(t.numel() * t.element_size() for t in kv_tensors(cache))


def prefill(model, batch: int, n: int, **extra):
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, n))
    with torch.no_grad():
        out = model(ids, use_cache=True, **extra)
    return out.past_key_values


def saved(cfg, tmp_path) -> str:
    cfg.save_pretrained(tmp_path)
    return str(tmp_path / "config.json")


@pytest.mark.parametrize("name", list(CASES))
def test_calculator_equals_dynamic_cache_after_prefill(name, tmp_path):
    make, n_local = CASES[name]
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(make()).eval()
    path = saved(model.config, tmp_path)
    r = read_hf_config(path)
    assert sum(w is not None for w in r.arch.layer_windows) == n_local
    B, N = 2, 21  # longer than every window here
    real = cache_bytes(prefill(model, B, N))
    assert kv_memory(r.cached, N, B, "fp32").bytes_total == real
    res = CliRunner().invoke(app, ["kv", path, "--context", str(N), "--batch", str(B),
                                   "--dtype", "fp32", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["bytes_total"] == real and doc["counted"] == "hf"


@pytest.mark.parametrize("n", [3, 7, 8, 9, 30])
def test_window_layers_hold_w_minus_1_around_the_window(n, tmp_path):
    model = T.AutoModelForCausalLM.from_config(T.MistralConfig(**SMALL, sliding_window=8)).eval()
    r = read_hf_config(saved(model.config, tmp_path))
    real = cache_bytes(prefill(model, 1, n))
    assert kv_memory(r.cached, n, 1, "fp32").bytes_total == real
    per_token = 3 * 2 * 2 * 8 * 4  # layers · (K, V) · KV heads · head_dim · fp32
    assert real == min(n, 7) * per_token  # W − 1 = 7 tokens kept between steps
    assert kv_memory(r.arch, n, 1, "fp32").bytes_total == min(n, 8) * per_token


def test_window_storage_after_prefill_and_after_a_decode_step():
    """The W − 1 kept tokens are a view of the step's concatenated K/V: right after a
    prefill of N tokens each window layer's storage still spans all N, after one decode
    step it spans W (measured with transformers 5.24)."""
    model = T.AutoModelForCausalLM.from_config(T.MistralConfig(**SMALL, sliding_window=8)).eval()
    cache = prefill(model, 1, 30)
    row = 2 * 8 * 4  # KV heads · head_dim · fp32 bytes per token
    assert {t.untyped_storage().nbytes() for t in kv_tensors(cache)} == {30 * row}
    with torch.no_grad():
        model(torch.tensor([[1]]), cache=cache, use_cache=True)
    assert {t.shape[-2] for t in kv_tensors(cache)} == {7}
    assert {t.untyped_storage().nbytes() for t in kv_tensors(cache)} == {8 * row}


def test_t5_self_and_cross_attention(tmp_path):
    cfg = T.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                     num_decoder_layers=3, num_heads=4)
    torch.manual_seed(0)
    model = T.T5ForConditionalGeneration(cfg).eval()
    path = saved(model.config, tmp_path)
    r = read_hf_config(path, context=512)
    assert (r.arch.n_layers, r.arch.encoder_layers, r.arch.head_dim) == (3, 2, 8)
    B, S, N = 2, 13, 5
    enc = torch.randint(0, 64, (B, S))
    with torch.no_grad():
        cache = model(input_ids=enc, decoder_input_ids=torch.randint(0, 64, (B, N)),
                      use_cache=True).past_key_values
    real = cache_bytes(cache)
    assert kv_memory(r.cached, N, B, "fp32", encoder_length=S).bytes_total == real
    res = CliRunner().invoke(app, ["kv", path, "--context", str(N), "--batch", str(B),
                                   "--encoder-length", str(S), "-d", "fp32", "--json"])
    assert json.loads(res.stdout)["bytes_total"] == real


def test_mla_cache_is_latent_not_expanded(tmp_path):
    """transformers 5.x caches DeepSeek's latent + RoPE key: kv_lora_rank + qk_rope_head_dim
    elements per token per layer, far below expanded per-head K/V."""
    model = T.AutoModelForCausalLM.from_config(T.DeepseekV2Config(**DS)).eval()
    cache = prefill(model, 1, 10)
    shapes = {tuple(t.shape[-1:]) for t in kv_tensors(cache)}
    assert shapes == {(16,), (8,)}  # kv_lora_rank, qk_rope_head_dim
    assert cache_bytes(cache) == 2 * 10 * (16 + 8) * 4
    expanded = 2 * 10 * 4 * ((8 + 8) + 8) * 4  # layers · T · heads · (K + V) · fp32
    assert cache_bytes(cache) < expanded


def test_model_cache_count_and_table(tmp_path):
    path = saved(T.Gemma2Config(**dict(SMALL, num_hidden_layers=4), head_dim=8,
                                sliding_window=8), tmp_path)
    doc = json.loads(CliRunner().invoke(app, ["kv", path, "-c", "21", "--model-cache",
                                              "-d", "fp32", "--json"]).stdout)
    per_layer_token = 2 * 2 * 8 * 4
    assert doc["counted"] == "model"
    assert doc["bytes_total"] == (8 + 21 + 8 + 21) * per_layer_token
    assert doc["other_count"]["bytes_total"] == (7 + 21 + 7 + 21) * per_layer_token
    out = CliRunner().invoke(app, ["kv", path, "-c", "21", "--dtype", "bf16"]).output
    assert "DynamicCache" in out and "window-capped layers" in out and "model's own" in out


def test_dtype_and_text_config_are_read(tmp_path):
    body = {"model_type": "gemma3", "torch_dtype": "bfloat16",
            "text_config": dict(SMALL, model_type="gemma3_text", num_hidden_layers=12,
                                head_dim=8, sliding_window=16)}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(body))
    r = read_hf_config(str(tmp_path))  # a folder holding config.json
    assert r.dtype == "bf16" and r.model_type == "gemma3_text"
    assert [i for i, w in enumerate(r.arch.layer_windows) if w is None] == [5, 11]
    doc = json.loads(CliRunner().invoke(app, ["kv", str(p), "-c", "100", "--json"]).stdout)
    assert doc["dtype"] == "bf16"
    assert doc["bytes_per_sequence"] == (10 * 15 + 2 * 100) * 2 * 2 * 8 * 2


@pytest.mark.parametrize("body, message", [
    ({"model_type": "llama"}, "layer count"),
    ({"num_hidden_layers": 2, "num_attention_heads": 3, "hidden_size": 32,
      "max_position_embeddings": 8}, "not divisible"),
    ({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32},
     "no maximum context"),
    ({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32,
      "max_position_embeddings": 8, "layer_types": ["chunked_attention"] * 2,
      "sliding_window": 4}, "chunked_attention"),
    ({"num_hidden_layers": -1}, "positive int"),
])
def test_bad_configs(body, message, tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=message):
        read_hf_config(str(p))
    res = CliRunner().invoke(app, ["kv", str(p)])
    assert res.exit_code != 0 and message in " ".join(res.output.split())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_hf_config(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not a config.json"):
        read_hf_config(str(tmp_path / "missing.json"))
