"""Read RoPE settings from a Hugging Face config into attnlab's `RopeScaling`.

transformers 5.x keeps them in `config.rope_parameters` (`rope_type`, `rope_theta`,
`factor`, `original_max_position_embeddings`, `low_freq_factor` / `high_freq_factor`,
`beta_fast` / `beta_slow`, `mscale` / `mscale_all_dim`, `attention_factor`, `truncate`);
older configs use `rope_scaling` (with `type` or `rope_type`) beside `rope_theta`. Both
are read. Dynamic NTK measures against `max_position_embeddings`, as transformers does
(docs/conventions.md §9).
"""
from __future__ import annotations

from ..ops.rope_scaling import ROPE_KINDS, RopeScaling


def rope_parameters(config) -> dict:
    """The config's flat RoPE parameter dict (`rope_parameters`, else `rope_scaling` plus
    `rope_theta`); per-layer-type nested dicts are refused."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    params = dict(params or {})
    layer_types = set(getattr(config, "layer_types", None) or ())
    if layer_types & set(params):
        raise ValueError(f"rope_parameters are given per layer type ({sorted(params)}); "
                         "expected one flat dict")
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def rope_from_config(config) -> tuple[float, RopeScaling | None]:
    """(base, scaling) of an HF config; scaling is None for plain RoPE."""
    p = rope_parameters(config)
    kind = p["rope_type"]
    base = float(p["rope_theta"])
    if p.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor ({p['partial_rotary_factor']}) is not "
                         "supported; expected 1.0 (RoPE on the whole head)")
    if kind == "default":
        return base, None
    if kind not in ROPE_KINDS:
        raise ValueError(f"rope_type ({kind!r}) is not supported; expected one of "
                         f"{list(ROPE_KINDS)}")
    max_pos = getattr(config, "max_position_embeddings", None)
    original = p.get("original_max_position_embeddings") or max_pos
    if kind == "dynamic":
        original = max_pos  # transformers' dynamic NTK measures against this field
    optional = {k: p[k] for k in ("low_freq_factor", "high_freq_factor", "mscale",
                                  "mscale_all_dim", "attention_factor") if p.get(k) is not None}
    scaling = RopeScaling(
        kind=kind, factor=p.get("factor"), original_max_position=original,
        max_position=max_pos, beta_fast=p.get("beta_fast") or 32.0,
        beta_slow=p.get("beta_slow") or 1.0, truncate=bool(p.get("truncate", True)),
        **optional)
    return base, scaling
