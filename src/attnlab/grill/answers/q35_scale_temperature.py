"""Q35: the 1/sqrt(d) factor as a softmax temperature, measured."""
from __future__ import annotations

import math

import torch

from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    n_keys, n_q = 256, 512
    max_entropy = math.log(n_keys)
    rows = {}
    for d in (16, 64, 256, 1024):
        q = torch.randn(n_q, d, generator=g)
        k = torch.randn(n_keys, d, generator=g)
        s = q @ k.T  # unit-variance entries: Var(q·k) = d
        var = float(s.var())
        ent_raw = float(_entropy(torch.softmax(s, -1)).mean())
        ent_scaled = float(_entropy(torch.softmax(s / math.sqrt(d), -1)).mean())
        top_raw = float(torch.softmax(s, -1).amax(-1).mean())
        rows[d] = (var, ent_raw, ent_scaled, top_raw)
        ev.measurements[f"d={d}: Var(q·k)"] = round(var, 1)
        ev.measurements[f"d={d}: entropy unscaled / scaled (nats)"] = (round(ent_raw, 3),
                                                                      round(ent_scaled, 3))
        ev.measurements[f"d={d}: mean max weight, unscaled"] = round(top_raw, 3)
    ev.measurements["max possible entropy ln(256)"] = round(max_entropy, 3)
    for d, (var, _, _, _) in rows.items():
        ev.check(f"Var(q·k) ≈ d at d={d} (within 15%)", abs(var / d - 1) < 0.15,
                 f"measured {var:.1f}")
    scaled = [r[2] for r in rows.values()]
    raw = [r[1] for r in rows.values()]
    ev.check("scaled entropy is flat in d (spread < 0.1 nats)", max(scaled) - min(scaled) < 0.1,
             f"{min(scaled):.3f}..{max(scaled):.3f}")
    ev.check("unscaled entropy collapses as d grows", raw[-1] < 0.5 * raw[0] and raw[-1] < 1.0,
             f"{raw[0]:.3f} at d=16 → {raw[-1]:.3f} at d=1024")
    ev.check("unscaled softmax saturates at d=1024 (mean max weight > 0.8)", rows[1024][3] > 0.8,
             f"{rows[1024][3]:.3f}")
    ev.key_figure = (f"Var(q·k) = {rows[1024][0]:.0f} at d=1024; entropy {raw[-1]:.2f} nats unscaled "
                     f"vs {scaled[-1]:.2f} scaled (max {max_entropy:.2f})")
    return ev


QUESTION = Question(
    id=35,
    title=TITLES[35],
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
