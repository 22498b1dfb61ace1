"""attnlab's own layers and TinyLM built from Hugging Face configs and state dicts.

    attn = from_pretrained_attention(config, state_dict, layer_idx=3)  # Attention or MLA
    lm = from_pretrained_lm(config, state_dict)  # or from_hf_model(hf_model)

`config` is a transformers `PretrainedConfig` (or its dict, with `model_type`); the
state dict uses HF's parameter names (docs/conventions.md §9), either a whole model's
(`model.layers.{i}.self_attn.q_proj.weight`, ...) or one attention module's
(`q_proj.weight`, ...). What each supported family sets:

| model_type | layer | bias (q, k, v, o) | q/k norm | window | RoPE layout |
|---|---|---|---|---|---|
| llama | Attention | `attention_bias` | – | – | rotate-half |
| mistral | Attention | none | – | `sliding_window` | rotate-half |
| qwen2 | Attention | q, k, v | – | `layer_types` | rotate-half |
| qwen3 | Attention | `attention_bias` | per head | `layer_types` | rotate-half |
| olmo2 | Attention (layer only) | `attention_bias` | whole projection | – | rotate-half |
| deepseek_v2 / v3 | MLA | `attention_bias` | latent norms | – | interleaved (1) |

(1) DeepSeek-V3 configs choose with `rope_interleave`; MLA = `MultiLatentAttention`.

RoPE scaling (linear, dynamic NTK, YaRN with its attention factor and `truncate`, Llama 3)
comes from `rope_parameters` / `rope_scaling` (`hf.rope_config`). `head_dim` may differ
from hidden_size / num_attention_heads. TinyLM needs pre-norm blocks with a SwiGLU MLP
(`hidden_act` silu, no MLP bias): Llama, Mistral, Qwen2, Qwen3 and DeepSeek with every
layer dense (`first_k_dense_replace >= num_hidden_layers`; mixture-of-experts layers
are refused, not approximated). OLMo-2 (post-norm) is supported per layer only.
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_int
from ..layers.attention import Attention, AttentionSpec
from ..layers.mla import MLASpec, MultiLatentAttention
from ..models.config import ModelConfig
from ..models.lm import TinyLM
from .rope_config import rope_from_config

ATTENTION_TYPES = ("llama", "mistral", "qwen2", "qwen3", "olmo2")
MLA_TYPES = ("deepseek_v2", "deepseek_v3")
LM_TYPES = ("llama", "mistral", "qwen2", "qwen3", "deepseek_v2", "deepseek_v3")


def _config(config):
    if isinstance(config, dict):
        from transformers import AutoConfig

        if "model_type" not in config:
            raise ValueError("config dict must carry 'model_type' (as config.json does)")
        rest = {k: v for k, v in config.items() if k != "model_type"}
        return AutoConfig.for_model(config["model_type"], **rest)
    if not hasattr(config, "model_type"):
        raise TypeError(f"config must be a transformers PretrainedConfig or its dict, got "
                        f"{type(config).__name__}")
    return config


def _model_type(config, allowed: tuple[str, ...]) -> str:
    mt = getattr(config, "model_type", None)
    if mt not in allowed:
        raise ValueError(f"config.model_type ({mt!r}) is not supported here; expected one of "
                         f"{list(allowed)}")
    return mt


def _window(config, layer_idx: int) -> int | None:
    """HF's sliding window for this layer (W keys including the query), or None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window


def attention_spec(config, layer_idx: int = 0, *, backend: str = "auto",
                   absorb: bool | str = False) -> AttentionSpec | MLASpec:
    """The attnlab spec of layer `layer_idx` of an HF config (see the module table)."""
    config = _config(config)
    mt = _model_type(config, ATTENTION_TYPES + MLA_TYPES)
    n_layers = config.num_hidden_layers
    check_positive_int("layer_idx", layer_idx, minimum=0)
    if layer_idx >= n_layers:
        raise ValueError(f"layer_idx ({layer_idx}) must be < num_hidden_layers ({n_layers})")
    base, scaling = rope_from_config(config)
    if mt in MLA_TYPES:
        return MLASpec(n_heads=config.num_attention_heads, kv_lora_rank=config.kv_lora_rank,
                       qk_nope_head_dim=config.qk_nope_head_dim,
                       qk_rope_head_dim=config.qk_rope_head_dim, v_head_dim=config.v_head_dim,
                       q_lora_rank=config.q_lora_rank, rope_base=base, rope_scaling=scaling,
                       rope_interleaved=bool(getattr(config, "rope_interleave", True)),
                       attention_bias=bool(getattr(config, "attention_bias", False)),
                       absorb=absorb, backend=backend)
    if mt == "qwen2":
        bias = (True, True, True, False)
    else:
        bias = bool(getattr(config, "attention_bias", False))
    qk_norm = {"qwen3": "head", "olmo2": "proj"}.get(mt)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return AttentionSpec(n_heads=config.num_attention_heads,
                         n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
                         head_dim=head_dim, window=_window(config, layer_idx), rope_base=base,
                         rope_scaling=scaling, bias=bias, qk_norm=qk_norm,
                         norm_eps=float(config.rms_norm_eps), backend=backend)


def _attention_weights(state_dict: dict, layer_idx: int) -> dict:
    """The one layer's attention tensors, keyed as inside the attention module."""
    for prefix in (f"model.layers.{layer_idx}.self_attn.", f"layers.{layer_idx}.self_attn."):
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if sub:
            return sub
    if any(".layers." in k or k.startswith("layers.") for k in state_dict):
        raise ValueError(f"state_dict has no tensors for layer {layer_idx} "
                         f"(looked for 'model.layers.{layer_idx}.self_attn.*')")
    return dict(state_dict)


