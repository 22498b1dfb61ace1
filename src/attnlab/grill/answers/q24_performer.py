"""Q24: Performer FAVOR+ — unbiased positive random features, error ~ 1/√m, the QR sign fix."""
from __future__ import annotations

import math

import torch

from ...masks import causal
from ...ops.linear import draw_random_features, favor_kernel_estimate, performer_attention
from ...ops.softmax import attention_reference
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    d, P = 16, 256
    # 1. kernel estimate error vs m (iid features), relative RMS over P pairs and R draws
    x = torch.randn(P, d, generator=g) * 0.6
    y = torch.randn(P, d, generator=g) * 0.6
    exact = torch.exp((x * y).sum(-1) / math.sqrt(d))
    ms = [64, 256, 1024, 4096] + ([16384] if ctx.full else [])
    R = 40 if ctx.full else 20
    errs = []
    for m in ms:
        rel = torch.stack([(favor_kernel_estimate(x, y, draw_random_features(
            m, d, orthogonal=False, generator=g)) - exact) / exact for _ in range(R)])
        errs.append(float(rel.square().mean().sqrt()))
    X = torch.tensor([[math.log(m), 1.0] for m in ms], dtype=torch.float64)
    slope = float(torch.linalg.lstsq(X, torch.tensor(errs, dtype=torch.float64).log()
                                     .unsqueeze(1)).solution[0, 0])
    # 2. bias with and without the QR sign fix on an axis-aligned pair
    e1 = torch.zeros(8)
    e1[0] = 0.8  # |x| = 0.8 along an axis: bias ≈ 0.24 standard errors per √draw
    k_exact = math.exp(float(e1 @ e1) / math.sqrt(8))
    draws = 4000 if ctx.full else 1000
    stats = {}
    for fix in (True, False):
        est = torch.stack([favor_kernel_estimate(e1, e1, draw_random_features(
            8, 8, orthogonal=True, sign_fix=fix, generator=g)) for _ in range(draws)])
        se = float(est.std()) / math.sqrt(draws)
        stats[fix] = ((float(est.mean()) - k_exact) / se, float(est.mean()))
    # 3. attention output error vs exact causal softmax
    N, D = 128, 32
    q, k, v = (torch.randn(1, 2, N, D, generator=g) for _ in range(3))
    q, k = q * 0.5, k * 0.5
    ref = attention_reference(q, k, v, mask=causal())
    att = {}
    for m in (16, 256, 4096):
        om = draw_random_features(m, D, generator=torch.Generator().manual_seed(ctx.seed + 1))
        out = performer_attention(q, k, v, om)
        att[m] = float((out - ref).norm() / ref.norm())
    ev.measurements["kernel: m"] = ms
    ev.measurements["kernel: relative RMS error (iid)"] = [round(e, 4) for e in errs]
    ev.measurements["kernel: log-log slope of error vs m"] = round(slope, 3)
    ev.measurements["ORF with sign fix: (mean − exact)/s.e., mean"] = stats[True]
    ev.measurements["ORF without sign fix: (mean − exact)/s.e., mean"] = stats[False]
    ev.measurements["exact kernel exp(x·y/√d)"] = k_exact
    ev.measurements["causal attention rel. error at m = 16 / 256 / 4096"] = list(att.values())
    ev.check("kernel error falls like 1/√m (slope in [−0.6, −0.4])", -0.6 < slope < -0.4,
             f"slope {slope:.3f}")
    ev.check("orthogonal features with the sign fix are unbiased (|z| < 4)",
             abs(stats[True][0]) < 4, f"z = {stats[True][0]:.2f}")
    ev.check("without the sign fix the estimate is biased (|z| > 4)", abs(stats[False][0]) > 4,
             f"z = {stats[False][0]:.2f}")
    ev.check("attention error shrinks as m grows", att[16] > att[256] > att[4096], str(att))
    ev.key_figure = (f"kernel error slope {slope:.2f} vs m (1/√m: −0.5); no-sign-fix bias "
                     f"z = {stats[False][0]:.1f}; causal error {att[4096]:.3f} at m = 4096")
    return ev


