"""Q30: induction heads, measured on a 2-layer attention-only model trained here."""
from __future__ import annotations

from ...analysis.heads import induction_score, previous_token_score
from ..registry import Evidence, EvidenceContext, Question
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
    ev.check("a layer-1 head became an induction head (score ≥ 0.3, uniform ≈ "
             f"{uniform:.2f})", max(ind) >= 0.3, f"best {max(ind):.3f}")
    ev.check("a phase change was observed during training", res["phase_change_step"] is not None,
             f"step {res['phase_change_step']}")
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
        ev.check(f"{tag}: every seed shows a phase change and an induction head ≥ 0.5",
                 all(r["phase_change_step"] is not None
                     and max(r["induction_scores_layer1"]) >= 0.5 for r in runs),
                 "steps " + ", ".join(str(r["phase_change_step"]) for r in runs))
    ev.key_figure = (f"best layer-1 induction score {max(ind):.2f} (uniform head {uniform:.2f}); "
                     f"phase change at step {res['phase_change_step']} of {c.steps}")
    return ev


QUESTION = Question(
    id=30,
    title=TITLES[30],
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
