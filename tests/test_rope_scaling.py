"""RoPE scaling (linear, dynamic NTK, YaRN, Llama 3) against transformers' rope init
functions and rotary modules, plus the properties that need no reference."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DeepseekV2Config, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v2.modeling_deepseek_v2 import (
    DeepseekV2RotaryEmbedding,
    apply_rotary_emb,
)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from attnlab.hf.rope_config import rope_from_config
from attnlab.ops.rope import apply_rope, rope_angles
from attnlab.ops.rope_scaling import RopeScaling, rope_inv_freq, yarn_mscale

MAX_POS = 64  # max_position_embeddings of the test configs
HEAD_DIM = 32
YARN = {"rope_type": "yarn", "original_max_position_embeddings": 16}
ROPE_CASES = {
    "default": {},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {**YARN, "factor": 4.0},
    "yarn_mscale": {**YARN, "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                    "beta_fast": 32, "beta_slow": 1},
    "yarn_mscale_ratio": {**YARN, "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.5},
    "yarn_no_truncate": {**YARN, "factor": 4.0, "truncate": False, "beta_fast": 16,
                         "beta_slow": 2},
    "yarn_attention_factor": {**YARN, "factor": 4.0, "attention_factor": 0.8},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def llama_config(params: dict) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=HEAD_DIM,
                       max_position_embeddings=MAX_POS,
                       rope_parameters=dict(rope_theta=500.0, **params))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(ROPE_CASES))
@pytest.mark.parametrize("seq_len", [None, 40, 200])  # within and past max_position
def test_inv_freq_and_attention_factor_match_transformers(name, seq_len):
    cfg = llama_config(ROPE_CASES[name])
    base, scaling = rope_from_config(cfg)
    kind = cfg.rope_parameters["rope_type"]
    if kind == "default":
        ref, ref_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
        assert scaling is None
    else:
        ref, ref_factor = ROPE_INIT_FUNCTIONS[kind](cfg, None, seq_len=seq_len)
    mine = rope_inv_freq(HEAD_DIM, base, scaling, seq_len)
    torch.testing.assert_close(mine, ref.double(), rtol=3e-7, atol=0)
    assert (1.0 if scaling is None else scaling.rope_factor) == pytest.approx(ref_factor, rel=1e-12)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_rotation_matches_rotary_module_with_batched_positions(name):
    """cos/sin of LlamaRotaryEmbedding (attention factor included) applied by
    apply_rotary_pos_emb, against apply_rope with (B, N) positions; past max_position for
    dynamic NTK (HF grows its frequencies to the call's length)."""
    cfg = llama_config(ROPE_CASES[name])
    base, scaling = rope_from_config(cfg)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 7, HEAD_DIM, generator=g)
    for pos in (torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 1, 2, 3]]),
                torch.arange(90, 97).repeat(2, 1)):
        cos, sin = LlamaRotaryEmbedding(cfg)(q, pos)  # (B, N, D)
        ref, _ = apply_rotary_pos_emb(q, q, cos, sin)
        mine = apply_rope(q, pos, base=base, scaling=scaling)
        torch.testing.assert_close(mine, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_deepseek_yarn_interleaved_rotation_and_softmax_scale():
    """DeepSeek-V2's rope part: interleaved pairs, YaRN with mscale == mscale_all_dim (the
    rotation factor cancels to 1; the softmax scale carries m(factor, mscale_all_dim)^2)."""
    from attnlab.layers.mla import mla_scale

    cfg = DeepseekV2Config(hidden_size=64, num_attention_heads=2, qk_rope_head_dim=8,
                           qk_nope_head_dim=8, max_position_embeddings=MAX_POS,
                           rope_parameters=dict(ROPE_CASES["yarn_mscale"], rope_theta=10000.0))
    base, scaling = rope_from_config(cfg)
    x = torch.randn(2, 1, 5, 8, generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 1, 2, 3]])
    ref, _ = apply_rotary_emb(x, x, DeepseekV2RotaryEmbedding(cfg)(x, pos))
    torch.testing.assert_close(apply_rope(x, pos, base=base, interleaved=True, scaling=scaling),
                               ref, atol=2e-5, rtol=1e-5)
    expected = 16 ** -0.5 * (0.1 * 0.707 * math.log(40.0) + 1.0) ** 2
    assert mla_scale(16, scaling) == pytest.approx(expected, rel=1e-12)


