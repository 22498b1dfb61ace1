"""Shared evidence helpers: KV bytes measured from real attnlab caches."""
from __future__ import annotations

from ...analysis.configs import ArchConfig, get_config
from ...analysis.memory import build_cache, kv_memory


def measured_bytes_per_token_per_layer(cfg: ArchConfig, dtype: str = "fp16",
                                       context: int = 16) -> int:
    """Allocate a 1-layer copy of `cfg` holding `context` tokens; nbytes / context."""
    stack, _ = build_cache(cfg.scaled(n_layers=1), context, 1, dtype)
    return stack.nbytes // context


def variant_table(name: str, variants: list[tuple[str, int | None]], dtype: str = "fp16",
                  context: int = 4096) -> dict[str, dict]:
    """For each (kind, groups): calculator bytes/token and bytes measured on a real cache."""
    cfg = get_config(name)
    out = {}
    for kind, g in variants:
        v = cfg.variant(kind, g)
        mem = kv_memory(v, context, 1, dtype)
        per_layer = measured_bytes_per_token_per_layer(v, dtype)
        out[v.label] = {
            "elements_per_token_per_layer": v.cached_elements_per_token_per_layer,
            "calc_bytes_per_token": mem.bytes_per_token,
            "measured_bytes_per_token": per_layer * v.n_layers,
            "bytes_per_sequence": mem.bytes_per_sequence,
        }
    return out
