"""Shared evidence helpers: KV bytes measured from real attnlab caches, decode-step timing."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...analysis.configs import ArchConfig, get_config
from ...analysis.memory import build_cache, kv_memory
from ._timing import median_time


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
                   repeats: int = 7, seed: int = 0) -> float:
    """Median time (ms) of one decode step of attention (1 query token, fp32) over a cache,
    after a warm-up call (`_timing.median_time`: robust to a busy machine).

    GQA-aware: the query heads of a group become rows of one attention call against their
    KV head, so each KV head is read once per step (as decode kernels do).
    """
    g = torch.Generator().manual_seed(seed)
    group = n_heads // n_kv_heads
    q = torch.randn(1, n_kv_heads, group, head_dim, generator=g)  # (B, Hkv, group·1, D)
    k = torch.randn(1, n_kv_heads, context, head_dim, generator=g)  # (B, Hkv, T, D)
    v = torch.randn(1, n_kv_heads, context, head_dim, generator=g)
    scale = head_dim ** -0.5

    def step():  # two skinny matmuls, each streaming one KV head once
        p = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # (1, Hkv, group, T)
        return p @ v  # (1, Hkv, group, D)

    return median_time(step, repeats=repeats, warmup=1) * 1e3


class MatmulOperandBytes(TorchDispatchMode):
    """Bytes of every operand fed to a matmul (mm/bmm) while active: what a kernel must
    stream in from slow memory (Q37's decode intensity, Q48's tile traffic)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.mm):
            self.bytes += sum(a.numel() * a.element_size() for a in args[:2])
        return func(*args, **(kwargs or {}))
