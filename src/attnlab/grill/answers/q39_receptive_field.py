"""Q39: receptive field of layer ℓ in a sliding-window transformer, per layer, measured."""
from __future__ import annotations

import itertools

import torch

from ...analysis.receptive_field import field_size
from ...layers.attention import Attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    W, L, N, d = 5, 5, 30, 16
    layers = [Attention(d, 2, window=W, layer_idx=i) for i in range(L)]
    x = torch.randn(1, N, d, requires_grad=True)
    h, fields = x, []
    for layer in layers:  # field of the last position after each real Attention layer
        h = h + layer(h)
        (g,) = torch.autograd.grad(h[0, -1].sum(), x, retain_graph=True)
        fields.append(field_size(g[0].abs().sum(-1) > 0))
    formula = [ell * (W - 1) + 1 for ell in range(1, L + 1)]  # evaluated here, independently
    growth = [b - a for a, b in itertools.pairwise(fields)]
    ev.measurements["W"] = W
    ev.measurements["field after layer ℓ = 1..5 (autograd through Attention layers)"] = fields
    ev.measurements["formula ℓ·(W−1)+1"] = formula
    ev.measurements["growth per layer"] = growth
    ev.check("measured field after every layer equals ℓ·(W−1)+1", fields == formula,
             f"{fields} vs {formula}")
    ev.check("each layer adds W − 1, not W", all(x == W - 1 for x in growth), str(growth))
    ev.key_figure = f"W = {W}: fields {fields} = ℓ·(W−1)+1; +{W - 1} per layer"
    return ev


QUESTION = Question(
    id=39,
    title=TITLES[39],
    short=(
        "ℓ·(W−1)+1 positions. Each layer's window holds W keys including the query itself, "
        "so it reaches W−1 new positions further back, and stacking ℓ layers chains those "
        "reaches: Mistral 7B's 32 layers of 4096 span 131,041 tokens in principle."
    ),
    rubric=[
        KeyPoint("ℓ·(W−1)+1", [r"\(\s*w\s*[-−]\s*1\s*\)", r"w\s*[-−]\s*1", r"ℓ\s*·?\s*w", r"l\s*(·|\*|x)\s*w"],
                 formula="field(ℓ) = ℓ·(W − 1) + 1"),
        KeyPoint("grows linearly with depth by stacking layers",
                 [r"stack", r"each layer", r"per layer", r"linear(ly)? (in|with) (depth|layers)"]),
        KeyPoint("reachability, not influence strength",
                 [r"in principle", r"theoretical", r"reach", r"influence", r"decay"]),
    ],
    answer=(
        "Count backwards from a token at position i. The first layer's output there mixes "
        "inputs i − (W−1) … i. The second layer's window reaches back to position i − (W−1), "
        "whose first-layer output already covers another W − 1 positions behind it, so the "
        "span grows by W − 1 per layer: after layer ℓ it is ℓ·(W−1)+1 positions. It is W−1 "
        "rather than W because each window spends one of its W slots on the token itself, "
        "which adds no new reach. The bound is exact for reachability — the measurement "
        "through real Attention layers shows gradient entering exactly these positions and "
        "exactly zero outside — but says nothing about how strongly distant tokens still "
        "influence the result."
    ),
    formulas=[
        "field(ℓ) = ℓ·(W − 1) + 1",
        "field(ℓ) − field(ℓ − 1) = W − 1",
    ],
    seed_note=(
        "The seed's formula was lost; its text says each layer extends the span by W, i.e. "
        "field = ℓ·W. With W keys counting the query itself, each layer adds W − 1 new "
        "positions, so the field is ℓ·(W−1)+1 (for Mistral 7B: 131,041, not 131,072)."
    ),
    evidence=evidence,
)
