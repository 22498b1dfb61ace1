"""Read a model's attention internals: `run_with_cache(model, tokens)`.

One forward pass with forward hooks on each mixer's hook points (`hook_q`, `hook_k`,
`hook_v`, `hook_head_out`; the TransformerLens HookPoint idea). Nothing is recorded
when `run_with_cache` is not running: the hook points are identity modules.

Attention patterns are NOT read from the backend (fused/flash backends never form
them). They are the layer's *implied attention matrix*, recomputed from what the hooks
captured, so head analysis works on every mixer kind:
- softmax attention (MHA/GQA/MQA/windowed, MLA on its naive path):
  `softmax(scale · q kᵀ + mask)` with the layer's own `Mask` predicate and scale;
- every mixer that never forms softmax weights supplies its own matrix through an
  `implied_attention(x)` method (a dict: kind, pattern, q, k, v, out), so a new mixer
  needs no rule here: linear attention / Performer (`tril(φ(Q) φ(K)ᵀ)` row-normalised,
  out = A V), Mamba-2 SSD (`M = L ∘ C Bᵀ`, y = M X + D·X, not row-stochastic), RWKV-6
  (one matrix per head, WKV = A v) and RWKV-4 (one row-stochastic matrix per channel).
Cost: O(B·H·N²·D) per layer on top of the forward, and O(B·H·N²) memory per pattern.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .._checks import check_positive_int, check_tensor
from ..masks import Mask


@dataclass
class LayerActivations:
    """What one mixer computed. `kind` is "softmax", or the kind its `implied_attention`
    reports ("linear", "ssd", "rwkv").

    q (B, H, N, Dk), k and v per query head (GQA KV heads repeated to H), scores
    (B, H, N, N) pre-softmax logits with masked entries −inf (softmax only), pattern
    (B, H, N, N) the implied attention matrix, head_out (B, H, N, Dv) per-head output
    before the output projection (None where the mixer has no such hook).
    """

    kind: str
    pattern: torch.Tensor
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    head_out: torch.Tensor | None = None


@dataclass
class ActivationCache:
    """Logits plus one `LayerActivations` per recorded layer (keyed by layer index)."""

    logits: torch.Tensor
    layers: dict[int, LayerActivations] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor | None:
        """cache["pattern", 1] → layer 1's pattern."""
        name, layer = key
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; recorded layers are "
                           f"{sorted(self.layers)}")
        return getattr(self.layers[layer], name)

    def patterns(self) -> torch.Tensor:
        """All recorded patterns stacked: (L, B, H, N, N) (layers need equal head counts)."""
        pats = [self.layers[i].pattern for i in sorted(self.layers)]
        heads = {p.shape[1] for p in pats}
        if len(heads) != 1:
            raise ValueError(f"layers have different head counts {sorted(heads)}; index "
                             "cache.layers[i].pattern per layer instead")
        return torch.stack(pats)


