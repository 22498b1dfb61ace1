"""Q8: the MQA forward pass, written out and checked against the layer."""
from __future__ import annotations

import math

import torch

from ...layers.attention import Attention
from ...ops.rope import apply_rope
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    B, N, d, H = 2, 10, 96, 6
    d_h = d // H
    layer = Attention(d, n_heads=H, n_kv_heads=1).eval()
    X = torch.randn(B, N, d)
    pos = torch.arange(N)
    with torch.no_grad():
        Q = (X @ layer.q_proj.weight.T).view(B, N, H, d_h)  # (B, N, H, d_h): H query heads
        K = X @ layer.k_proj.weight.T  # (B, N, d_h): one key head
        V = X @ layer.v_proj.weight.T  # (B, N, d_h): one value head
        Q = apply_rope(Q.transpose(1, 2), pos)  # (B, H, N, d_h)
        K = apply_rope(K.unsqueeze(1), pos)[:, 0]  # (B, N, d_h)
        causal = torch.ones(N, N, dtype=torch.bool).tril()
        heads = []
        for h in range(H):
            S = Q[:, h] @ K.transpose(-1, -2) / math.sqrt(d_h)  # (B, N, N)
            S = S.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(S, -1) @ V)  # (B, N, d_h): same V for every head
        manual = torch.cat(heads, -1) @ layer.o_proj.weight.T  # (B, N, d)
        out = layer(X)
    err = float((out - manual).abs().max())
    ev.measurements["W_Q shape"] = tuple(layer.q_proj.weight.T.shape)
    ev.measurements["W_K shape"] = tuple(layer.k_proj.weight.T.shape)
    ev.measurements["W_V shape"] = tuple(layer.v_proj.weight.T.shape)
    ev.measurements["W_O shape"] = tuple(layer.o_proj.weight.T.shape)
    ev.measurements["max |layer − hand-written MQA|"] = err
    ev.check("hand-written MQA forward == attnlab Attention(n_kv_heads=1)", err < 1e-5,
             f"{err:.1e}")
    ev.check("K and V projections are d × d_h (one head), W_Q is d × H·d_h",
             layer.k_proj.weight.shape == (d_h, d) and layer.q_proj.weight.shape == (d, d))
    ev.key_figure = f"hand-written MQA == layer to {err:.0e}; W_K, W_V: {d}×{d_h}, W_Q: {d}×{d}"
    return ev


QUESTION = Question(
    id=8,
    title=TITLES[8],
    short=(
        'Project X to H query heads, Q = X W_Q, but to a single key head K = X W_K and a single '
        'value head V = X W_V. Each head computes softmax(Q_h Kᵀ/√d_h + causal mask) V, the head '
        'outputs are concatenated and multiplied by W_O; in practice the H query heads are '
        'stacked as extra rows against the one K, so K and V are read once.'
    ),
    rubric=[
        KeyPoint("Q has H heads; K and V one head each (W_K, W_V are d × d_h)",
                 [r"(one|single|shared) (k|key)", r"w_?k.{0,20}d_?h", r"d ?[×x] ?d_?h"],
                 formula="Q = X W_Q ∈ ℝ^{N×H·d_h},  K = X W_K ∈ ℝ^{N×d_h},  V = X W_V ∈ ℝ^{N×d_h}"),
        KeyPoint("per-head scaled scores with the shared K",
                 [r"q_?h ?k", r"√ ?d", r"sqrt ?\(?d", r"scaled"],
                 formula="O_h = softmax(Q_h Kᵀ / √d_h + M) V"),
        KeyPoint("causal mask / softmax per head",
                 [r"causal", r"mask", r"softmax"]),
        KeyPoint("concatenate heads and project with W_O",
                 [r"concat", r"w_?o\b", r"output projection"],
                 formula="MQA(X) = Concat(O_1, …, O_H) W_O"),
        KeyPoint("batched: query heads become rows of one matmul, K/V read once",
                 [r"rows", r"batch", r"read once", r"one matmul", r"reshape"]),
    ],
    answer=(
        "Take X of shape (B, N, d). Queries: Q = X W_Q with W_Q of size d × H·d_h, split into "
        "H heads of d_h. Keys and values: one head each, K = X W_K and V = X W_V with W_K, "
        "W_V of size d × d_h — computed once and shared. Apply RoPE to Q and K if the model "
        "uses it. For each head h: S_h = Q_h Kᵀ / √d_h (N × N), add the causal mask, "
        "A_h = softmax(S_h) row-wise, O_h = A_h V. Concatenate O_1…O_H to (B, N, H·d_h) and "
        "project with W_O (H·d_h × d). In practice the heads are batched: view Q as "
        "(B, H·N, d_h) against one K, so the H heads become extra rows of a single matmul — "
        "which is also why MQA decoding reads K and V once for all heads."
    ),
    formulas=[
        "Q = X W_Q ∈ ℝ^{N×H·d_h},  K = X W_K ∈ ℝ^{N×d_h},  V = X W_V ∈ ℝ^{N×d_h}",
        "O_h = softmax(Q_h Kᵀ / √d_h + M) V,   M_ij = 0 if j ≤ i else −∞",
        "MQA(X) = Concat(O_1, …, O_H) W_O,   W_O ∈ ℝ^{H·d_h × d}",
    ],
    seed_note="The seed's matrices and shapes were lost; they are restored above and "
              "checked against the layer.",
    evidence=evidence,
)
