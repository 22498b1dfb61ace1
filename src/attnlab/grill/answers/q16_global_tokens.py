"""Q16: global tokens (Longformer) — two hops join any pair; exact against the reference."""
from __future__ import annotations

import torch

from ...analysis.receptive_field import (
    RandomAttentionStack,
    graph_reach,
    measured_reach,
    theoretical_receptive_field,
)
from ...masks import causal, global_tokens, sliding_window
from ...ops.softmax import attention, attention_reference
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._sparse import band, window_plus_globals


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    N, r = 48, 2
    local = band(r)
    longformer = window_plus_globals(r, [0])
    for name, m in (("band only", local), ("band + global [0]", longformer)):
        for L in (1, 2):
            got = measured_reach(RandomAttentionStack(m, L, seed=ctx.seed), N, 8, query=N - 1)
            ev.measurements[f"{name}: inputs reaching the last output, {L} layer(s)"] = int(got.sum())
            ev.check(f"{name}, L={L}: autograd reach == graph reach",
                     torch.equal(got, graph_reach(m, L, N)), "")
    two = ev.measurements["band + global [0]: inputs reaching the last output, 2 layer(s)"]
    ev.check("with one global token every input reaches every output in 2 layers", two == N,
             f"{two} of {N}")
    # causal decoders: a global token only gathers what precedes it
    cg = sliding_window(3) | (global_tokens([0]) & causal())
    reach = int(measured_reach(RandomAttentionStack(cg, 2), N, 8).sum())
    ev.measurements["causal, global at position 0, 2 layers: inputs reaching the last"] = reach
    ev.check("causal global at position 0 relays nothing beyond itself: reach = window span + 1",
             reach == theoretical_receptive_field(2, 3) + 1, f"{reach}")
    # exactness: dense SDPA with the lowered mask == the reference
    g = torch.Generator().manual_seed(ctx.seed)
    q, k, v = (torch.randn(2, 4, N, 16, generator=g) for _ in range(3))
    diff = float((attention(q, k, v, mask=longformer, backend="sdpa")
                  - attention_reference(q, k, v, mask=longformer)).abs().max())
    ev.measurements["max |sdpa − reference| with the Longformer mask"] = diff
    ev.check("Longformer mask attention is exact", diff < 1e-5, f"{diff:.1e}")
    # Longformer's released window: attention_window 512 = 256 keys on each side
    n_lf, radius = 1024, 256
    keys = band(radius).to_dense(n_lf, n_lf).sum(-1)[radius:n_lf - radius]  # interior rows
    ev.measurements["Longformer band (256 per side): keys per interior query, incl. itself"] = \
        sorted({int(x) for x in keys})
    ev.check("a 512-token window (256 each side) gives each interior query 2·256 + 1 keys",
             bool((keys == 2 * radius + 1).all()), f"{sorted({int(x) for x in keys})}")
    ev.cite("Longformer's released models use attention_window 512 (256 tokens on each side); "
            "4,096 tokens is their maximum sequence length, not the window",
            "Longformer (Beltagy et al. 2020) and its released configs (docs/sources.md)")
    pairs = int(longformer.to_dense(N, N).sum())
    ev.measurements["visible pairs vs N²"] = (pairs, N * N)
    ev.key_figure = f"band reach 2r+1 per layer; + one global: all {N} inputs in 2 layers"
    return ev


QUESTION = Question(
    id=16,
    title=TITLES[16],
    short=(
        "Global tokens are a few positions that attend to every position and are attended by "
        "every position, while all others keep a local window. They act as hubs, so any two "
        "tokens connect within two layers at a cost linear in N; Longformer makes task tokens "
        "such as [CLS] or the question global on top of a 512-token local window, and BigBird "
        "uses the same idea."
    ),
    rubric=[
        KeyPoint("attend to all and attended by all",
                 [r"attend(s|ed)? (to )?(all|every)", r"(all|every).{0,30}attend.{0,10}(to )?them",
                  r"both directions"],
                 formula="allowed(i, j) = local(i, j) ∨ i ∈ G ∨ j ∈ G"),
        KeyPoint("hub: any pair connected in two hops / layers",
                 [r"two (hops|layers|steps)", r"2 (hops|layers)", r"hub", r"short[- ]circuit"]),
        KeyPoint("cost stays linear: O(N·(W + |G|))",
                 [r"linear", r"o\(n", r"cheap", r"few (global )?tokens"]),
        KeyPoint("Longformer: [CLS]/question tokens global, 512-token local window",
                 [r"longformer", r"\[?cls\]?", r"\b512\b"]),
        KeyPoint("BigBird / ETC use global tokens too", [r"big ?bird", r"\betc\b"]),
    ],
    answer=(
        "A global token is a position exempt from locality: it attends to every position, "
        "and every position attends to it, while all other pairs keep the local window. "
        "Longformer uses them for task tokens such as [CLS] or the question in QA, on top of "
        "a local window of 512 tokens (256 on each side) in its released models, which take "
        "sequences of up to 4,096 tokens; BigBird "
        "(ITC) makes some existing tokens global, ETC adds extra ones. They act as a hub: "
        "any token can reach any other in two hops (token → global → token), so the "
        "receptive field covers the sequence after two layers however small the window, "
        "at a cost of about 2·G·N extra scores for G globals. In a causal decoder the hub "
        "only collects from positions before it — a global at position 0 sees nothing but "
        "itself — which is one reason decoders use attention sinks and full-attention "
        "layers instead."
    ),
    formulas=[
        "allowed(i, j) = local(i, j) ∨ i ∈ G ∨ j ∈ G",
        "extra scores ≈ 2·|G|·N − |G|²;   any pair joined in 2 hops",
        "total work O(N·(W + |G|)·d)",
    ],
    seed_note=(
        "The seed gives Longformer a '4K window'; that is its maximum sequence length "
        "(4,096 tokens). The local window of the released models is 512 tokens, 256 on each "
        "side. The rest of the seed's description is right for bidirectional encoders; it "
        "omits that in a "
        "causal decoder a global token cannot collect anything after its own position, so "
        "the two-hop shortcut only links positions on the near side of a late global."
    ),
    evidence=evidence,
)
