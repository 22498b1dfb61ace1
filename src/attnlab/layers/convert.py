"""Converting checkpoints between KV-sharing layouts.

`mha_to_gqa`: the GQA paper's uptraining start point (Ainslie et al. 2023, §2.1): the
key and value projection heads inside each group are **mean-pooled** (which beat keeping
the first head and random initialisation, docs/sources.md); queries and the output projection are
copied. GQA-1 is MQA, GQA-H is MHA. The converted model is then uptrained for a small
fraction (α = 5%) of the original steps; this module only builds the start point.

`gqa_to_mha`: the exact inverse direction: every query head gets its own copy of the KV
head it reads, so outputs are unchanged while the cache grows by n_heads / n_kv_heads.
"""
from __future__ import annotations

import torch

from .._checks import check_divisible, check_positive_int
from .attention import Attention


def _pool_heads(w: torch.Tensor, n_from: int, n_to: int, head_dim: int) -> torch.Tensor:
    """Mean over consecutive groups of heads: rows (n_from·D, ...) -> (n_to·D, ...)."""
    rest = w.shape[1:]
    w = w.reshape(n_to, n_from // n_to, head_dim, *rest)  # (G, heads per group, D, ...)
    return w.mean(dim=1).reshape(n_to * head_dim, *rest)  # (G·D, ...)


def _like(layer: Attention, n_kv_heads: int) -> Attention:
    """A fresh Attention with `layer`'s settings and `n_kv_heads`, q/o projections copied."""
    new = Attention(layer.d_model, layer.n_heads, n_kv_heads, layer.head_dim, rope=layer.rope,
                    rope_base=layer.rope_base, rope_interleaved=layer.rope_interleaved,
                    window=layer.window, causal=layer.causal, bias=layer.bias,
                    scale=layer.scale, backend=layer.backend, layer_idx=layer.layer_idx,
                    kv_cache=layer.kv_cache, rope_scaling=layer.rope_scaling,
                    qk_norm=layer.qk_norm, norm_eps=layer.norm_eps)
    new = new.to(device=layer.q_proj.weight.device, dtype=layer.q_proj.weight.dtype)
    new.q_proj.load_state_dict(layer.q_proj.state_dict())
    new.o_proj.load_state_dict(layer.o_proj.state_dict())
    if layer.qk_norm is not None:
        new.q_norm.load_state_dict(layer.q_norm.state_dict())
        if layer.qk_norm == "head":  # one weight shared by every KV head: unchanged
            new.k_norm.load_state_dict(layer.k_norm.state_dict())
    new.train(layer.training)
    return new


@torch.no_grad()
def mha_to_gqa(layer: Attention, n_kv_heads: int) -> Attention:
    """A new `Attention` with `n_kv_heads` KV heads, each the mean of the heads it replaces.

    Works from MHA or from a GQA layer with more KV heads: `layer.n_kv_heads` must be
    divisible by `n_kv_heads`. Old KV head j goes to group j // (old/new), so query head h
    keeps reading (the pool containing) the head it read before. O(params) time.
    """
    if not isinstance(layer, Attention):
        raise TypeError(f"layer must be an Attention, got {type(layer).__name__}")
    check_positive_int("n_kv_heads", n_kv_heads)
    check_divisible("layer.n_kv_heads", layer.n_kv_heads, "n_kv_heads", n_kv_heads)
    new = _like(layer, n_kv_heads)
    if layer.qk_norm == "proj":  # OLMo-2's norm over the whole key projection
        raise ValueError("qk_norm ('proj') normalises over all KV heads together; mean-pooling "
                         "heads has no equivalent norm. Expected qk_norm None or 'head'")
    for name in ("k_proj", "v_proj"):
        src, dst = getattr(layer, name), getattr(new, name)
        dst.weight.copy_(_pool_heads(src.weight, layer.n_kv_heads, n_kv_heads, layer.head_dim))
        if src.bias is not None:
            dst.bias.copy_(_pool_heads(src.bias, layer.n_kv_heads, n_kv_heads, layer.head_dim))
    return new


@torch.no_grad()
def gqa_to_mha(layer: Attention) -> Attention:
    """An MHA `Attention` equal to `layer`: KV head j is copied to each query head of group j.

    Exact (MHA == GQA with tied heads); the cache grows by `layer.n_groups`. O(params).
    """
    if not isinstance(layer, Attention):
        raise TypeError(f"layer must be an Attention, got {type(layer).__name__}")
    new = _like(layer, layer.n_heads)
    if layer.qk_norm == "proj":  # the copied heads would change the norm's mean square
        raise ValueError("qk_norm ('proj') normalises over all KV heads together; copying "
                         "heads changes it. Expected qk_norm None or 'head'")
    for name in ("k_proj", "v_proj"):
        src, dst = getattr(layer, name), getattr(new, name)
        w = src.weight.view(layer.n_kv_heads, 1, layer.head_dim, layer.d_model)  # (Hkv, 1, D, d)
        dst.weight.copy_(w.expand(-1, layer.n_groups, -1, -1).reshape_as(dst.weight))
        if src.bias is not None:
            b = src.bias.view(layer.n_kv_heads, 1, layer.head_dim)  # (Hkv, 1, D)
            dst.bias.copy_(b.expand(-1, layer.n_groups, -1).reshape_as(dst.bias))
    return new