def mixers_of(model: nn.Module) -> list[nn.Module]:
    """The token mixers of a TinyLM-like model (`model.blocks[i].mixer`)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"model must have .blocks[i].mixer (TinyLM), got {type(model).__name__}")
    return [b.mixer for b in blocks]


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Validate layer indices (no negative indexing: a typo must not pick the last layer)."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for i in layers:
        check_positive_int("layer", i, minimum=0)
        if i >= n_layers:
            raise ValueError(f"layer ({i}) does not exist: the model has {n_layers} layers "
                             f"(valid 0..{n_layers - 1})")
        out.append(i)
    return out


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, Hkv, N, D) -> (B, H, N, D) with query head h reading KV head h // (H // Hkv)."""
    Hkv = x.shape[1]
    return x if Hkv == n_heads else x.repeat_interleave(n_heads // Hkv, dim=1)


def softmax_pattern(q: torch.Tensor, k: torch.Tensor, mask: Mask | None,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, pattern) for q (B, H, Nq, D), k (B, H, Nk, D); bottom-right aligned mask.

    Rows with no visible key give a zero pattern row (conventions §2), never NaN.
    """
    Nq, Nk = q.shape[-2], k.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if mask is not None:
        keep = mask.to_dense(Nq, Nk).to(scores.device)  # (Nq, Nk)
        scores = scores.masked_fill(~keep, float("-inf"))
    pattern = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # empty rows: 0
    return scores, pattern


def _softmax_scale(mixer: nn.Module, head_dim: int) -> float:
    scale = getattr(mixer, "scale", None)
    return float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)


@torch.no_grad()
def run_with_cache(model: nn.Module, tokens: torch.Tensor,
                   layers: Sequence[int] | None = None) -> ActivationCache:
    """Forward `tokens` (B, N) through a TinyLM and record every (or the listed) mixer.

    Softmax layers must expose hook_q/hook_k/hook_v (+ hook_head_out), a `mask` and a
    `scale` (None = 1/sqrt(head_dim)); MLA runs its naive path while recording (same
    output, conventions §5) because the absorbed path never forms per-head keys.
    """
    check_tensor("tokens", tokens, 2)
    mixers = mixers_of(model)
    wanted = check_layers(layers, len(mixers))
    captured: dict[int, dict[str, torch.Tensor]] = {i: {} for i in wanted}
    handles, restore = [], []

    def saver(i: int, name: str):
        def hook(_m, args, out):
            captured[i][name] = out if name != "x" else args[0]
        return hook

    for i in wanted:
        m = mixers[i]
        if hasattr(m, "implied_attention"):  # mixers that never form softmax weights
            handles.append(m.register_forward_hook(saver(i, "x")))
            continue
        if not all(hasattr(m, h) for h in ("hook_q", "hook_k", "hook_v")):
            raise TypeError(f"layer {i} mixer {type(m).__name__} has no hook_q/hook_k/hook_v "
                            "and no implied-matrix rule; supported: softmax attention, MLA, "
                            "linear attention, Performer, SSD, and any mixer with an "
                            "implied_attention(x) method (RWKV)")
        for name in ("q", "k", "v", "head_out"):
            hp = getattr(m, f"hook_{name}", None)
            if hp is not None:
                handles.append(hp.register_forward_hook(saver(i, name)))
        if getattr(m, "absorb", False) is not False:  # MLA: record on the naive path
            restore.append((m, m.absorb))
            m.absorb = False
    try:
        logits = model(tokens)  # (B, N, vocab)
    finally:
        for h in handles:
            h.remove()
        for m, a in restore:
            m.absorb = a

    cache = ActivationCache(logits=logits)
    for i in wanted:
        m, got = mixers[i], captured[i]
        if hasattr(m, "implied_attention"):
            imp = m.implied_attention(got["x"])
            cache.layers[i] = LayerActivations(imp["kind"], imp["pattern"], q=imp["q"],
                                               k=imp["k"], v=imp["v"], head_out=imp["out"])
        else:
            q = got["q"]  # (B, H, N, Dk)
            H = q.shape[1]
            k, v = repeat_kv(got["k"], H), repeat_kv(got["v"], H)  # (B, H, N, D)
            scores, pattern = softmax_pattern(q, k, getattr(m, "mask", None),
                                              _softmax_scale(m, q.shape[-1]))
            cache.layers[i] = LayerActivations("softmax", pattern, q=q, k=k, v=v,
                                               scores=scores, head_out=got.get("head_out"))
    return cache


def hf_patterns(model: nn.Module, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Attention patterns (L, B, H, N, N) of a Hugging Face transformers model.

    Calls `model(input_ids, output_attentions=True)`; the model must use the eager
    attention implementation (`attn_implementation="eager"`), which returns weights.
    """
    check_tensor("input_ids", input_ids, 2)
    with torch.no_grad():
        out = model(input_ids, output_attentions=True, **kwargs)
    att = getattr(out, "attentions", None)
    if not att or any(a is None for a in att):
        raise ValueError("the model returned no attentions; build it with "
                         "attn_implementation='eager' so output_attentions=True works")
    return torch.stack([a.float() for a in att])  # (L, B, H, N, N)