QUESTION = Question(
    id=24,
    title=TITLES[24],
    short=(
        'Performer keeps the softmax kernel and estimates it with positive random features: with '
        'Gaussian directions ω, φ(x) = exp(ωᵀx − |x|²/2)/√m makes φ(q)·φ(k) an unbiased estimate of '
        'exp(q·k), so attention runs as linear attention over m features in O(N·m·d). Positive '
        'features keep the normaliser stable, orthogonal directions (with the QR sign fix) cut the '
        'variance, and the error falls like 1/√m.'
    ),
    rubric=[
        KeyPoint("random features approximate the softmax kernel (FAVOR+)",
                 [r"random features?", r"favor", r"approximat.{0,30}softmax", r"softmax kernel"]),
        KeyPoint("positive exponential features (not trigonometric)",
                 [r"positive", r"exp ?\(ω", r"exp\(w", r"not (trig|fourier|sin)"],
                 formula="φ(x) = exp(ωᵀx − |x|²/2) / √m,  E[φ(q)·φ(k)] = exp(q·k)"),
        KeyPoint("unbiased estimate", [r"unbiased", r"expectation", r"e\["]),
        KeyPoint("orthogonal features (with the QR sign fix) lower variance",
                 [r"orthogonal", r"qr", r"sign"]),
        KeyPoint("linear cost O(N·m·d); error ~ 1/√m",
                 [r"o\(n ?[·*]? ?m", r"1 ?/ ?√ ?m", r"1/sqrt\(m\)", r"linear"]),
    ],
    answer=(
        "Performer (Choromanski et al. 2020) keeps softmax's kernel and estimates it. For "
        "Gaussian ω, E[exp(ωᵀx − |x|²/2) · exp(ωᵀy − |y|²/2)] = exp(xᵀy), so with m random "
        "directions the feature map φ(x) = exp(ωᵢᵀx − |x|²/2)/√m gives an unbiased estimate of "
        "exp(q·k/√d) once q and k are each scaled by d^{-1/4}. Attention then runs as "
        "normalised linear attention over m features: O(N·m·d) time and a constant-size state "
        "for decoding. Two details matter. The features are positive (FAVOR+), unlike "
        "trigonometric random Fourier features whose estimates of small kernel values can be "
        "negative and make the normaliser blow up. And the directions can be drawn orthogonal "
        "in blocks of d, which lowers the variance — but only if the QR factorisation's sign "
        "ambiguity is fixed (multiply Q's columns by sign(diag R)); otherwise the directions "
        "are not uniformly distributed and the estimate is biased, as measured here. The "
        "error falls like 1/√m, and the variance grows with |q|² + |k|², so sharp attention "
        "(large logits) needs many features: that, not the theory, limits it in practice."
    ),
    formulas=[
        "φ(x) = exp(ωᵢᵀx̂ − |x̂|²/2) / √m,   x̂ = x · d^{−1/4},   ωᵢ ~ N(0, I_d)",
        "E[φ(q)·φ(k)] = exp(q·k/√d)  (unbiased)",
        "orthogonal features: Q, R = qr(G);  Q ← Q · sign(diag R);  ωᵢ = |gᵢ| · Qᵢ",
        "relative error ∝ 1/√m;  cost O(N·m·d),  state m·d_v + m per head",
    ],
    seed_note=(
        "The seed calls it 'Random Fourier Features'. FAVOR+ deliberately uses positive "
        "exponential features instead: trigonometric (Fourier) features give an estimator that "
        "can go negative and is unstable near zero kernel values. The seed's feature-map "
        "formula was lost (restored above), and it omits the orthogonal features and the QR "
        "sign correction without which the orthogonal estimator is biased. 'Provably good' "
        "means unbiased with bounded variance, which still grows with the logit scale."
    ),
    evidence=evidence,
)