def test_linear_is_position_interpolation_and_dynamic_starts_unscaled():
    x = torch.randn(1, 2, 6, 16, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(0, 24, 4)
    lin = RopeScaling("linear", factor=4.0)
    # linear: rotating position p with θ/4 == rotating position p/4 with θ
    torch.testing.assert_close(apply_rope(x, pos, scaling=lin), apply_rope(x, pos // 4),
                               atol=1e-6, rtol=0)
    dyn = RopeScaling("dynamic", factor=2.0, original_max_position=32)
    torch.testing.assert_close(apply_rope(x, pos, scaling=dyn), apply_rope(x, pos))
    # past L the base grows: the rotation of the same position changes with the call
    far = torch.arange(40, 46)
    assert not torch.allclose(apply_rope(x, far, scaling=dyn), apply_rope(x, far), atol=1e-3)
    cos_short, _ = rope_angles(torch.tensor([5]), 16, scaling=dyn)
    cos_long, _ = rope_angles(torch.tensor([5, 60]), 16, scaling=dyn)
    assert not torch.allclose(cos_short[0], cos_long[0])  # frequencies follow the call


def test_yarn_factor_from_max_position_and_mscale():
    s = RopeScaling("yarn", factor=None, original_max_position=16, max_position=64)
    assert s.factor == 4.0
    assert s.rope_factor == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert yarn_mscale(0.5) == 1.0
    assert RopeScaling("yarn", factor=4.0, original_max_position=16,
                       mscale=1.0, mscale_all_dim=1.0).rope_factor == 1.0


@pytest.mark.parametrize("kwargs, err, match", [
    ({"kind": "ntk"}, ValueError, r"kind \('ntk'\) must be one of"),
    ({"kind": "yarn", "factor": 4.0}, ValueError, "original_max_position is required"),
    ({"kind": "linear", "factor": 0.0}, ValueError, r"factor \(0.0\) must be a number > 0"),
    ({"kind": "linear", "factor": None}, ValueError, r"factor \(None\) is only allowed"),
    ({"kind": "llama3", "factor": 8.0, "original_max_position": 16, "low_freq_factor": 4.0,
          "high_freq_factor": 1.0}, ValueError, r"high_freq_factor \(1.0\) must be >"),
    ({"kind": "llama3", "factor": 8.0, "original_max_position": 16}, ValueError,
     r"low_freq_factor \(None\) must be a number > 0"),
    ({"kind": "dynamic", "factor": 2.0, "original_max_position": 0}, ValueError,
     r"original_max_position \(0\) must be >= 1"),
])
def test_bad_scaling_configs(kwargs, err, match):
    with pytest.raises(err, match=match):
        RopeScaling(**kwargs)


def test_bad_positions_and_unsupported_configs():
    x = torch.randn(2, 1, 4, 8)
    with pytest.raises(ValueError, match=r"shape \(B, 4\) with B = x.shape\[0\] \(2\)"):
        apply_rope(x, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="positions must hold integers"):
        apply_rope(x, torch.zeros(4))
    with pytest.raises(TypeError, match="scaling must be a RopeScaling"):
        rope_inv_freq(8, 10000.0, {"kind": "linear"})
    cfg = llama_config({"rope_type": "longrope", "factor": 2.0, "short_factor": [1.0] * 16,
                            "long_factor": [1.0] * 16, "original_max_position_embeddings": 16})
    with pytest.raises(ValueError, match=r"rope_type \('longrope'\) is not supported"):
        rope_from_config(cfg)
    partial = llama_config({})
    partial.rope_parameters["partial_rotary_factor"] = 0.5
    with pytest.raises(ValueError, match=r"partial_rotary_factor \(0.5\) is not supported"):
        rope_from_config(partial)


@st.composite
def rope_params(draw):
    kind = draw(st.sampled_from(["linear", "dynamic", "yarn", "llama3"]))
    p = {"rope_type": kind, "rope_theta": draw(st.sampled_from([500.0, 1e4, 5e5])),
         "factor": draw(st.floats(1.0, 64.0))}
    if kind in ("yarn", "llama3"):
        p["original_max_position_embeddings"] = draw(st.sampled_from([8, 16, 48]))
    if kind == "yarn":
        p["beta_fast"] = draw(st.sampled_from([8.0, 32.0]))
        p["beta_slow"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
        p["truncate"] = draw(st.booleans())
        if draw(st.booleans()):
            p["mscale"], p["mscale_all_dim"] = draw(st.floats(0.1, 1.0)), draw(st.floats(0.1, 1.0))
    if kind == "llama3":
        p["low_freq_factor"] = draw(st.floats(0.5, 2.0))
        p["high_freq_factor"] = p["low_freq_factor"] * draw(st.floats(1.5, 8.0))
    return p


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=40, deadline=None)
@given(params=rope_params(), head_dim=st.sampled_from([8, 16, 64]),
       seq_len=st.sampled_from([None, 30, 500]))
def test_fuzz_scaled_frequencies_against_transformers(params, head_dim, seq_len):
    """Differential property test: any scaling config read from an HF config gives
    transformers' inverse frequencies and attention factor."""
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=head_dim,
                      max_position_embeddings=MAX_POS, rope_parameters=dict(params))
    base, scaling = rope_from_config(cfg)
    ref, ref_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, None, seq_len=seq_len)
    torch.testing.assert_close(scaling.inv_freq(head_dim, base, seq_len), ref.double(),
                               rtol=1e-6, atol=0)
    assert scaling.rope_factor == pytest.approx(ref_factor, rel=1e-9)
