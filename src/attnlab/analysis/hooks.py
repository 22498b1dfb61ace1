"""Read a model's attention internals: `run_with_cache(model, tokens)`.

One forward pass with forward hooks on each mixer's hook points (`hook_q`, `hook_k`,
`hook_v`, `hook_head_out`; the TransformerLens HookPoint idea). Nothing is recorded
when `run_with_cache` is not running: the hook points are identity modules.

Attention patterns are NOT read from the backend (fused/flash backends never form
them). They are the layer's *implied attention matrix*, recomputed from what the hooks
captured, so head analysis works on every mixer kind:
- softmax attention (MHA/GQA/MQA/windowed, MLA on its naive path):
  `softmax(scale · q kᵀ + mask)` with the layer's own `Mask` predicate and scale;
- linear attention / Performer (Katharopoulos et al. 2020; Choromanski et al. 2020):
  `A = tril(φ(Q) φ(K)ᵀ)`, rows divided by `A·1 + eps`, so `out = A V` exactly;
- Mamba-2 SSD (Dao & Gu 2024, eq. 16): `M = L ∘ C Bᵀ` with `L_ij = a_{j+1}···a_i` and the
  step size Δ_j folded into column j, so `y = M X + D·X`. M is not row-stochastic.
- any mixer with an `implied_attention(x)` method (RWKV: Peng et al. 2023/2024) supplies
  its own matrix; RWKV-6 gives one unnormalised matrix per head (WKV = A v), RWKV-4 one
  row-stochastic matrix per channel (each channel is its own head).
Cost: O(B·H·N²·D) per layer on top of the forward, and O(B·H·N²) memory per pattern.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_tensor
from ..layers.linear_attention import LinearAttention
from ..layers.ssd import SSDMixer
from ..masks import Mask
from ..ops.ssd.forms import LOG_DECAY_FLOOR, segsum

LINEAR_EPS = 1e-6  # the denominator eps of ops.linear.linear_attention_features (its default)


@dataclass
class LayerActivations:
    """What one mixer computed. `kind` is "softmax", "linear", "ssd" or the class name of a
    mixer with its own `implied_attention` (e.g. "RWKVMixer").

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

    Rows with no visible key give a zero pattern row (SPEC §2), never NaN.
    """
    Nq, Nk = q.shape[-2], k.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if mask is not None:
        keep = mask.to_dense(Nq, Nk).to(scores.device)  # (Nq, Nk)
        scores = scores.masked_fill(~keep, float("-inf"))
    pattern = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # empty rows: 0
    return scores, pattern


def linear_pattern(mixer: LinearAttention, x: torch.Tensor) -> LayerActivations:
    """Implied matrix of causal normalised linear attention on the mixer input x (B, N, d)."""
    B, N, _ = x.shape
    H, Hkv, D = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    q = mixer.q_proj(x).view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
    k = mixer.k_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
    v = mixer.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
    qf, kf = mixer.features(q, k)  # (B, H, N, F), (B, Hkv, N, F)
    raw = (qf @ repeat_kv(kf, H).transpose(-1, -2)).tril()  # (B, H, N, N)
    pattern = raw / (raw.sum(-1, keepdim=True) + LINEAR_EPS)  # out = pattern @ v exactly
    return LayerActivations("linear", pattern, q=q, k=repeat_kv(k, H), v=repeat_kv(v, H))


def ssd_pattern(mixer: SSDMixer, x: torch.Tensor) -> tuple[LayerActivations, torch.Tensor]:
    """Implied matrix M = L ∘ C Bᵀ (Δ_j folded in) of a Mamba-2 mixer on input x (B, N, d).

    Returns the activations (q = C, k = B per head, v = X) and the inner output
    y = M X + D·X (B, H, N, P), which the mixer then gates, normalises and projects.
    Mirrors `SSDMixer.forward` without a cache (zero conv history).
    """
    B, N, _ = x.shape
    H, P, G, S, K = mixer.n_heads, mixer.head_dim, mixer.n_groups, mixer.d_state, mixer.d_conv
    _, xbc, dt = mixer.in_proj(x).split([mixer.d_inner, mixer.conv_dim, H], dim=-1)
    seq = F.pad(xbc, (0, 0, K - 1, 0))  # (B, K−1+N, conv_dim): zero history
    xbc = F.silu(F.conv1d(seq.transpose(1, 2), mixer.conv.weight, mixer.conv.bias,
                          groups=mixer.conv_dim)).transpose(1, 2)  # (B, N, conv_dim)
    xs, Bm, Cm = xbc.split([mixer.d_inner, G * S, G * S], dim=-1)
    xs = xs.view(B, N, H, P).transpose(1, 2)  # (B, H, N, P)
    Bm = repeat_kv(Bm.view(B, N, G, S).transpose(1, 2), H)  # (B, H, N, S)
    Cm = repeat_kv(Cm.view(B, N, G, S).transpose(1, 2), H)  # (B, H, N, S)
    dt = F.softplus(dt + mixer.dt_bias).transpose(1, 2)  # (B, H, N)
    log_a = (dt * -torch.exp(mixer.A_log)[:, None]).clamp(min=LOG_DECAY_FLOOR)  # (B, H, N)
    L = torch.exp(segsum(log_a))  # (B, H, N, N), 0 above the diagonal
    M = L * (Cm @ Bm.transpose(-1, -2)) * dt.unsqueeze(-2)  # (B, H, N, N): Δ_j on column j
    y = M @ xs + mixer.D.view(1, H, 1, 1) * xs  # (B, H, N, P)
    return LayerActivations("ssd", M, q=Cm, k=Bm, v=xs), y


def _softmax_scale(mixer: nn.Module, head_dim: int) -> float:
    scale = getattr(mixer, "scale", None)
    return float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)


@torch.no_grad()
def run_with_cache(model: nn.Module, tokens: torch.Tensor,
                   layers: Sequence[int] | None = None) -> ActivationCache:
    """Forward `tokens` (B, N) through a TinyLM and record every (or the listed) mixer.

    Softmax layers must expose hook_q/hook_k/hook_v (+ hook_head_out), a `mask` and a
    `scale` (None = 1/sqrt(head_dim)); MLA runs its naive path while recording (same
    output, SPEC §5) because the absorbed path never forms per-head keys.
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
        if isinstance(m, (LinearAttention, SSDMixer)) or hasattr(m, "implied_attention"):
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
        if isinstance(m, SSDMixer):
            cache.layers[i] = ssd_pattern(m, got["x"])[0]
        elif isinstance(m, LinearAttention):
            cache.layers[i] = linear_pattern(m, got["x"])
        elif hasattr(m, "implied_attention"):
            imp = m.implied_attention(got["x"])
            cache.layers[i] = LayerActivations(type(m).__name__, imp["pattern"], q=imp["q"],
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
