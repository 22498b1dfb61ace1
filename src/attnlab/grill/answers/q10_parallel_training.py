"""Q10: why causal masking lets one parallel pass train on every position."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.conformance import decode_logits
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._timing import median_time
from ._tiny import tiny_lm


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    model = tiny_lm(ctx.seed)
    g = torch.Generator().manual_seed(ctx.seed)
    N = 64
    toks = torch.randint(0, 101, (2, N), generator=g)
    with torch.no_grad():
        err = float((model(toks) - decode_logits(model, toks, prefix_len=1)).abs().max())
    ev.measurements["max |parallel − sequential| logits"] = err
    ev.check("one parallel pass == N sequential steps", err < 1e-4, f"{err:.1e}")
    with torch.no_grad():
        logits = model(toks)
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, 101), toks[:, 1:].reshape(-1),
                                 reduction="none")
    ev.measurements["next-token losses from one forward"] = losses.numel()
    ev.check("one forward yields B·(N−1) training targets", losses.numel() == 2 * (N - 1))

    with torch.no_grad():  # both sides on the same thread count: a fair ratio
        t_par = median_time(lambda: model(toks), repeats=5)
        t_seq = median_time(lambda: decode_logits(model, toks, prefix_len=1), repeats=3)
    ev.measurements["parallel forward, median (ms)"] = round(t_par * 1e3, 2)
    ev.measurements["token-by-token with cache, median (ms)"] = round(t_seq * 1e3, 1)
    ev.measurements["speed-up"] = round(t_seq / t_par, 1)
    ev.check("parallel pass is > 3× faster than the sequential loop (timing, medians)",
             t_seq > 3 * t_par, f"{t_seq / t_par:.1f}×", timing=True)
    ev.key_figure = (f"{N}-token pass == {N} cached steps (err {err:.0e}), "
                     f"{t_seq / t_par:.0f}× faster here")
    return ev


QUESTION = Question(
    id=10,
    title=TITLES[10],
    short=(
        'In training the whole target sequence is known, so all positions go through the model in '
        "one pass, and the causal mask makes each position's output exactly what it would be "
        'from its prefix alone. That gives N − 1 valid next-token losses per sequence from one '
        'forward pass of large matrix products, instead of N dependent steps as in an RNN.'
    ),
    rubric=[
        KeyPoint("all positions processed in one parallel pass (teacher forcing)",
                 [r"parallel", r"one (forward )?pass", r"at once", r"teacher forcing",
                  r"simultaneous"]),
        KeyPoint("mask makes each output depend only on its prefix",
                 [r"prefix", r"only (sees|see|earlier|previous|past)", r"no (peeking|leak)",
                  r"same as (if|decoding)"]),
        KeyPoint("N − 1 next-token losses per sequence",
                 [r"n ?[-−] ?1", r"every position", r"loss at (each|every)", r"all positions"],
                 formula="L = −(1/(N−1)) Σ_i log p(x_{i+1} | x_≤i)"),
        KeyPoint("contrast with RNNs' sequential dependency",
                 [r"rnn", r"recurren", r"sequential", r"depend(s|ent)? on (the )?previous"]),
    ],
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
