"""Q21: linear attention — reassociating φ(Q)φ(K)ᵀV, measured on attnlab's ops."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ...ops.linear import linear_attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._timing import median_time


def counted_flops(fn) -> int:
    """FLOPs of the matmuls `fn()` actually dispatches, counted by torch's FlopCounterMode
    (independent of any formula in this file)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    B, H, N, D = 1, 4, (4096 if ctx.full else 1024), 32
    q, k, v = (torch.randn(B, H, N, D, generator=g) * 0.5 for _ in range(3))

    def quad_fn():  # (φ(Q)φ(K)ᵀ)V: the N×N way
        return linear_attention(q, k, v, causal=False, mode="parallel")

    def lin_fn():  # φ(Q)(φ(K)ᵀV): the d×d way
        return linear_attention(q, k, v, causal=False, mode="chunked")

    with torch.no_grad():
        quad, lin = quad_fn(), lin_fn()
        # causal: masked quadratic vs the chunked prefix-state form
        cq = linear_attention(q, k, v, mode="parallel")
        cc, st = linear_attention(q, k, v, mode="chunked", output_final_state=True)
        f_quad = counted_flops(quad_fn) / (B * H)  # per head
        f_lin = counted_flops(lin_fn) / (B * H)
        t_quad = median_time(quad_fn, repeats=3)
        t_lin = median_time(lin_fn, repeats=3)
    d_bi = float((quad - lin).abs().max())
    d_ca = float((cq - cc).abs().max())
    formula_quad = 2 * N * N * D * 2  # φ(Q)φ(K)ᵀ then ·V, 2 FLOPs per multiply-add, per head
    formula_lin = 2 * N * D * D * 2  # φ(K)ᵀV then φ(Q)·, per head
    ratio = f_quad / f_lin
    ev.measurements["shape"] = f"B={B}, H={H}, N={N}, d={D}, φ = elu+1, fp32"
    ev.measurements["max |(φQ φKᵀ)V − φQ(φKᵀV)| (bidirectional)"] = d_bi
    ev.measurements["max |masked quadratic − chunked| (causal)"] = d_ca
    ev.measurements["FLOPs per head counted on the ops: N×N order / d×d order"] = (
        int(f_quad), int(f_lin))
    ev.measurements["FLOPs per head by formula: 4·N²·d / 4·N·d²"] = (formula_quad, formula_lin)
    ev.measurements["counted FLOP ratio vs N/d"] = (round(ratio, 2), N // D)
    ev.measurements["time N×N order / d×d order (ms, median of 3, 1 thread)"] = (
        round(t_quad * 1e3, 2), round(t_lin * 1e3, 2))
    ev.measurements["state per KV head (S: F×Dv, z: F)"] = (tuple(st.S.shape[-2:]), st.z.shape[-1])
    ev.check("both association orders give the same output", d_bi < 1e-4, f"{d_bi:.2e}")
    ev.check("causal chunked form equals the masked quadratic form", d_ca < 1e-4, f"{d_ca:.2e}")
    ev.check("counted FLOPs match 4·N²·d (N×N order) and 4·N·d² (d×d order) within 10%",
             abs(f_quad / formula_quad - 1) < 0.1 and abs(f_lin / formula_lin - 1) < 0.1,
             f"{f_quad / formula_quad:.3f}, {f_lin / formula_lin:.3f} of the formulas")
    ev.check("the d×d order does N/d fewer FLOPs (counted ratio within 10% of N/d)",
             abs(ratio / (N / D) - 1) < 0.1, f"{ratio:.1f} vs N/d = {N // D}")
    ev.check("the d×d order is > 2× faster at this N (timing, medians)", t_quad > 2 * t_lin,
             f"{t_quad / t_lin:.1f}×", timing=True)
    ev.check("the state does not depend on N", tuple(st.S.shape) == (B, H, D, D))
    ev.key_figure = (f"same output (max diff {d_bi:.1e}); {ratio:.1f}× fewer FLOPs counted "
                     f"(N/d = {N // D}); {t_quad / t_lin:.1f}× faster at N={N}")
    return ev


QUESTION = Question(
    id=21,
    title=TITLES[21],
    short=(
        'Linear attention replaces exp(q·k) with a similarity that factorises, φ(q)·φ(k), so the '
        'product can be re-associated: compute φ(K)ᵀV, a d×d summary, once and let each query read '
        'it, instead of forming the N×N score matrix. Cost drops from O(N²·d) to O(N·d²), and in '
        'the causal case the summary becomes a running prefix sum.'
    ),
    rubric=[
        KeyPoint("feature map φ replaces the softmax kernel",
                 [r"feature map", r"φ", r"phi", r"kernel", r"elu"],
                 formula="sim(q, k) = φ(q)·φ(k),  e.g. φ(x) = elu(x) + 1"),
        KeyPoint("re-associate: φ(K)ᵀV first (d×d), then multiply by φ(Q)",
                 [r"associat", r"φ\(k\)ᵀ ?v", r"k\^?t ?v", r"kᵀv", r"d ?[×x] ?d", r"first"],
                 formula="O = φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1))"),
        KeyPoint("O(N·d²) instead of O(N²·d): linear in N",
                 [r"o\(n ?[·*]? ?d ?(²|\^2)\)", r"linear in n", r"o\(n\)", r"linear"]),
        KeyPoint("normaliser φ(q)·Σφ(k)", [r"normali[sz]", r"denominator", r"σ ?φ\(k"]),
        KeyPoint("causal: prefix sums / RNN", [r"prefix", r"running sum", r"rnn", r"recurren"]),
    ],
    answer=(
        "Softmax attention needs every query-key score before it can normalise, which costs "
        "N² work and memory. Linear attention (Katharopoulos et al. 2020) swaps exp(q·k) for "
        "a similarity that factorises, sim(q, k) = φ(q)·φ(k), with a feature map φ such as "
        "elu(x)+1. Then the product is associative: instead of forming the N×N matrix "
        "φ(Q)φ(K)ᵀ and multiplying it by V, one first builds φ(K)ᵀV (a d×d_v summary of all "
        "keys and values) and the column sum of φ(K) (the normaliser), and each query reads "
        "them in O(d·d_v). Cost drops from O(N²·d) to O(N·d·d_v); for a causal model the "
        "summaries become prefix sums, which is what makes it an RNN at decode time. In "
        "practice the causal prefix sum is computed chunk by chunk: exact quadratic attention "
        "inside a chunk of C tokens and the running state across chunks, O(N·C·d + N·d²) in "
        "matmuls. The price is that φ(q)·φ(k) is not the softmax kernel: weights are not "
        "sharpened by an exponential, so the layer cannot focus as sharply."
    ),
    formulas=[
        "softmax: O = softmax(Q Kᵀ/√d) V  — O(N²·d)",
        "linear: O_i = φ(q_i) Σ_j φ(k_j)ᵀ v_j / (φ(q_i) · Σ_j φ(k_j))  =  φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1))",
        "causal: O_i = φ(q_i) S_i / (φ(q_i)·z_i),  S_i = Σ_{j≤i} φ(k_j)ᵀ v_j,  z_i = Σ_{j≤i} φ(k_j)",
        "cost: O(N·d·d_v) time, O(d·d_v) state;  chunked: O(N·C·d + N·d²)",
        "φ(x) = elu(x) + 1  (Katharopoulos et al. 2020)",
    ],
    seed_note=(
        "The seed's formulas were lost (restored above); the evidence counts the FLOPs both "
        "orders actually dispatch rather than restating the formula. Calling φ a 'kernel "
        "approximation' "
        "is loose: with elu+1 nothing approximates softmax — it is a different, weaker "
        "similarity; only random-feature methods such as Performer aim to approximate the "
        "softmax kernel. The seed also omits the normaliser φ(q)·Σφ(k) and the causal case, "
        "where the key summary becomes a prefix sum."
    ),
    evidence=evidence,
)
