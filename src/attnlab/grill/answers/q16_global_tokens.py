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
from ..registry import Evidence, EvidenceContext, Question
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
    pairs = int(longformer.to_dense(N, N).sum())
    ev.measurements["visible pairs vs N²"] = (pairs, N * N)
    ev.key_figure = f"band reach 2r+1 per layer; + one global: all {N} inputs in 2 layers"
    return ev


QUESTION = Question(
    id=16,
    title=TITLES[16],
    answer=(
        "A global token is a position exempt from locality: it attends to every position, "
        "and every position attends to it, while all other pairs keep the local window. "
        "Longformer uses them for task tokens such as [CLS] or the question in QA; BigBird "
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
        "The seed's description is right for bidirectional encoders; it omits that in a "
        "causal decoder a global token cannot collect anything after its own position, so "
        "the two-hop shortcut only links positions on the near side of a late global."
    ),
    evidence=evidence,
)
