"""Head ablation, gradient head importance and pruning curves.

- zero / mean ablation: replace head h's per-head output (B, H, N, Dv) at `hook_head_out`
  with 0 or with its mean over a reference batch (over batch and positions);
- importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?"):
  a gate ξ_h (=1) multiplies each head's output; I_h = E_x |∂L(x)/∂ξ_h|, the expectation
  taken over the batches given (pass batches of one sequence for the paper's
  per-example estimator); optionally normalised per layer by the L2 norm (their §4.1);
- pruning curve: repeatedly gate off the least important remaining heads (importance
  recomputed with the current gates, as in Michel et al. §4.2) and record the loss.
Cost: one forward per ablation, one forward+backward per importance batch.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_tensor
from .hooks import check_layers, mixers_of

MODES = ("zero", "mean")


def _gated_mixers(model: nn.Module) -> list[nn.Module]:
    mixers = mixers_of(model)
    for i, m in enumerate(mixers):
        if not hasattr(m, "hook_head_out"):
            raise TypeError(f"layer {i} mixer {type(m).__name__} has no hook_head_out; head "
                            "ablation needs per-head outputs (softmax attention, MLA)")
    return mixers


def check_heads(model: nn.Module, heads: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validate (layer, head) pairs against the model."""
    mixers = _gated_mixers(model)
    out = []
    for pair in heads:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"heads must hold (layer, head) tuples, got {pair!r}")
        layer, head = pair
        (layer,) = check_layers([layer], len(mixers))
        check_positive_int("head", head, minimum=0)
        if head >= mixers[layer].n_heads:
            raise ValueError(f"head ({head}) out of range: layer {layer} has "
                             f"{mixers[layer].n_heads} heads (valid 0..{mixers[layer].n_heads - 1})")
        out.append((layer, head))
    return out


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of logits (B, N, V) on tokens (B, N); "none" → (B, N−1)."""
    V = logits.shape[-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # float32 statistics; float64 stays float64
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1),
                           reduction="none").view(tokens.shape[0], -1)  # (B, N−1)
    return loss.mean() if reduction == "mean" else loss


@torch.no_grad()
def head_means(model: nn.Module, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Mean per-head output over batch and positions: {layer: (H, Dv)}."""
    from .hooks import run_with_cache

    cache = run_with_cache(model, tokens)
    return {i: a.head_out.mean(dim=(0, 2)) for i, a in cache.layers.items()}


@contextmanager
def ablate(model: nn.Module, heads: Iterable[tuple[int, int]], mode: str = "zero",
           means: dict[int, torch.Tensor] | None = None) -> Iterator[None]:
    """Inside the block, the listed heads output 0 ("zero") or their mean ("mean", needs
    `means` from `head_means`)."""
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {list(MODES)}")
    pairs = check_heads(model, heads)
    if mode == "mean" and means is None:
        raise ValueError("mode 'mean' needs means (from head_means(model, tokens))")
    mixers = mixers_of(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in pairs:
        by_layer.setdefault(layer, []).append(head)

    def make(layer: int, hs: list[int]):
        def hook(_m, _a, out):  # out (B, H, N, Dv)
            out = out.clone()
            if mode == "zero":
                out[:, hs] = 0.0
            else:
                out[:, hs] = means[layer][hs].to(out.dtype)[None, :, None, :]
            return out
        return hook

    handles = [mixers[layer].hook_head_out.register_forward_hook(make(layer, hs))
               for layer, hs in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def head_gates(model: nn.Module, gates: Sequence[torch.Tensor]) -> Iterator[None]:
    """Multiply layer l's per-head outputs by gates[l] (H_l,) inside the block."""
    mixers = _gated_mixers(model)
    if len(gates) != len(mixers):
        raise ValueError(f"gates has {len(gates)} entries; expected one per layer "
                         f"({len(mixers)})")
    for i, (g, m) in enumerate(zip(gates, mixers)):
        if tuple(g.shape) != (m.n_heads,):
            raise ValueError(f"gates[{i}] has shape {tuple(g.shape)}; expected ({m.n_heads},)")

    def make(g: torch.Tensor):
        return lambda _m, _a, out: out * g.to(out.dtype)[None, :, None, None]

    handles = [m.hook_head_out.register_forward_hook(make(g)) for g, m in zip(gates, mixers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ones_gates(model: nn.Module, requires_grad: bool = False) -> list[torch.Tensor]:
    dtype = next(model.parameters()).dtype
    return [torch.ones(m.n_heads, dtype=dtype, requires_grad=requires_grad)
            for m in _gated_mixers(model)]


def gated_loss(model: nn.Module, tokens: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss with per-head gates applied (differentiable in the gates)."""
    with head_gates(model, gates):
        return lm_loss(model(tokens), tokens)


def head_importance(model: nn.Module, batches: Iterable[torch.Tensor], *,
                    gates: Sequence[torch.Tensor] | None = None,
                    normalize: bool = False) -> torch.Tensor:
    """I (L, H) = mean over batches of |∂L/∂ξ| at the given gates (default all ones)."""
    base = ones_gates(model) if gates is None else [g.detach() for g in gates]
    total, n = None, 0
    for tokens in batches:
        check_tensor("tokens", tokens, 2)
        xi = [g.clone().requires_grad_(True) for g in base]
        grads = torch.autograd.grad(gated_loss(model, tokens, xi), xi)
        g = torch.stack([gr.abs() for gr in grads])  # (L, H)
        total = g if total is None else total + g
        n += 1
    if n == 0:
        raise ValueError("batches is empty; expected at least one (B, N) token batch")
    imp = total / n
    if normalize:
        imp = imp / imp.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return imp.detach()


@torch.no_grad()
def single_head_ablation(model: nn.Module, tokens: torch.Tensor, mode: str = "zero",
                         means: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Loss increase (L, H) when each head alone is ablated."""
    base = float(lm_loss(model(tokens), tokens))
    mixers = _gated_mixers(model)
    out = torch.zeros(len(mixers), max(m.n_heads for m in mixers))
    for i, m in enumerate(mixers):
        for h in range(m.n_heads):
            with ablate(model, [(i, h)], mode, means):
                out[i, h] = float(lm_loss(model(tokens), tokens)) - base
    return out


@dataclass
class PruningCurve:
    fraction: list[float]  # fraction of heads gated off
    loss: list[float]  # evaluation loss at that fraction
    order: list[tuple[int, int]]  # heads in the order they were removed


def pruning_curve(model: nn.Module, importance_batches: Sequence[torch.Tensor],
                  eval_tokens: torch.Tensor, step: int = 1) -> PruningCurve:
    """Iteratively remove `step` least important heads (importance recomputed each round)
    until one head is left in the model; loss on `eval_tokens` after each round."""
    check_positive_int("step", step)
    gates = ones_gates(model)
    n_heads = sum(len(g) for g in gates)
    with torch.no_grad():
        curve = PruningCurve([0.0], [float(gated_loss(model, eval_tokens, gates))], [])
    while len(curve.order) < n_heads - 1:
        imp = head_importance(model, importance_batches, gates=gates)  # (L, H)
        alive = [(i, h) for i, g in enumerate(gates) for h in range(len(g)) if g[h] > 0]
        alive.sort(key=lambda p: float(imp[p[0], p[1]]))
        for i, h in alive[:min(step, len(alive) - 1)]:
            gates[i][h] = 0.0
            curve.order.append((i, h))
        with torch.no_grad():
            curve.loss.append(float(gated_loss(model, eval_tokens, gates)))
        curve.fraction.append(len(curve.order) / n_heads)
    return curve
