"""attnlab inside Hugging Face transformers (optional extra `attnlab[hf]`).

    import attnlab.hf
    attnlab.hf.register()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attnlab")

runs every attention call of the model through `attnlab.attention` (docs/conventions.md
§9). Modules: `backend` (the attention function and `register`), `masks` (attnlab masks
from what transformers passes), `conformance` (tiny models of each family checked against
eager attention), `convert` (KV-layout conversions on HF models), `from_pretrained`
(attnlab layers and TinyLM from HF configs and state dicts).
"""
from .backend import NAME, attnlab_attention_forward, register
from .convert import (
    ConversionReport,
    PartialRotary,
    gqa_sweep,
    kv_cache_bytes,
    logit_kl,
    low_rank_kv,
    mha_to_gqa,
    mla_cache_floats,
    pool_kv_heads,
)
from .from_pretrained import from_hf_model, from_pretrained_attention, from_pretrained_lm
from .masks import HFMask, HFMaskInfo, attnlab_mask

__all__ = [
    "NAME",
    "ConversionReport",
    "HFMask",
    "HFMaskInfo",
    "PartialRotary",
    "attnlab_attention_forward",
    "attnlab_mask",
    "from_hf_model",
    "from_pretrained_attention",
    "from_pretrained_lm",
    "gqa_sweep",
    "kv_cache_bytes",
    "logit_kl",
    "low_rank_kv",
    "mha_to_gqa",
    "mla_cache_floats",
    "pool_kv_heads",
    "register",
]
