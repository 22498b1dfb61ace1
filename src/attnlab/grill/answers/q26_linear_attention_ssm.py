"""Q26: linear attention and SSMs — SSD == masked linear attention, and what selectivity buys."""
from __future__ import annotations

import torch

from ...ops.linear import linear_attention
from ...ops.ssd import segsum, ssd
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def _selective_copy(N: int, trials: int, g: torch.Generator) -> tuple[float, float, float]:
    """Recall the value at the one marked position after N tokens, with a 1-state SSM.

    Selective: Δ_t = 20·m_t (Δ = 0 leaves the state untouched: decay 1, no input), C = 1/20.
    Non-selective: Δ, B, C constant — the output is a fixed convolution of x; the best one
    (least squares over a grid of Δ) is reported. Returns (MSE selective, MSE best LTI,
    the LTI bound 1 − 1/N for a uniform marked position).
    """
    x = torch.randn(trials, 1, N, 1, generator=g)  # (T, H=1, N, P=1)
    pos = torch.randint(0, N, (trials,), generator=g)
    target = x[torch.arange(trials), 0, pos, 0]  # (T,)
    mark = torch.zeros(trials, 1, N)
    mark[torch.arange(trials), 0, pos] = 1.0
    A = torch.tensor([-1.0])
    ones = torch.ones(trials, 1, N, 1)
    y = ssd(x, 20.0 * mark, A, ones, ones / 20.0)  # selective Δ (input-dependent)
    mse_sel = float((y[:, 0, -1, 0] - target).square().mean())
    best = float("inf")
    for dt in (1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0, 5.0):
        y = ssd(x, torch.full((trials, 1, N), dt), A, ones, ones)[:, 0, -1, 0]  # LTI
        gain = float((y * target).sum() / y.square().sum())  # best output scale
        best = min(best, float((gain * y - target).square().mean()))
    return mse_sel, best, 1 - 1 / N


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    Bt, H, N, P, S = 2, 4, 96, 8, 8
    x = torch.randn(Bt, H, N, P, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(Bt, H, N, generator=g))
    A = -torch.rand(H, generator=g)
    Bm = torch.randn(Bt, 1, N, S, generator=g) * 0.5
    Cm = torch.randn(Bt, 1, N, S, generator=g) * 0.5
    # 1. decays 1 (A = 0): SSD is exactly causal linear attention (q = C, k = B, v = Δx)
    y0 = ssd(x, dt, torch.zeros(H), Bm, Cm)
    lin = linear_attention(Cm.expand(Bt, H, N, S), Bm.expand(Bt, H, N, S), x * dt.unsqueeze(-1),
                           feature_map="identity", normalize=False)
    d_lin = float((y0 - lin).abs().max())
    # 2. general selective case: the recurrence equals (L ∘ C Bᵀ) X with L 1-semiseparable
    y_rec = ssd(x, dt, A, Bm, Cm, mode="recurrent")
    L = torch.exp(segsum(dt * A[:, None]))  # (B, H, N, N)
    M = L * (Cm @ Bm.transpose(-1, -2))  # (B, H, N, N): the "attention matrix" of the SSM
    y_mat = M @ (x * dt.unsqueeze(-1))
    d_mat = float((y_rec - y_mat).abs().max())
    y_chunk = ssd(x, dt, A, Bm, Cm, chunk_size=16)
    d_chunk = float((y_rec - y_chunk).abs().max())
    sv = torch.linalg.svdvals(L[0, 0, N // 2:, : N // 2].double())  # a block below the diagonal
    rank1 = float(sv[1] / sv[0])
    # 3. selectivity: a selective-copy probe
    n_probe, trials = (256, 512) if ctx.full else (64, 256)
    mse_sel, mse_lti, bound = _selective_copy(n_probe, trials, g)
    ev.measurements["shape"] = f"B={Bt}, H={H}, N={N}, P={P}, state S={S}, one B/C group, fp32"
    ev.measurements["max |SSD(A=0) − causal linear attention|"] = d_lin
    ev.measurements["max |recurrent − (L ∘ C Bᵀ) X|"] = d_mat
    ev.measurements["max |recurrent − chunked|"] = d_chunk
    ev.measurements["σ₂/σ₁ of an off-diagonal block of L"] = rank1
    ev.measurements["selective copy: N, trials"] = (n_probe, trials)
    ev.measurements["selective copy MSE: selective Δ"] = mse_sel
    ev.measurements["selective copy MSE: best time-invariant (Δ grid)"] = mse_lti
    ev.measurements["LTI lower bound 1 − 1/N"] = bound
    ev.check("with all decays 1, SSD equals causal linear attention", d_lin < 1e-4, f"{d_lin:.2e}")
    ev.check("selective SSD equals the masked-attention form (L ∘ C Bᵀ) X", d_mat < 1e-4,
             f"{d_mat:.2e}")
    ev.check("chunked SSD equals the recurrence", d_chunk < 1e-4, f"{d_chunk:.2e}")
    ev.check("L is 1-semiseparable (off-diagonal blocks have rank 1)", rank1 < 1e-6, f"{rank1:.1e}")
    ev.check("selective Δ recalls the marked token", mse_sel < 1e-6, f"MSE {mse_sel:.1e}")
    ev.check("no time-invariant SSM does (best MSE within 0.8–1.25× the 1 − 1/N bound)",
             0.8 * bound < mse_lti < 1.25 * bound,
             f"MSE {mse_lti:.3f} vs bound {bound:.3f}")
    ev.key_figure = (f"SSD(A=0) == linear attention to {d_lin:.1e}; selective SSD == (L∘CBᵀ)X to "
                     f"{d_mat:.1e}; selective copy MSE {mse_sel:.0e} vs LTI {mse_lti:.2f}")
    return ev


QUESTION = Question(
    id=26,
    title=TITLES[26],
    short=(
        "Both are linear recurrences over a fixed-size state, so both train in parallel and "
        "decode in O(1) per token. Mamba-2's state-space duality makes it exact: an SSM with "
        "scalar-times-identity transitions equals causal linear attention times a decay mask, "
        "Y = (L ∘ C Bᵀ) X, and that holds for the selective, input-dependent case too; what "
        "selectivity adds over plain linear attention is input-dependent forgetting."
    ),
    rubric=[
        KeyPoint("both: fixed-size state, O(N) training, O(1) per decoded token",
                 [r"recurren", r"fixed[- ]size state", r"constant (memory|state)", r"o\(1\)"]),
        KeyPoint("state-space duality (Mamba-2, Dao & Gu 2024)",
                 [r"duality", r"\bssd\b", r"mamba[- ]?2", r"dao", r"semiseparable"]),
        KeyPoint("SSM = masked linear attention: Y = (L ∘ C Bᵀ) X",
                 [r"mask", r"l\s*∘", r"decay"],
                 formula="Y = (L ∘ C Bᵀ) X,  L_ij = a_{j+1}···a_i"),
        KeyPoint("selectivity: input-dependent Δ, B, C (forgetting/writing)",
                 [r"selectiv", r"input[- ]dependent", r"data[- ]dependent"]),
    ],
    answer=(
        "Both are linear recurrences with a fixed-size state, so both train in parallel over "
        "the sequence and decode in O(1) per token. The precise link is Mamba-2's state-space "
        "duality (Dao & Gu 2024). An SSM whose transition is a scalar times the identity, "
        "h_t = a_t h_{t−1} + B_t x_t with output y_t = C_t h_t, unrolls to Y = (L ∘ C Bᵀ) X, "
        "where L_ij = a_{j+1}···a_i below the diagonal: that is causal linear attention with "
        "queries C, keys B, values X and an extra decay mask L, whose off-diagonal blocks all "
        "have rank one (1-semiseparable). With every a_t = 1 it is plain causal linear "
        "attention, and the evidence checks both identities numerically. The duality holds "
        "for the selective case too: a_t = exp(Δ_t A), B_t and C_t may all depend on the "
        "input — that is exactly Mamba-2's layer, computed by the same chunked algorithm. "
        "What selectivity adds over vanilla linear attention (and over time-invariant SSMs, "
        "which are fixed convolutions) is input-dependent forgetting and writing: with "
        "Δ_t = 0 a token leaves the state untouched, with large Δ_t it overwrites it. On a "
        "selective-copy probe a one-number selective state recalls the marked token exactly, "
        "while no time-invariant SSM can beat the 1 − 1/N error of averaging."
    ),
    formulas=[
        "SSM: h_t = a_t h_{t−1} + B_tᵀ x_t,  y_t = C_t h_t,  a_t = exp(Δ_t A)",
        "dual form: Y = (L ∘ C Bᵀ) X,  L_ij = a_{j+1}···a_i (j ≤ i), 0 above",
        "a_t ≡ 1: Y = tril(C Bᵀ) X  = causal linear attention with φ = identity",
        "time-invariant (Δ, B, C constant): y = K * x,  K_m = C·B Δ e^{mΔA}  (a convolution)",
        "cost: O(N·d²) recurrent/chunked, O(N²·d) quadratic dual",
    ],
    seed_note=(
        "The seed says the duality covers only fixed-parameter SSMs and that 'SSMs are "
        "linear attention' holds only for non-selective variants. That is backwards for "
        "Mamba-2: the state-space duality is stated and used for selective SSMs (input-"
        "dependent Δ, B, C) with scalar-times-identity A; it becomes linear attention with a "
        "data-dependent decay mask. What the duality does not cover is Mamba-1's diagonal "
        "(per-channel) A. Its point that selectivity makes the model more expressive than "
        "vanilla linear attention stands (shown on the selective-copy probe); its lost "
        "formulas are restored above."
    ),
    evidence=evidence,
)
