"""Q10: why causal masking lets one parallel pass train on every position."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ...models.conformance import check_parallel_equals_decode, decode_logits
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES
from ._tiny import tiny_lm


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    model = tiny_lm(ctx.seed)
    g = torch.Generator().manual_seed(ctx.seed)
    N = 64
    toks = torch.randint(0, 101, (2, N), generator=g)
    err = check_parallel_equals_decode(model, toks, prefix_len=1, atol=1e-4)
    ev.measurements["max |parallel − sequential| logits"] = err
    ev.check("one parallel pass == N sequential steps", err < 1e-4, f"{err:.1e}")
    with torch.no_grad():
        logits = model(toks)
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, 101), toks[:, 1:].reshape(-1),
                                 reduction="none")
    ev.measurements["next-token losses from one forward"] = losses.numel()
    ev.check("one forward yields B·(N−1) training targets", losses.numel() == 2 * (N - 1))

    def timed(fn, reps=3):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[reps // 2]

    with torch.no_grad():  # both sides on the same thread count: a fair ratio
        t_par = timed(lambda: model(toks))
        t_seq = timed(lambda: decode_logits(model, toks, prefix_len=1), reps=1)
    ev.measurements["parallel forward (ms)"] = t_par * 1e3
    ev.measurements["token-by-token with cache (ms)"] = t_seq * 1e3
    ev.measurements["speed-up"] = t_seq / t_par
    ev.check("parallel pass is faster than the sequential loop", t_seq > t_par,
             f"{t_seq / t_par:.1f}×")
    ev.key_figure = (f"{N}-token pass == {N} cached steps (err {err:.0e}), "
                     f"{t_seq / t_par:.0f}× faster here")
    return ev


QUESTION = Question(
    id=10,
    title=TITLES[10],
    answer=(
        "In training the whole sequence is known, so all N positions go through the model "
        "at once. Because of the causal mask, the output at position i is computed from "
        "tokens 0…i only — exactly what it would be if the model had been run on the prefix "
        "alone — so every position is a valid next-token prediction and one forward pass "
        "yields N − 1 losses per sequence (teacher forcing). The work is a few large "
        "matrix products over all positions instead of N dependent steps, which is what "
        "makes transformers train far faster than RNNs, whose step t needs the hidden state "
        "of step t − 1. At inference the same model must go token by token, and the KV "
        "cache makes those steps reuse the past; the two computations agree to rounding."
    ),
    formulas=[
        "L = −(1/(N−1)) Σ_{i=1}^{N−1} log p_θ(x_{i+1} | x_≤i)   (all terms from one pass)",
        "h_i^(l) = f(h_0^(l−1), …, h_i^(l−1))   (causal: no dependence on j > i)",
    ],
    seed_note="The seed's description is right; the equality of the parallel pass and "
              "sequential decoding is measured here rather than asserted.",
    evidence=evidence,
)
