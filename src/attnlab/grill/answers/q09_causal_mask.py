"""Q9: the causal mask."""
from __future__ import annotations

import math

import torch

from ...masks import causal
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._tiny import tiny_lm


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    N = 6
    m = causal()
    additive = torch.zeros(N, N).masked_fill(~m.to_dense(N, N), float("-inf"))
    g = torch.Generator().manual_seed(ctx.seed)
    s = torch.randn(N, N, generator=g) * 3
    p = torch.softmax(s / math.sqrt(1.0) + additive, -1)
    above = float(p.triu(1).abs().max())
    ev.measurements["mask (rows = queries)"] = m.describe(N).splitlines()[1:]
    ev.measurements["largest weight above the diagonal after softmax"] = above
    ev.check("weights on future keys are exactly 0", above == 0.0)
    ev.check("each row still sums to 1", bool(torch.allclose(p.sum(-1), torch.ones(N))))

    # in a real model: changing tokens at positions > t leaves outputs at <= t bit-identical
    model = tiny_lm(ctx.seed)
    toks = torch.randint(0, 101, (2, 32), generator=g)
    changed = toks.clone()
    changed[:, 20:] = torch.randint(0, 101, (2, 12), generator=g)
    with torch.no_grad():
        a, b = model(toks), model(changed)
    past = float((a[:, :20] - b[:, :20]).abs().max())
    future = float((a[:, 20:] - b[:, 20:]).abs().max())
    ev.measurements["logit change at positions < 20 when tokens ≥ 20 change"] = past
    ev.measurements["logit change at positions ≥ 20"] = future
    ev.check("past outputs unaffected by future tokens", past == 0.0, f"{past:.1e}")
    ev.check("later outputs do change", future > 1e-3, f"{future:.3f}")
    ev.key_figure = f"future weights exactly 0; past logits change {past:.0e} when the future changes"
    return ev


QUESTION = Question(
    id=9,
    title=TITLES[9],
    short=(
        'The causal mask is added to the attention scores before the softmax: 0 where the key is '
        'at or before the query and minus infinity where it is after. After the softmax future '
        'keys get exactly zero weight, so position i depends only on positions up to i, which is '
        'the autoregressive factorisation, with the attention computation itself unchanged.'
    ),
    rubric=[
        KeyPoint("additive mask: 0 on/below the diagonal, −∞ above",
                 [r"-? ?inf", r"−∞", r"-∞", r"minus infinity", r"lower[- ]triangular",
                  r"upper triangle"],
                 formula="M_ij = 0 if j ≤ i, −∞ if j > i;  softmax(QKᵀ/√d_k + M) V"),
        KeyPoint("future positions get exactly zero weight after softmax",
                 [r"zero (weight|probability)", r"exp ?\(?-? ?∞\)? ?= ?0", r"weight of 0",
                  r"exactly (0|zero)", r"becomes? (0|zero)"]),
        KeyPoint("position i sees only j ≤ i (autoregressive)",
                 [r"j ?(≤|<=) ?i", r"autoregress", r"cannot (attend|see|look)",
                  r"only (earlier|previous|past)"],
                 formula="p(x) = Π_i p(x_i | x_<i)"),
        KeyPoint("kernels skip masked blocks / never build the matrix",
                 [r"skip", r"never (build|materiali)", r"block", r"is_causal"]),
    ],
    answer=(
        "The causal mask is an N × N matrix M added to the attention logits before the "
        "softmax: M_ij = 0 when key j is at or before query i, and −∞ when it is after. "
        "exp(−∞) = 0, so every future key gets exactly zero weight and the remaining weights "
        "still sum to one. Position i therefore depends only on positions 0…i, which is the "
        "autoregressive factorisation p(x) = Π p(x_i | x_<i); the attention computation "
        "itself is unchanged. Kernels never build M: they skip key blocks above the diagonal "
        "and apply the comparison j ≤ i only on the diagonal blocks. With more keys than "
        "queries (decoding with a cache) the mask is aligned bottom-right: query row i sits "
        "at absolute position i + N_k − N_q."
    ),
    formulas=[
        "M_ij = 0 if j ≤ i, −∞ if j > i",
        "Attention = softmax(Q Kᵀ / √d_k + M) V",
        "p(x_1…x_N) = Π_i p(x_i | x_<i)",
    ],
    seed_note=(
        "The seed's matrix entries and symbols were lost: 0 on and below the diagonal, −∞ "
        "above; position i cannot attend to j > i."
    ),
    evidence=evidence,
)
