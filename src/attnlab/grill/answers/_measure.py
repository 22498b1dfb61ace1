"""Shared evidence helpers: KV bytes measured from real attnlab caches, timing."""
from __future__ import annotations

import time

import torch

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


def decode_step_ms(n_heads: int, n_kv_heads: int, head_dim: int, context: int,
                   reps: int = 7, seed: int = 0) -> float:
    """Best-of-`reps` time (ms) of one decode step of attention (1 query token, fp32) over a cache.

    GQA-aware: the query heads of a group become rows of one attention call against their
    KV head, so each KV head is read once per step (as decode kernels do).
    """


    g = torch.Generator().manual_seed(seed)
    group = n_heads // n_kv_heads
    q = torch.randn(1, n_kv_heads, group, head_dim, generator=g)  # (B, Hkv, group·1, D)
    k = torch.randn(1, n_kv_heads, context, head_dim, generator=g)
    v = torch.randn(1, n_kv_heads, context, head_dim, generator=g)
    scale = head_dim ** -0.5

    def step():  # two skinny matmuls, each streaming one KV head once
        p = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # (1, Hkv, group, T)
        return p @ v  # (1, Hkv, group, D)

    step()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3  # the least-disturbed run: the step is memory-bound and short

