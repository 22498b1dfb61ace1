"""Q20: Reformer's LSH attention — exact in the limit, error falling with hash rounds."""
from __future__ import annotations

import itertools

from ...analysis.lsh_quality import clustered_qk, quality_curve
from ...ops.lsh import lsh_attention, shared_qk_attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    qk, v = clustered_qk(96, 32, seed=ctx.seed)
    one = lsh_attention(qk, v, n_hashes=2, chunk_size=96)
    diff = float((one - shared_qk_attention(qk, v)).abs().max())
    ev.measurements["max |LSH − exact| when one chunk covers the sequence"] = diff
    ev.check("one chunk covering everything gives exact shared-QK attention", diff < 1e-5,
             f"{diff:.1e}")
    n, c = (1024, 32) if ctx.full else (512, 32)
    qk, v = clustered_qk(n, 32, seed=ctx.seed)
    curve = quality_curve(qk, v, [1, 2, 4, 8], chunk_size=c, n_buckets=n // c, k=8,
                          seed=ctx.seed)
    errs = [round(curve[r]["relative_error"], 4) for r in curve]
    recall = [round(curve[r]["topk_recall"], 4) for r in curve]
    ev.measurements[f"N = {n}, chunk {c}: relative error at 1/2/4/8 rounds"] = errs
    ev.measurements["top-8 recall at 1/2/4/8 rounds"] = recall
    ev.check("error falls at every doubling of n_hashes",
             all(a > b for a, b in itertools.pairwise(errs)), str(errs))
    ev.check("top-8 recall rises and exceeds 0.9 at 8 rounds",
             all(a <= b for a, b in itertools.pairwise(recall)) and recall[-1] > 0.9, str(recall))
    ev.measurements["scores computed per round vs full"] = (n * 2 * c, n * n)
    ev.key_figure = (f"rel. error {errs[0]} → {errs[-1]}, top-8 recall {recall[0]} → "
                     f"{recall[-1]} from 1 to 8 rounds")
    return ev


QUESTION = Question(
    id=20,
    title=TITLES[20],
    short=(
        'Reformer hashes shared query-key vectors with random-rotation LSH so that similar vectors '
        'land in the same bucket, sorts tokens by bucket, and attends only within fixed-size chunks '
        'of that order plus the previous chunk. Several hash rounds cut the chance of missing a close '
        'key, and cost drops to about O(N log N) for the sort plus O(N·c) attention; it is elegant '
        'but sorting and gathering are slow on accelerators, so it is rarely used now.'
    ),
    rubric=[
        KeyPoint("locality-sensitive hashing of queries/keys into buckets",
                 [r"lsh", r"locality[- ]sensitive", r"hash", r"bucket"],
                 formula="h(x) = argmax([xR ; −xR])"),
        KeyPoint("shared QK (keys = normalised queries)",
                 [r"shared[- ]?qk", r"tie[sd]? (q|quer)", r"same projection", r"normali[sz]ed quer"]),
        KeyPoint("sort by bucket, attend within chunks (own + previous)",
                 [r"sort", r"chunk"]),
        KeyPoint("multiple hash rounds reduce misses",
                 [r"(several|multiple|more) (hash(ing)? )?rounds", r"n_hashes", r"rounds"]),
        KeyPoint("O(N log N) complexity",
                 [r"n ?log ?n"], formula="O(n_hashes · N · c · d + n_hashes · N log N)"),
        KeyPoint("rarely used in production (slow sort/gather, FlashAttention)",
                 [r"rarely", r"not (widely )?used", r"slow on (gpu|accelerator|hardware)",
                  r"flash ?attention"]),
    ],
    answer=(
        "Reformer (Kitaev, Kaiser and Levskaya, ICLR 2020) observes that softmax is "
        "dominated by the few keys closest to the query, and finds them with "
        "locality-sensitive hashing instead of scoring all N. Queries and keys share one "
        "projection (keys are the normalised queries, so a vector and its neighbours hash "
        "alike); a random rotation R maps x to bucket argmax([xR; −xR]), so vectors at a "
        "small angle usually collide. Tokens are sorted by (bucket, position), the sorted "
        "order is cut into equal chunks, and each chunk attends to itself and the previous "
        "chunk — fixed-size dense work even when buckets are uneven. A token attends to "
        "itself only if nothing else is visible (with shared QK it would otherwise dominate). "
        "Several hash rounds are run and combined exactly through their log-sum-exp, "
        "correcting for keys seen in more than one round; more rounds mean fewer missed "
        "neighbours. Cost: O(n_hashes·N·c·d) for attention plus O(N log N) for the sort. "
        "Reformer also added reversible layers and chunked feed-forwards to save memory. "
        "It is rarely used now: sort/gather kernels are slow on accelerators, the benefit "
        "appears only at very long N, causal LSH is awkward, and fused exact attention "
        "(FlashAttention) closed much of the gap."
    ),
    formulas=[
        "h(x) = argmax([xR ; −xR]),  R ∈ ℝ^{d × n_buckets/2} random",
        "k_j = q_j / ‖q_j‖  (shared QK)",
        "o = Σ_r exp(lse_r − lse)·o_r,  lse = log Σ_r exp(lse_r)  (rounds merged)",
        "cost = O(n_hashes · N · c · d + n_hashes · N log N)",
    ],
    seed_note=(
        "The seed's complexity was lost (Reformer is usually quoted as O(N log N)). It speaks "
        "of hashing queries and keys and attending within a bucket; Reformer ties them "
        "(keys are normalised queries) so that both land in the same buckets, and it attends "
        "by sorted chunks (own + previous), not strictly within a bucket."
    ),
    evidence=evidence,
)
