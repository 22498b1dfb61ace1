"""Q15: how stacked sliding windows reach long range — the receptive field, measured."""
from __future__ import annotations

from ...analysis.configs import get_config
from ...analysis.receptive_field import (
    RandomAttentionStack,
    field_size,
    graph_reach,
    measured_reach,
    theoretical_receptive_field,
)
from ...masks import sliding_window
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    cases = [(1, 5), (2, 5), (4, 5), (3, 9), (6, 4)] + ([(8, 9), (12, 5)] if ctx.full else [])
    rows = {}
    ok = True
    for L, W in cases:
        N = L * (W - 1) + 6
        reach = measured_reach(RandomAttentionStack(sliding_window(W), L, seed=ctx.seed), N, 8)
        got = field_size(reach)
        rows[f"L={L}, W={W}"] = got
        ok &= got == theoretical_receptive_field(L, W) == field_size(
            graph_reach(sliding_window(W), L, N))
    ev.measurements["measured field (autograd, random stacks)"] = rows
    ev.check("autograd field == graph reach == L·(W−1)+1 for every (L, W)", ok, str(rows))

    cfg = get_config("mistral-7b")  # docs/sources.md: 32 layers, W = 4096 (Mistral paper §2)
    exact = theoretical_receptive_field(cfg.n_layers, cfg.window)
    seed_value = cfg.n_layers * cfg.window
    ev.measurements["Mistral 7B exact span L·(W−1)+1"] = exact
    ev.measurements["seed's L·W"] = seed_value
    ev.check("Mistral 7B: 32·4095 + 1 = 131,041", exact == 131_041, str(exact))
    ev.check("L·W overcounts by L − 1 = 31", seed_value - exact == cfg.n_layers - 1,
             f"{seed_value} − {exact}")
    ev.key_figure = f"measured == L·(W−1)+1 for {len(cases)} stacks; Mistral 7B: {exact:,} (not {seed_value:,})"
    return ev


QUESTION = Question(
    id=15,
    title=TITLES[15],
    short=(
        'Information hops back up to W − 1 positions per layer, because each layer attends to outputs '
        'that already mixed their own windows, so after L layers the reach is L·(W − 1) + 1 tokens. '
        'For Mistral 7B, 32 layers of 4,096, that is about 131K tokens, but it is only a reachability '
        'bound: signals get diluted over the relays, so exact long-range recall still needs global '
        'tokens, sinks or full-attention layers.'
    ),
    rubric=[
        KeyPoint("stacking: each layer extends the reach by W − 1",
                 [r"stack", r"each layer", r"per layer", r"hop"]),
        KeyPoint("receptive field L·(W − 1) + 1 (≈ L·W)",
                 [r"l ?[·*×x]? ?\(w ?[-−] ?1\)", r"l ?[·*×x] ?w", r"linear in (depth|l)"],
                 formula="field(L, W) = L·(W − 1) + 1"),
        KeyPoint("Mistral 7B: 32 × 4096 ≈ 131K",
                 [r"131", r"mistral", r"32 ?[×x*] ?4096"]),
        KeyPoint("only a bound: signal diluted over relays",
                 [r"bound", r"dilut", r"theoretical", r"not (a )?guarantee", r"in principle"]),
        KeyPoint("global tokens / sinks / full layers for real long range",
                 [r"global", r"sink", r"full[- ]attention layers?", r"interleav"]),
    ],
    answer=(
        "One windowed layer only mixes a token with its W − 1 predecessors, but the next "
        "layer's window reads outputs that have already mixed in their own predecessors, so "
        "information can hop backwards W − 1 positions per layer. After L layers the output "
        "at position i can depend on inputs from i − L·(W−1) to i: a span of L·(W−1)+1 "
        "positions, linear in depth. Mistral 7B, with 32 layers of W = 4096, therefore has a "
        "theoretical span of 131,041 tokens while each layer caches only 4096. Two caveats: "
        "this is a reachability bound, not a guarantee — a signal must survive L relays, each "
        "diluting it among W keys, so the effective range in trained models is much shorter; "
        "and exact long-range recall still needs something else, such as global tokens, "
        "attention sinks or interleaved full-attention layers (Gemma 2 alternates local and "
        "global layers)."
    ),
    formulas=[
        "field(L, W) = L·(W − 1) + 1",
        "Mistral 7B: 32·(4096 − 1) + 1 = 131,041 ≈ 131K",
        "per layer: the span grows by W − 1 (the W keys include the token itself)",
    ],
    seed_note=(
        "The seed's formula was lost, and its 131K comes from L·W = 131,072, which counts "
        "the token itself once per layer: the exact span is L·(W−1)+1 = 131,041, 31 fewer. "
        "It also presents the span as what the model uses; it is only an upper bound on "
        "reachability, measured here by autograd (gradients outside are exactly zero)."
    ),
    evidence=evidence,
)
