"""Converting checkpoints between KV-sharing layouts.

`mha_to_gqa`: the GQA paper's uptraining start point (Ainslie et al. 2023, §2.1): the
key and value projection heads inside each group are **mean-pooled** (which beat keeping
the first head and random initialisation, FACTS.md); queries and the output projection are
copied. GQA-1 is MQA, GQA-H is MHA. The converted model is then uptrained for a small
fraction (α = 5%) of the original steps; this module only builds the start point.
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
    new = Attention(layer.d_model, layer.n_heads, n_kv_heads, layer.head_dim, rope=layer.rope,
                    rope_base=layer.rope_base, rope_interleaved=layer.rope_interleaved,
                    window=layer.window, causal=layer.causal, bias=layer.bias,
                    scale=layer.scale, backend=layer.backend, layer_idx=layer.layer_idx)
    new = new.to(device=layer.q_proj.weight.device, dtype=layer.q_proj.weight.dtype)
    new.q_proj.load_state_dict(layer.q_proj.state_dict())
    new.o_proj.load_state_dict(layer.o_proj.state_dict())
    for name in ("k_proj", "v_proj"):
        src, dst = getattr(layer, name), getattr(new, name)
        dst.weight.copy_(_pool_heads(src.weight, layer.n_kv_heads, n_kv_heads, layer.head_dim))
        if layer.bias:
            dst.bias.copy_(_pool_heads(src.bias, layer.n_kv_heads, n_kv_heads, layer.head_dim))
    new.train(layer.training)
    return new
