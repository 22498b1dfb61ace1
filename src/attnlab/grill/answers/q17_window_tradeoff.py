"""Q17: what sliding windows give up — a needle beyond the receptive field cannot matter."""
from __future__ import annotations

from ...analysis.receptive_field import (
    RandomAttentionStack,
    perturbation_effect,
    theoretical_receptive_field,
)
from ...masks import sliding_window
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._sparse import needle_readout


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    N, W = 64, 16
    readouts = {}
    for label, pos, window in (("full attention, needle at distance 40", N - 41, None),
                               ("window 16, needle at distance 10", N - 11, W),
                               ("window 16, needle at distance 40", N - 41, W)):
        a, b = needle_readout(N, pos, window, seed=ctx.seed)
        readouts[label] = (round(float(a[0]), 4), round(float(b[0]), 4))
    ev.measurements["retrieved value (needle +1, needle −1)"] = readouts
    full = readouts["full attention, needle at distance 40"]
    near = readouts["window 16, needle at distance 10"]
    far = readouts["window 16, needle at distance 40"]
    ev.check("full attention retrieves the needle (readout follows it)",
             full[0] > 0.9 and full[1] < -0.9, str(full))
    ev.check("inside the window the needle is retrieved", near[0] > 0.9 and near[1] < -0.9,
             str(near))
    ev.check("beyond the window the readout is identical whatever the needle", far[0] == far[1],
             str(far))
    # stacking: a 3-layer stack of W = 4 reaches 10 positions; distance 10 is exactly out
    L, w, n = 3, 4, 30
    span = theoretical_receptive_field(L, w)
    stack = RandomAttentionStack(sliding_window(w), L, seed=ctx.seed)
    inside = perturbation_effect(stack, n, 8, position=n - span)
    outside = perturbation_effect(stack, n, 8, position=n - span - 1)
    ev.measurements[f"3 layers, W = 4 (span {span}): |Δ output| for input at distance span−1, span"] = \
        (inside, outside)
    ev.check("perturbing an input just beyond L·(W−1)+1 changes the output by exactly 0",
             outside == 0.0 and inside > 1e-6, f"{inside:.2e}, {outside}")
    ev.key_figure = (f"needle at distance 40, W = 16: readout {far[0]} for either needle "
                     f"(full attention: {full[0]} vs {full[1]})")
    return ev


QUESTION = Question(
    id=17,
    title=TITLES[17],
    short=(
        'A window saves compute and KV memory linearly, but a token more than L·(W − 1) positions back '
        'has no path to the output at all, its influence is exactly zero. Inside that bound, far '
        'information must be relayed hop by hop and gets diluted, so exact long-range retrieval '
        '(needle in a haystack, copying) suffers first; global tokens or full-attention layers are '
        'the usual fix.'
    ),
    rubric=[
        KeyPoint("saves compute and memory (linear / capped cache)",
                 [r"save", r"linear", r"capped", r"bounded", r"memory"]),
        KeyPoint("hard limit: beyond L·(W−1)+1 influence is exactly zero",
                 [r"exactly (0|zero)", r"no path", r"cannot (reach|propagate)", r"hard (limit|bound)",
                  r"l ?[·*×x]? ?\(w ?[-−] ?1\)"],
                 formula="∂y_i/∂x_j = 0 for i − j ≥ L·(W−1)+1"),
        KeyPoint("within the bound, relayed and diluted",
                 [r"relay", r"dilut", r"hop", r"indirect"]),
        KeyPoint("exact long-range recall suffers (needle in a haystack)",
                 [r"needle", r"recall", r"retriev", r"copy"]),
        KeyPoint("remedy: global/sink tokens or interleaved full layers",
                 [r"global", r"sink", r"full[- ]attention", r"interleav", r"hybrid"]),
    ],
    answer=(
        "A window buys linear compute and a cache capped at W tokens, and pays with reach. "
        "Within one layer a token further back than W − 1 is invisible; across L layers the "
        "hard limit is L·(W−1)+1 positions, beyond which an input has no path to the output "
        "at all — its gradient and its influence are exactly zero, not merely small. Inside "
        "that bound, long-range facts must be relayed hop by hop through intermediate "
        "tokens' states, which compresses and dilutes them, so exact retrieval of a detail "
        "from far back (needle-in-a-haystack, long-range copying, citing an early "
        "definition) degrades long before the theoretical bound. The usual remedies keep "
        "some full-range path: a few global or sink tokens, or full-attention layers "
        "interleaved with the windowed ones (Gemma 2, Character.AI-style hybrids)."
    ),
    formulas=[
        "direct reach per layer: W − 1 positions back",
        "hard bound: ∂y_i/∂x_j = 0 for i − j ≥ L·(W−1)+1",
        "savings: compute N·W instead of N²/2; KV min(T, W) instead of T",
    ],
    seed_note=(
        "The seed says far information 'can't propagate efficiently'; it is sharper than "
        "that: past L·(W−1)+1 positions it cannot propagate at all (the evidence shows an "
        "exactly zero effect), and within the bound it propagates only through lossy "
        "relays."
    ),
    evidence=evidence,
)
