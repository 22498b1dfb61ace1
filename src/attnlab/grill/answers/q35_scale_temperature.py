"""Q35: the 1/sqrt(d) factor as a softmax temperature, measured on attnlab's attention."""
from __future__ import annotations

import math

import torch

from ...ops.softmax import attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def weights(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The attention probabilities attnlab computes, read out with one-hot values: with
    V = I (one value per key) the output row i is P[i, :]."""
    eye = torch.eye(k.shape[-2]).view(1, 1, k.shape[-2], k.shape[-2])  # (1, 1, Nk, Nk)
    return attention(q, k, eye, scale=scale)[0, 0]  # (Nq, Nk)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    n_keys, n_q = 256, 512
    max_entropy = math.log(n_keys)
    # unit-variance logits (σ² = 1): softmax entropy ≈ ln n − σ²/2 for large n
    expect = max_entropy - 0.5
    rows, ref_err = {}, 0.0
    for d in (16, 64, 256, 1024):
        q = torch.randn(1, 1, n_q, d, generator=g)
        k = torch.randn(1, 1, n_keys, d, generator=g)
        s = q[0, 0] @ k[0, 0].T  # unit-variance entries: Var(q·k) = d
        p_def, p_raw = weights(q, k), weights(q, k, scale=1.0)  # default scale vs none
        ref_err = max(ref_err, float((p_def - torch.softmax(s / math.sqrt(d), -1)).abs().max()))
        rows[d] = (float(s.var()), float(_entropy(p_raw).mean()), float(_entropy(p_def).mean()),
                   float(p_raw.amax(-1).mean()))
        ev.measurements[f"d={d}: Var(q·k)"] = round(rows[d][0], 1)
        ev.measurements[f"d={d}: entropy unscaled / default scale (nats)"] = (
            round(rows[d][1], 3), round(rows[d][2], 3))
        ev.measurements[f"d={d}: mean max weight, unscaled"] = round(rows[d][3], 3)
    ev.measurements["max possible entropy ln(256); expected at unit variance ln n − 1/2"] = (
        round(max_entropy, 3), round(expect, 3))
    ev.measurements["max |attnlab weights − softmax(q·k/√d)|"] = ref_err
    scaled = [r[2] for r in rows.values()]
    raw = [r[1] for r in rows.values()]
    ev.check("attnlab's default scale is 1/√d: its weights equal softmax(q·k/√d) (≤ 1e-5)",
             ref_err <= 1e-5, f"{ref_err:.1e}")
    ev.check("with the default scale the entropy stays at ln n − 1/2 for every d (± 0.1 nats)",
             all(abs(h - expect) < 0.1 for h in scaled),
             f"{min(scaled):.3f}..{max(scaled):.3f} vs {expect:.3f}")
    ev.check("without it the entropy collapses as d grows (halves or more from d=16 to 1024, "
             "below 1 nat)", raw[-1] < 0.5 * raw[0] and raw[-1] < 1.0,
             f"{raw[0]:.3f} at d=16 → {raw[-1]:.3f} at d=1024")
    ev.key_figure = (f"Var(q·k) = {rows[1024][0]:.0f} at d=1024; entropy {raw[-1]:.2f} nats "
                     f"unscaled vs {scaled[-1]:.2f} with 1/√d (expected {expect:.2f}, max "
                     f"{max_entropy:.2f})")
    return ev


QUESTION = Question(
    id=35,
    title=TITLES[35],
    short=(
        "Dividing the logits by √d_k is a softmax temperature. With unit-variance entries, "
        "q·k has variance d_k, so without the correction the logits spread out as heads get "
        "wider, softmax saturates to near one-hot and its gradients vanish; dividing by √d_k "
        "brings the logits back to unit variance, keeping the same sharpness for any head "
        "size."
    ),
    rubric=[
        KeyPoint("Var(q·k) = d_k for unit-variance entries",
                 [r"variance", r"var\(", r"grows with d", r"scales? with d"],
                 formula="Var(q·k) = Σ_i Var(q_i k_i) = d_k"),
        KeyPoint("τ = √d_k acts as a temperature",
                 [r"temperature", r"√\s*d", r"sqrt\(?d", r"root d"],
                 formula="softmax(s/τ), τ = √d_k"),
        KeyPoint("without it softmax saturates / gradients vanish",
                 [r"saturat", r"one[- ]hot", r"vanish", r"peaky", r"sharp"],
                 formula="∂p_i/∂s_j = p_i(δ_ij − p_j) → 0 as p becomes one-hot"),
        KeyPoint("higher temperature flattens, lower sharpens",
                 [r"flat", r"soft(er)?", r"smooth"]),
    ],
    answer=(
        "Dividing the logits by a constant τ before softmax is a temperature: softmax(s/τ). "
        "If the entries of q and k are independent with zero mean and unit variance, the dot "
        "product q·k is a sum of d such products, so its variance is d and its typical size is "
        "√d. Without correction the logits spread further apart as the head dimension grows, "
        "the softmax turns into a near one-hot argmax, and its gradient (p_i(δ_ij − p_j)) "
        "vanishes. Choosing τ = √d brings the logits back to unit variance for any d, so the "
        "attention distribution keeps the same sharpness whatever the head size. A larger τ "
        "makes the distribution flatter, a smaller one sharper; learned models then move away "
        "from unit-variance logits by scaling q and k themselves. Some models change the "
        "constant (Gemma-2 27B scales queries by 1/√144 instead of 1/√128; MLA uses "
        "1/√(d_h + d_R))."
    ),
    formulas=[
        "Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V",
        "Var(q·k) = Σ_i Var(q_i k_i) = d_k   (independent, zero-mean, unit-variance entries)",
        "softmax(s / τ)_i = exp(s_i/τ) / Σ_j exp(s_j/τ),  τ = √d_k",
        "∂p_i/∂s_j = p_i(δ_ij − p_j) → 0 as p becomes one-hot",
    ],
    seed_note=(
        "The seed's symbols were lost, leaving the direction of the argument garbled. Stated "
        "exactly: the temperature is √d_k; raising it flattens the distribution, lowering it "
        "sharpens it; we divide by √d_k because the logit variance grows as d_k, not because "
        "a smoother distribution is wanted for its own sake — the aim is a d-independent "
        "logit scale. The measurement shows the variance, the entropy collapse without "
        "scaling, and the flat entropy with it."
    ),
    evidence=evidence,
)
