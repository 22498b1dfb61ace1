"""Read a Hugging Face `config.json` into the attention geometry the KV cache depends on.

Pure JSON, no transformers needed. Field names per family (docs/sources.md):
- layers `num_hidden_layers` / `n_layer` / `num_layers`; heads `num_attention_heads` /
  `n_head` / `num_heads`; width `hidden_size` / `n_embd` / `d_model`; head size
  `head_dim` (Gemma, Qwen3) / `d_kv` (T5) / width ÷ heads; KV heads
  `num_key_value_heads` (Llama, Mistral, Qwen, Gemma) / `num_kv_heads` (Falcon) /
  `multi_query` (Falcon, GPT-BigCode: one KV head), default one per query head (GPT-2);
- MLA (DeepSeek-V2/V3): `kv_lora_rank`, `qk_rope_head_dim`, `qk_nope_head_dim`,
  `v_head_dim`, `q_lora_rank`; `num_key_value_heads` is then ignored;
- sliding windows: `layer_types` ("sliding_attention" / "full_attention") where present,
  else the family's rule: Qwen2 `use_sliding_window` + `max_window_layers` (layers from
  that index on are local), Gemma-2 and gpt-oss alternate (layer 0 local), Gemma-3
  `sliding_window_pattern` (every p-th layer global), otherwise `sliding_window` on every
  layer (Mistral);
- encoder-decoder (T5: `num_layers` encoder, `num_decoder_layers` decoder; BART:
  `encoder_layers` / `decoder_layers`): cross-attention K/V per encoder token;
- multimodal configs: the `text_config` is read.

Two geometries come back: `arch`, the model's own (a window layer keeps W tokens, the
rolling buffer attnlab allocates), and `cached`, what transformers 5.x's `DynamicCache`
holds after a prefill (measured with 5.24, tested against real caches): W − 1 tokens on
sliding-window layers (the query's own key is appended at the next step), MLA's latent
and RoPE key (not expanded K/V), and for Falcon's `new_decoder_architecture` every query
head's K/V (the KV heads are broadcast before the cache update).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .configs import ArchConfig, MLAGeometry

__all__ = ["HFConfigReading", "hf_cached", "read_hf_config"]

_LOCAL_TYPES = ("sliding_attention",)
_GLOBAL_TYPES = ("full_attention",)
_ALTERNATING = ("gemma2", "gpt_oss")  # layer 0 local when no layer_types is given
_PATTERNED = {"gemma3": 6, "gemma3_text": 6, "cohere2": 4}  # default sliding_window_pattern
_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class HFConfigReading:
    """`arch`: the model's attention geometry; `cached`: what a transformers 5.x
    `DynamicCache` holds after prefill; `dtype`: the config's weight dtype as a cache dtype
    name (None if absent); `notes`: what was inferred or differs between the two."""

    arch: ArchConfig
    cached: ArchConfig
    model_type: str
    dtype: str | None
    notes: tuple[str, ...]


def _load(source) -> tuple[dict, str]:
    if isinstance(source, dict):
        return source, "config"
    if not isinstance(source, (str, Path)):
        raise TypeError(f"config must be a path or a dict, got {type(source).__name__}")
    p = Path(source)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"config path ({str(source)!r}) is not a config.json file or a folder "
                         "holding one")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {str(p)!r} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise TypeError(f"config {str(p)!r} must hold a JSON object, got {type(d).__name__}")
    return d, p.parent.name or p.stem


def _get(d: dict, *keys: str):
    """The first of `keys` present with a non-null value, else None."""
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _int(d: dict, what: str, *keys: str, required: bool = True) -> int | None:
    v = _get(d, *keys)
    if v is None:
        if required:
            raise ValueError(f"config has no {what} (looked for {', '.join(keys)})")
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"config field {next(k for k in keys if d.get(k) is not None)} ({v!r}) "
                         "must be a positive int")
    return v


def _local_layers(d: dict, model_type: str, n_layers: int, window: int | None,
                  notes: list[str]) -> tuple[int, ...]:
    types = d.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layers:
            raise ValueError(f"layer_types must list one type per layer ({n_layers}), got "
                             f"{types!r}")
        unknown = sorted({t for t in types if t not in _LOCAL_TYPES + _GLOBAL_TYPES})
        if unknown:
            raise ValueError(f"layer_types has attention types {unknown} this calculator does "
                             f"not model; known: {list(_LOCAL_TYPES + _GLOBAL_TYPES)}")
        local = tuple(i for i, t in enumerate(types) if t in _LOCAL_TYPES)
        if local and window is None:
            raise ValueError("layer_types lists sliding_attention layers but sliding_window is "
                             "not set")
        return local if window is not None else ()
    if window is None:
        return ()
    if "max_window_layers" in d:  # Qwen2 family: layers from max_window_layers on are local
        first = d["max_window_layers"]
        notes.append(f"sliding window on layers >= max_window_layers ({first})")
        return tuple(range(min(first, n_layers), n_layers))
    if model_type in _ALTERNATING:
        notes.append("local and global layers alternate, layer 0 local")
        return tuple(range(0, n_layers, 2))
    if model_type in _PATTERNED or "sliding_window_pattern" in d:
        p = d.get("sliding_window_pattern") or _PATTERNED[model_type]
        notes.append(f"every {p}th layer global (sliding_window_pattern {p})")
        return tuple(i for i in range(n_layers) if (i + 1) % p)
    return tuple(range(n_layers))


def read_hf_config(source, context: int | None = None) -> HFConfigReading:
    """Read `source` (a config.json path, a folder holding one, or its dict).

    `context` stands in for the maximum context when the config states none (T5's
    relative positions).
    """
    d, name = _load(source)
    if isinstance(d.get("text_config"), dict) and "num_hidden_layers" not in d:
        d = dict(d["text_config"], **{k: d[k] for k in ("torch_dtype", "dtype") if k in d
                                      and k not in d["text_config"]})
    model_type = str(d.get("model_type", "unknown"))
    name = str(_get(d, "_name_or_path") or name)
    notes: list[str] = []
    enc_dec = bool(d.get("is_encoder_decoder", False))
    if enc_dec:
        n_layers = _int(d, "decoder layers", "num_decoder_layers", "decoder_layers",
                        "num_layers")
        enc_layers = _int(d, "encoder layers", "num_layers", "encoder_layers")
        n_heads = _int(d, "decoder attention heads", "num_heads", "decoder_attention_heads")
    else:
        n_layers = _int(d, "layer count", "num_hidden_layers", "n_layer", "num_layers",
                        "n_layers")
        enc_layers = 0
        n_heads = _int(d, "attention heads", "num_attention_heads", "n_head", "num_heads")
    d_model = _int(d, "model width", "hidden_size", "n_embd", "d_model")
    head_dim = _int(d, "head size", "head_dim", "d_kv", required=False)
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(f"hidden size ({d_model}) is not divisible by the heads ({n_heads}) "
                             "and the config states no head_dim")
        head_dim = d_model // n_heads
    max_ctx = _int(d, "maximum context", "max_position_embeddings", "n_positions", "n_ctx",
                   "seq_length", required=False)
    if max_ctx is None:
        if context is None:
            raise ValueError("config states no maximum context (max_position_embeddings / "
                             "n_positions); pass a context")
        max_ctx = context
        notes.append("no maximum context in the config")
    mla, n_kv = None, n_heads
    hf_kv = None  # KV heads HF caches, where it differs from the model's
    if d.get("kv_lora_rank") is not None:
        mla = MLAGeometry(
            kv_lora_rank=_int(d, "kv_lora_rank", "kv_lora_rank"),
            qk_rope_head_dim=_int(d, "qk_rope_head_dim", "qk_rope_head_dim"),
            qk_nope_head_dim=_int(d, "qk_nope_head_dim", "qk_nope_head_dim"),
            v_head_dim=_int(d, "v_head_dim", "v_head_dim"),
            q_lora_rank=_int(d, "q_lora_rank", "q_lora_rank", required=False))
        head_dim, n_kv = mla.qk_nope_head_dim, None
        notes.append("MLA: the cache holds the latent and one RoPE key per token "
                     "(num_key_value_heads is ignored)")
    elif d.get("new_decoder_architecture"):  # Falcon-40B/180B
        n_kv = _int(d, "KV heads", "num_kv_heads", "n_head_kv", required=False) or n_heads
        hf_kv = n_heads
        notes.append(f"Falcon new_decoder_architecture: {n_kv} KV heads, but transformers "
                     f"broadcasts them to all {n_heads} heads before caching")
    elif d.get("multi_query"):
        n_kv = 1
        if d.get("num_kv_heads") not in (None, 1):
            notes.append(f"multi_query: true overrides num_kv_heads ({d['num_kv_heads']}): one "
                         "KV head")
    else:
        n_kv = _int(d, "KV heads", "num_key_value_heads", "num_kv_heads", "n_head_kv",
                    required=False) or n_heads
    window = _int(d, "sliding window", "sliding_window", required=False)
    if d.get("use_sliding_window") is False:
        window = None
    local = _local_layers(d, model_type, n_layers, window, notes)
    if not local:
        window = None
    pattern = "all" if len(local) == n_layers else "layers"
    arch = ArchConfig(
        name, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, max_context=max_ctx, source=f"config.json ({model_type})",
        v_head_dim=None if mla is not None else _int(d, "v_head_dim", "v_head_dim",
                                                     required=False),
        window=window, window_pattern=pattern if window else "all",
        local_layers=local if window and pattern == "layers" else (), mla=mla,
        encoder_layers=enc_layers or 0)
    cached = hf_cached(arch, hf_kv)
    dtype = _DTYPES.get(str(_get(d, "dtype", "torch_dtype")))
    return HFConfigReading(arch, cached, model_type, dtype, tuple(notes))


def hf_cached(arch: ArchConfig, kv_heads: int | None = None) -> ArchConfig:
    """The geometry a transformers 5.x `DynamicCache` holds for `arch` after prefill:
    W − 1 tokens per sliding-window layer, `kv_heads` KV heads where given."""
    changes = {}
    if arch.window is not None:
        if arch.window < 2:
            raise ValueError(f"sliding_window ({arch.window}) must be >= 2: transformers keeps "
                             "W − 1 tokens per window layer")
        changes["window"] = arch.window - 1
    if kv_heads is not None:
        changes["n_kv_heads"] = kv_heads
    return dataclasses.replace(arch, **changes) if changes else arch
