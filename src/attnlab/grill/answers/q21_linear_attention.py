"""Q21: linear attention — reassociating φ(Q)φ(K)ᵀV, measured on attnlab's ops."""
from __future__ import annotations

import time

import torch

from ...ops.linear import linear_attention
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES


def _best_time(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    B, H, N, D = 1, 4, (4096 if ctx.full else 1024), 32
    q, k, v = (torch.randn(B, H, N, D, generator=g) * 0.5 for _ in range(3))
    with torch.no_grad():
        # bidirectional: (φ(Q)φ(K)ᵀ)V (the N×N way) vs φ(Q)(φ(K)ᵀV) (the d×d way)
        quad = linear_attention(q, k, v, causal=False, mode="parallel")
        lin = linear_attention(q, k, v, causal=False, mode="chunked")
        t_quad = _best_time(lambda: linear_attention(q, k, v, causal=False, mode="parallel"))
        t_lin = _best_time(lambda: linear_attention(q, k, v, causal=False, mode="chunked"))
        # causal: masked quadratic vs the chunked prefix-state form
        cq = linear_attention(q, k, v, mode="parallel")
        cc, st = linear_attention(q, k, v, mode="chunked", output_final_state=True)
    d_bi = float((quad - lin).abs().max())
    d_ca = float((cq - cc).abs().max())
    flops_quad = 2 * N * N * D * 2  # φ(Q)φ(K)ᵀ then ·V, per head
    flops_lin = 2 * N * D * D * 2  # φ(K)ᵀV then φ(Q)·, per head
    ev.measurements["shape"] = f"B={B}, H={H}, N={N}, d={D}, φ = elu+1, fp32"
    ev.measurements["max |(φQ φKᵀ)V − φQ(φKᵀV)| (bidirectional)"] = d_bi
    ev.measurements["max |masked quadratic − chunked| (causal)"] = d_ca
    ev.measurements["FLOPs per head, N×N order"] = flops_quad
    ev.measurements["FLOPs per head, d×d order"] = flops_lin
    ev.measurements["time N×N order (ms, best of 3, 1 thread)"] = round(t_quad * 1e3, 2)
    ev.measurements["time d×d order (ms, best of 3, 1 thread)"] = round(t_lin * 1e3, 2)
    ev.measurements["state per KV head (S: F×Dv, z: F)"] = (tuple(st.S.shape[-2:]), st.z.shape[-1])
    ev.check("both association orders give the same output", d_bi < 1e-4, f"{d_bi:.2e}")
    ev.check("causal chunked form equals the masked quadratic form", d_ca < 1e-4, f"{d_ca:.2e}")
    ev.check("the d×d order does N/d fewer FLOPs", flops_quad // flops_lin == N // D,
             f"ratio {flops_quad // flops_lin} = N/d = {N // D}")
    ev.check("the state does not depend on N", tuple(st.S.shape) == (B, H, D, D))
    ev.key_figure = (f"same output (max diff {d_bi:.1e}); {N // D}× fewer FLOPs; "
                     f"{t_quad / t_lin:.1f}× faster at N={N}")
    return ev


QUESTION = Question(
    id=21,
    title=TITLES[21],
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
        "The seed's formulas were lost (restored above). Calling φ a 'kernel approximation' "
        "is loose: with elu+1 nothing approximates softmax — it is a different, weaker "
        "similarity; only random-feature methods such as Performer aim to approximate the "
        "softmax kernel. The seed also omits the normaliser φ(q)·Σφ(k) and the causal case, "
        "where the key summary becomes a prefix sum."
    ),
    evidence=evidence,
)
