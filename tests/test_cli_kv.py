"""`attnlab kv`: table, JSON, comparison, list, and clear errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from attnlab.analysis.configs import list_configs
from attnlab.cli import _load_commands, app

_load_commands()


def _run(*args: str):
    return CliRunner().invoke(app, ["kv", *args])


def test_llama2_70b_table_reports_headline_figures():
    res = _run("llama-2-70b", "--context", "4096", "--batch", "1")
    assert res.exit_code == 0, res.output
    assert "327,680" in res.output and "1.25 GiB" in res.output


def test_json_is_one_object_with_required_keys():
    res = _run("LLAMA-2-70B", "--context", "4096", "--batch", "8", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # the whole stdout parses: exactly one JSON object
    assert doc["bytes_per_token"] == 327_680
    assert doc["bytes_per_sequence"] == 327_680 * 4096
    assert doc["bytes_total"] == 8 * 327_680 * 4096
    assert doc["cached_elements_per_token_per_layer"] == 2 * 8 * 128
    assert doc["model"] == "Llama-2-70B" and doc["dtype"] == "fp16"


def test_deepseek_v2_reports_576_elements():
    res = _run("deepseek-v2", "--json")
    doc = json.loads(res.stdout)
    assert doc["cached_elements_per_token_per_layer"] == 576
    assert doc["context"] == 131072  # default: the model's max context
    assert "576" in _run("deepseek-v2").output


def test_compare_json_and_table():
    res = _run("llama-2-70b", "--context", "4096", "--batch", "8", "--compare", "--json")
    doc = json.loads(res.stdout)
    by = {v["label"]: v for v in doc["variants"]}
    assert by["GQA-8"]["released"] and by["GQA-8"]["ratio_to_released"] == 1
    assert by["MHA"]["ratio_to_released"] == 8 and by["MQA"]["ratio_to_released"] == 0.125
    assert by["MLA"]["cached_elements_per_token_per_layer"] == 576
    table = _run("llama-2-70b", "--context", "4096", "--batch", "8", "--compare").output
    for label in ("MHA", "GQA-8 *", "MQA", "MLA", "80 GiB"):
        assert label in table


@pytest.mark.parametrize("dtype, factor", [("fp32", 2), ("bf16", 1), ("int8", 0.5)])
def test_dtype_scales_bytes(dtype, factor):
    doc = json.loads(_run("gpt2", "--context", "100", "--dtype", dtype, "--json").stdout)
    assert doc["bytes_per_token"] == 36 * 1024 * factor


def test_window_and_encoder_length():
    doc = json.loads(_run("mistral-7b", "--context", "32768", "--json").stdout)
    assert doc["bytes_per_sequence"] == 512 * 2**20
    assert "window-capped layers" in _run("gemma-2-9b", "--context", "8192").output
    doc = json.loads(_run("t5-base", "--context", "10", "--encoder-length", "512", "--json").stdout)
    assert doc["encoder_length"] == 512
    assert doc["bytes_per_sequence"] == 36 * 1024 * (10 + 512)


def test_list_shows_every_model():
    res = _run("--list")
    assert res.exit_code == 0
    for cfg in list_configs():
        assert cfg.name in res.output
    doc = json.loads(_run("--list", "--json").stdout)
    assert "llama2-70b" in next(m for m in doc["models"] if m["name"] == "Llama-2-70B")["aliases"]


@pytest.mark.parametrize("args, message", [
    (["gpt-5"], "unknown model ('gpt-5'); known models"),
    (["gpt2", "--context", "0"], "--context"),
    (["gpt2", "--batch", "-3"], "--batch"),
    (["gpt2", "--context", "ten"], "--context"),
    (["gpt2", "--dtype", "fp8"], "dtype ('fp8') must be one of"),
    (["gpt2", "--encoder-length", "5"], "only to encoder-decoder"),
    ([], "MODEL is required"),
])
def test_bad_input_fails_with_clear_message(args, message):
    res = _run(*args)
    assert res.exit_code != 0
    text = " ".join(res.output.split())  # rich wraps the error box
    assert message in text.replace("│ ", "").replace(" │", ""), res.output


def test_context_beyond_max_is_flagged():
    res = _run("gpt2", "--context", "4096")
    assert res.exit_code == 0 and "exceeds" in res.output


def test_mla_compare_states_what_transformers_caches():
    out = " ".join(_run("deepseek-v2", "--context", "4096", "--compare").output.split())
    assert "expanded K/V" in out and "holds the latent and the RoPE key" in out
    assert "caches the expanded K/V" not in out  # the stale claim about transformers
    doc = json.loads(_run("deepseek-v2", "-c", "4096", "--compare", "--json").stdout)
    by = {v["label"]: v for v in doc["variants"]}
    assert by["MLA"]["released"] and by["MLA"]["cached_elements_per_token_per_layer"] == 576
    assert 71 < by["expanded K/V"]["ratio_to_released"] < 71.2


def test_hf_cache_count_for_a_name():
    doc = json.loads(_run("mistral-7b", "--context", "32768", "--hf-cache", "--json").stdout)
    assert doc["counted"] == "hf" and doc["tokens_per_layer"] == [4095] * 32
    assert doc["other_count"]["bytes_per_sequence"] == 512 * 2**20
    assert json.loads(_run("gpt2", "-c", "9", "--json").stdout)["counted"] == "model"
