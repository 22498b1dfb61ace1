"""Q18: why sparse patterns are rare in production — their measured cost against fused
dense attention at a realistic length, and LSH's quality on unstructured inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...analysis.lsh_quality import relative_error
from ...analysis.scaling import median_seconds
from ...masks import sliding_window
from ...ops.lsh import lsh_attention, shared_qk_attention
from ...ops.softmax import attention
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    N, D, W = (16384, 64, 2048) if ctx.full else (4096, 64, 512)
    g = torch.Generator().manual_seed(ctx.seed)
    q, k, v = (torch.randn(1, 1, N, D, generator=g) for _ in range(3))
    m = sliding_window(W)
    t = {"fused causal SDPA (dense)": median_seconds(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 2, estimator="min"),
        f"SDPA + dense window mask W={W}": median_seconds(  # slowest: one run suffices
        lambda: attention(q, k, v, mask=m, backend="sdpa"), 1, warmup=0),
        "LSH (2 rounds, chunk 64)": median_seconds(
        lambda: lsh_attention(q, v, n_hashes=2, chunk_size=64, causal=True), 2,
        estimator="min")}
    t[f"block-sparse window W={W}"] = median_seconds(
        lambda: attention(q, k, v, mask=m, backend="block_sparse"), 2, estimator="min")
    base = t["fused causal SDPA (dense)"]
    ev.measurements[f"seconds at N = {N}, d = {D}, 1 thread"] = {a: round(b, 4) for a, b in t.items()}
    ev.measurements["time relative to fused causal"] = {a: round(b / base, 2) for a, b in t.items()}
    dense_window = t[f"SDPA + dense window mask W={W}"]
    ev.check("a window expressed as a dense mask is no faster than fused causal attention",
             dense_window >= 0.9 * base, f"{dense_window:.3f} s vs {base:.3f} s")
    # quality: LSH on i.i.d. inputs (no clusters) misses much of the softmax mass
    g = torch.Generator().manual_seed(ctx.seed + 1)
    qs, vs = torch.randn(1, 2, 1024, D, generator=g), torch.randn(1, 2, 1024, D, generator=g)
    err = relative_error(lsh_attention(qs, vs, n_hashes=2, chunk_size=64),
                         shared_qk_attention(qs, vs))
    ev.measurements["LSH relative error on unstructured inputs (N = 1024, 2 rounds)"] = round(err, 3)
    ev.check("approximate sparsity has a visible quality cost on unstructured inputs", err > 0.3,
             f"{err:.2f}")
    bs = t[f"block-sparse window W={W}"]
    ideal = N / (2 * W)  # causal scores N²/2 against window scores ≈ N·W
    ev.measurements["exact window speed-up over fused causal: measured / ideal N/(2W)"] = (
        round(base / bs, 2), ideal)
    ev.check("the exact window kernel beats fused causal attention (it skips work)", bs < base,
             f"{base / bs:.2f}x of an ideal {ideal:.0f}x")
    ev.key_figure = ", ".join(f"{a}: {b / base:.2f}x" for a, b in t.items()) + \
        f"; LSH error {err:.2f}"
    return ev


QUESTION = Question(
    id=18,
    title=TITLES[18],
    answer=(
        "Because the savings are smaller and harder to get than the FLOP count suggests, "
        "and the costs are real. Fused exact attention (FlashAttention and its successors) "
        "already removed the N² memory traffic, so dense attention is compute-bound and runs "
        "near peak; a sparse pattern only wins if its kernel skips work at comparable "
        "efficiency, and gathers, irregular blocks, sorts (LSH) and per-pattern masks eat "
        "much of that — a window written as a dense mask is not faster at all. The gain only "
        "appears at long N, while most tokens in production are served at moderate lengths. "
        "Fixed or approximate patterns also cost quality, mostly on exact long-range recall, "
        "and they complicate everything around attention: KV caching (BigBird and LSH still "
        "need every key), paging, speculative decoding, kernels for each hardware target. "
        "Production long-context models therefore keep full attention and attack memory "
        "instead (GQA/MLA, paged and quantized caches). Where sparsity survives it is the "
        "sliding window — every layer in Mistral 7B, alternating with full layers in Gemma 2 "
        "— the sparse idea in its most hardware-friendly form: contiguous, exact, and it "
        "caps the cache."
    ),
    formulas=[
        "speed-up ≤ (dense work)/(sparse work) = N / (2·W) for a causal window",
        "fused dense attention: O(N²·d) FLOPs, O(N·d) memory traffic",
    ],
    seed_note=(
        "The seed's answer holds but is unmeasured; sliding windows are in fact used in "
        "production (Mistral 7B, Gemma 2/3 local layers), so 'rare' applies to irregular and "
        "approximate patterns (BigBird, LSH), not to windows."
    ),
    evidence=evidence,
)