def _load(module: nn.Module, weights: dict, what: str) -> nn.Module:
    """Load `weights` (copied) into `module` built on the meta device; every parameter
    must be given and every tensor used."""
    weights = {k: v.detach().clone() for k, v in weights.items()}
    try:
        module.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"the state dict does not fit {what}: {exc}") from exc
    return module


def from_pretrained_attention(config, state_dict: dict, layer_idx: int = 0, *,
                              backend: str = "auto", absorb: bool | str = False,
                              cache_layer_idx: int = 0) -> Attention | MultiLatentAttention:
    """attnlab's `Attention` (Llama family) or `MultiLatentAttention` (DeepSeek) for
    checkpoint layer `layer_idx`, with its weights (copied; dtype and device as given).

    The layer addresses slot `cache_layer_idx` of a cache: 0 suits its own `new_cache`."""
    config = _config(config)
    spec = attention_spec(config, layer_idx, backend=backend, absorb=absorb)
    check_positive_int("cache_layer_idx", cache_layer_idx, minimum=0)
    with torch.device("meta"):
        layer = spec.build(config.hidden_size, cache_layer_idx)
    return _load(layer, _attention_weights(state_dict, layer_idx),
                 f"layer {layer_idx} of {type(layer).__name__}")


def _check_lm_config(config, mt: str) -> None:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act ({config.hidden_act!r}) is not supported; TinyLM's "
                         "SwiGLU MLP expects 'silu'")
    if getattr(config, "mlp_bias", False):
        raise ValueError("mlp_bias (True) is not supported; TinyLM's MLP has no bias")
    if mt in MLA_TYPES:
        k, n = config.first_k_dense_replace, config.num_hidden_layers
        if k is None or k < n:
            raise ValueError(f"first_k_dense_replace ({k}) < num_hidden_layers ({n}): layers "
                             f"{k}..{n - 1} are mixture-of-experts, which TinyLM does not "
                             "represent; expected first_k_dense_replace >= num_hidden_layers")


def lm_config(config, *, max_seq_len: int | None = None, backend: str = "auto",
              absorb: bool | str = False) -> ModelConfig:
    """The TinyLM `ModelConfig` of a whole HF decoder config (see the module docstring).

    `max_seq_len` defaults to `max_position_embeddings` (times the factor for dynamic NTK,
    whose point is to run past it)."""
    config = _config(config)
    mt = _model_type(config, LM_TYPES)
    _check_lm_config(config, mt)
    n = config.num_hidden_layers
    specs = [attention_spec(config, i, backend=backend, absorb=absorb) for i in range(n)]
    if max_seq_len is None:
        max_seq_len = config.max_position_embeddings
        _, scaling = rope_from_config(config)
        if scaling is not None and scaling.kind == "dynamic":
            max_seq_len = int(max_seq_len * max(scaling.factor, 1.0))
    return ModelConfig(vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=n,
                       mixers=specs, d_ff=config.intermediate_size, mlp="swiglu",
                       max_seq_len=max_seq_len,
                       tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                       norm_eps=float(config.rms_norm_eps))


LAYER_NAMES = {"input_layernorm.weight": "norm1.weight",
               "post_attention_layernorm.weight": "norm2.weight",
               "mlp.gate_proj.weight": "mlp.gate.weight", "mlp.up_proj.weight": "mlp.up.weight",
               "mlp.down_proj.weight": "mlp.down.weight"}


def lm_state_dict(config, state_dict: dict) -> dict:
    """An HF causal-LM state dict renamed to TinyLM's parameter names."""
    config = _config(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = {}
    for key, value in state_dict.items():
        name = key.removeprefix("model.")
        if name == "embed_tokens.weight":
            out["embed.weight"] = value
        elif name == "norm.weight":
            out["norm.weight"] = value
        elif key == "lm_head.weight":
            if not tied:
                out["head.weight"] = value
            elif "model.embed_tokens.weight" in state_dict and not torch.equal(
                    value, state_dict["model.embed_tokens.weight"]):
                raise ValueError("tie_word_embeddings is True but lm_head.weight differs "
                                 "from model.embed_tokens.weight")
        elif name.startswith("layers."):
            idx, rest = name[len("layers."):].split(".", 1)
            if rest.startswith("self_attn."):
                out[f"blocks.{idx}.mixer.{rest[len('self_attn.'):]}"] = value
            elif rest in LAYER_NAMES:
                out[f"blocks.{idx}.{LAYER_NAMES[rest]}"] = value
            else:
                raise ValueError(f"state_dict key {key!r} has no TinyLM counterpart")
        else:
            raise ValueError(f"state_dict key {key!r} has no TinyLM counterpart")
    return out


def from_pretrained_lm(config, state_dict: dict, *, max_seq_len: int | None = None,
                       backend: str = "auto", absorb: bool | str = False) -> TinyLM:
    """A TinyLM equal to the HF causal LM of `config` with weights `state_dict` (copied):
    same logits, and attnlab's caches, `generate`, `run_with_cache` and conformance
    checks run on it."""
    config = _config(config)
    cfg = lm_config(config, max_seq_len=max_seq_len, backend=backend, absorb=absorb)
    with torch.device("meta"):
        model = TinyLM(cfg)
    return _load(model, lm_state_dict(config, state_dict), "TinyLM").eval()


def from_hf_model(hf_model, *, max_seq_len: int | None = None, backend: str = "auto",
                  absorb: bool | str = False) -> TinyLM:
    """`from_pretrained_lm(hf_model.config, hf_model.state_dict())`."""
    return from_pretrained_lm(hf_model.config, hf_model.state_dict(), max_seq_len=max_seq_len,
                              backend=backend, absorb=absorb)
