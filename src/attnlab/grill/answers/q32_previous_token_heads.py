"""Q32: previous-token heads — detected in layer 0 of the trained induction model, and
shown to be a necessary input of the induction head (ablation)."""
from __future__ import annotations

from ...analysis.ablation import ablate
from ...experiments.induction import eval_tokens, in_context_gain
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._heads_lab import induction_run


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    model, res, c = induction_run(ctx.seed, ctx.full)
    prev = res["prev_token_scores_layer0"]
    best = max(range(len(prev)), key=prev.__getitem__)
    n = 2 * c.eval_period
    uniform = sum(1 / (i + 1) for i in range(1, n)) / n
    toks = eval_tokens(c)
    base = in_context_gain(model, toks, c.eval_period)
    with ablate(model, [(0, best)]):
        no_prev = in_context_gain(model, toks, c.eval_period)
    ev.measurements["layer-0 previous-token scores (mass rule)"] = prev
    ev.measurements["ideal previous-token head over N tokens: (N−1)/N"] = round((n - 1) / n, 4)
    ev.measurements["uniform causal head"] = round(uniform, 4)
    ev.measurements["in-context gain: intact / best previous-token head ablated"] = (
        round(base, 3), round(no_prev, 3))
    ev.check("a layer-0 head is a previous-token head (score ≥ 3× uniform)",
             prev[best] >= 3 * uniform, f"{prev[best]:.2f} vs {uniform:.3f}")
    ev.check("ablating it removes ≥ 30% of the in-context gain (the induction head needs it)",
             no_prev < 0.7 * base, f"{base:.2f} → {no_prev:.2f}")
    ev.key_figure = (f"layer-0 head {best}: previous-token score {prev[best]:.2f} (uniform "
                     f"{uniform:.2f}); ablating it: in-context gain {base:.2f} → {no_prev:.2f}")
    return ev


QUESTION = Question(
    id=32,
    title=TITLES[32],
    short=(
        "A head whose query at position i puts almost all its weight on position i − 1, so "
        "it copies information about the previous token forward. It sits in early layers and "
        "is the first half of the induction circuit: it tags each position with 'my "
        "predecessor was A', which the induction head then matches."
    ),
    rubric=[
        KeyPoint("attends from i to i − 1", [r"i\s*[-−]\s*1", r"previous (token|position)",
                                            r"one (token|position) back"],
                 formula="previous-token score = (1/N) Σ_i P[i, i − 1]"),
        KeyPoint("found in early layers", [r"early", r"lower", r"first layer", r"layer 0"]),
        KeyPoint("feeds induction heads (K-composition)",
                 [r"induction", r"k[- ]composition"]),
        KeyPoint("needs only relative position", [r"relative position", r"rope", r"positional"]),
    ],
    answer=(
        "A head whose query at position i puts most of its weight on key i − 1, so it "
        "copies (a function of) the previous token into position i. It needs only relative "
        "position (easy with RoPE or learned positions), which is why it appears in early "
        "layers. Its best-known job is as the first half of an induction circuit: it marks "
        "each position with 'the token before me was A', which the later induction head "
        "matches against the current token (K-composition). It also serves n-gram-like "
        "local statistics. The ideal head scores (N−1)/N on the mass rule because position "
        "0 has no predecessor."
    ),
    formulas=["previous-token score = (1/N) Σ_i P[i, i − 1];  ideal = (N − 1)/N",
              "induction query·key: q(x_i) · k(prev-token output at j) = large when x_{j−1} = x_i"],
    seed_note=(
        "The seed lost the formula ('attends from position to position'): it is i → i − 1. "
        "'Used in counting' is not an established role; the documented one is feeding "
        "induction heads (Elhage et al. 2021; Olsson et al. 2022)."
    ),
    evidence=evidence,
)
