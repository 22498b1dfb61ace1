"""Q30: induction heads, measured on a 2-layer attention-only model trained here."""
from __future__ import annotations

import itertools

from ...analysis.heads import induction_score, previous_token_score
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._committed import committed, spread
from ._heads_lab import induction_run


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    _, res, c = induction_run(ctx.seed, ctx.full)
    ind, prev = res["induction_scores_layer1"], res["prev_token_scores_layer0"]
    curve = res["curve"]
    ev.measurements["layer-1 induction scores per head (mass rule)"] = ind
    ev.measurements["layer-0 previous-token scores per head"] = prev
    ev.measurements["best induction score at first / last evaluation"] = (
        round(curve[0]["induction_max"], 3), round(curve[-1]["induction_max"], 3))
    ev.measurements["phase change step (steepest rise of the best induction score)"] = \
        res["phase_change_step"]
    ev.measurements["training steps / eval period"] = (c.steps, c.eval_period)
    uniform = sum(1 / (i + 1) for i in range(c.eval_period, 2 * c.eval_period)) / c.eval_period
    ev.measurements["what a uniform causal head scores"] = round(uniform, 4)
    # the detector itself: an ideal induction pattern scores 1, a previous-token one ~0
    import torch

    T, n = c.eval_period, 2 * c.eval_period
    ideal = torch.zeros(n, n)
    for i in range(n):
        ideal[i, i - T + 1 if i >= T else 0] = 1.0
    ev.check("the detector scores an ideal induction pattern 1.0",
             abs(float(induction_score(ideal, T)) - 1.0) < 1e-6)
    prev_ideal = torch.zeros(n, n)
    prev_ideal[0, 0] = 1.0
    prev_ideal[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    ev.check("and an ideal previous-token head (N−1)/N on the previous-token rule",
             abs(float(previous_token_score(prev_ideal)) - (n - 1) / n) < 1e-6)
    best, gain = max(ind), res["icl_gain"]
    first_gain = curve[0]["icl_gain"]
    ev.measurements["in-context gain (nats) at first / last evaluation"] = (
        round(first_gain, 3), round(gain, 3))
    ev.check(f"a layer-1 head attends like an induction head: best score ≥ 5× a uniform causal "
             f"head's ({uniform:.3f}, from this run's period)", best >= 5 * uniform,
             f"best {best:.3f}")
    ev.check("the model learned in context: the second copy's loss is > 1 nat below the "
             "first's", gain > 1.0, f"gain {gain:.2f} nats (first evaluation {first_gain:.2f})")
    # the phase change: the steepest rise of the induction score and of the in-context gain
    # happen at the same time (Olsson et al.'s co-occurrence), read from the training curve
    steps = [h["step"] for h in curve]

    def steepest(key):
        rises = [b[key] - a[key] for a, b in itertools.pairwise(curve)]
        return steps[1 + max(range(len(rises)), key=rises.__getitem__)] if rises else None

    s_ind, s_gain = steepest("induction_max"), steepest("icl_gain")
    ev.measurements["steepest rise: induction score / in-context gain (step)"] = (s_ind, s_gain)
    ev.check("the induction score and the in-context gain jump together (steepest rises "
             f"≤ {2 * c.eval_every} steps apart)", s_ind is not None and s_gain is not None
             and abs(s_ind - s_gain) <= 2 * c.eval_every, f"steps {s_ind} and {s_gain}")
    ev.cite("induction heads form abruptly early in training, at the same time as the "
            "in-context-learning score (loss at token 500 − loss at token 50) improves",
            "Olsson et al. 2022, \"In-context Learning and Induction Heads\"; docs/sources.md")
    full = committed("induction")
    if full is not None:
        s, runs = full["summary"], full["runs"]
        tag = f"committed full run ({len(runs)} seeds, {full['config']['steps']} steps)"
        ev.measurements[f"{tag}: phase change step, mean (min–max)"] = \
            spread(s["phase_change_step"], 0)
        ev.measurements[f"{tag}: best induction score"] = spread(s["best_induction_score"])
        ev.measurements[f"{tag}: in-context gain, nats"] = spread(s["icl_gain"])
        ev.measurements[f"{tag}: gain with the induction heads zero-ablated"] = \
            spread(s["icl_gain_induction_ablated"])
        ev.measurements[f"{tag}: seeds with a phase change and an induction head ≥ 0.5"] = sum(
            r["phase_change_step"] is not None and max(r["induction_scores_layer1"]) >= 0.5
            for r in runs)
    ev.key_figure = (f"best layer-1 induction score {best:.2f} (uniform head {uniform:.2f}); "
                     f"in-context gain {gain:.2f} nats; induction score and gain jump at steps "
                     f"{s_ind} / {s_gain} of {c.steps}")
    return ev


QUESTION = Question(
    id=30,
    title=TITLES[30],
    short=(
        "An induction head completes patterns like [A][B] … [A] → [B]: at the current token A "
        "it attends to the token that followed the earlier A and copies it into the "
        "prediction. It works with a previous-token head in an earlier layer, and its "
        "sudden appearance in training coincides with the jump in in-context learning "
        "(Olsson et al. 2022)."
    ),
    rubric=[
        KeyPoint("attends to the token AFTER the earlier occurrence (prefix matching)",
                 [r"(token )?after", r"follow(ed|s|ing)", r"next token", r"prefix match"],
                 formula="attend i → j + 1 where x_j = x_i, j < i"),
        KeyPoint("copies that token into the prediction",
                 [r"cop(y|ies|ying)", r"predict", r"\[a\]\s*\[b\]", r"a b .{0,10}a"]),
        KeyPoint("two-layer circuit with a previous-token head (K-composition)",
                 [r"previous[- ]token head", r"k[- ]composition", r"two[- ]layer", r"circuit"]),
        KeyPoint("tied to in-context learning / a phase change",
                 [r"in[- ]context", r"\bicl\b", r"phase change", r"few[- ]shot"]),
        KeyPoint("Olsson et al. 2022 / Elhage et al. 2021",
                 [r"olsson", r"elhage", r"anthropic"]),
    ],
    answer=(
        "An induction head is a head that, at the current token A, looks back for the "
        "earlier places where A occurred and attends to the token that FOLLOWED A there, "
        "then writes that token's identity into the residual stream so the model predicts "
        "it next ([A][B] … [A] → [B]). It is a two-head circuit: a previous-token head in an "
        "earlier layer writes 'my predecessor was A' into each position; the induction "
        "head's query (current token A) matches that key (K-composition), and its OV "
        "circuit copies the attended token. Described by Elhage et al. (2021) and studied "
        "at scale by Olsson et al. (2022), who tie its emergence to a sudden drop in loss on "
        "late tokens: in-context learning. Detection: on a random block of length T "
        "repeated, score the attention from position i ≥ T to i − T + 1."
    ),
    formulas=[
        "induction score = mean over i ≥ T of P[i, i − T + 1]   (repeated random block of period T)",
        "previous-token score = (1/N) Σ_i P[i, i − 1];   ideal head: (N − 1)/N",
        "copying score = Σ Re λ(W_U W_O W_V W_E) / Σ |λ|",
    ],
    seed_note=(
        "The seed's 'copies a token from earlier when a similar prefix recurs' blurs the "
        "mechanism: the head attends to the token AFTER the earlier occurrence of the "
        "current token (prefix matching), not to the earlier occurrence itself — that is a "
        "duplicate-token head. The 2-layer composition with a previous-token head is what "
        "makes it work."
    ),
    evidence=evidence,
)
