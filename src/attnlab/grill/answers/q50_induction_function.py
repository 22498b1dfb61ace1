"""Q50 (quick fire): what an induction head does — the copy measured on a trained model."""
from __future__ import annotations

import torch

from ...analysis.hooks import run_with_cache
from ...models.data import repeated_random_tokens
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._heads_lab import induction_run


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    model, res, c = induction_run(ctx.seed, ctx.full)
    T = c.eval_period
    toks = repeated_random_tokens(8, T, 2, c.vocab, seed=777)
    cache = run_with_cache(model, toks)
    layer, head = res["induction_heads"][0]
    P = cache["pattern", layer][:, head]  # (B, N, N)
    rows = torch.arange(T, 2 * T)
    argmax_ok = float((P[:, rows].argmax(-1) == rows - T + 1).float().mean())
    pred_ok = float((cache.logits[:, T:2 * T - 1].argmax(-1) == toks[:, T + 1:]).float().mean())
    ev.measurements["head"] = f"layer {layer}, head {head}"
    ev.measurements["second-copy rows whose argmax key is i − T + 1"] = round(argmax_ok, 3)
    ev.measurements["second-copy next-token accuracy"] = round(pred_ok, 3)
    ev.measurements["chance accuracy 1/vocab"] = round(1 / c.vocab, 4)
    ev.measurements["copying scores of the induction heads (direct OV path)"] = \
        res["copying_scores"]
    eff = res["copying_scores_effective"]
    ev.measurements["copying scores on the residual the head reads (effective OV path)"] = eff
    direct = min(res["copying_scores"].values())
    ev.measurements["reading"] = (
        f"direct-path copying score {direct:.2f} vs effective {min(eff.values()):.2f}: "
        + ("the raw-embedding circuit understates the copy; the head reads the layer-0 output"
           if direct < min(eff.values()) - 0.5 else "both paths show the copy"))
    ev.check("the head's top key is the token after the previous occurrence in ≥ 70% of rows",
             argmax_ok >= 0.7, f"{argmax_ok:.2f}")
    ev.check("the model then predicts the copied token in ≥ 70% of second-copy positions",
             pred_ok >= 0.7, f"{pred_ok:.2f}")
    ev.check("the induction heads' effective OV circuit copies (score ≥ 0.5)",
             min(eff.values()) >= 0.5, f"min {min(eff.values()):.3f}")
    ev.key_figure = (f"[A][B]…[A]→[B]: top key correct in {argmax_ok:.0%} of rows, next token "
                     f"correct {pred_ok:.0%} (chance {1 / c.vocab:.1%})")
    return ev


QUESTION = Question(
    id=50,
    title=TITLES[50],
    short=(
        "Prefix matching then copying: at token A it attends to the token that came right "
        "after an earlier A and raises that token's logit, completing [A][B] … [A] → [B]."
    ),
    rubric=[
        KeyPoint("prefix matching: attend to the token after the earlier occurrence",
                 [r"prefix", r"(token )?after", r"follow(ed|s|ing)", r"next token"],
                 formula="attend i → j + 1 where x_j = x_i, j < i"),
        KeyPoint("copying: predict that token", [r"cop(y|ies|ying)", r"predict", r"logit"]),
        KeyPoint("the [A][B] … [A] → [B] pattern", [r"\[a\]\s*\[b\]", r"a\s*b\s*(…|\.\.\.)\s*a",
                                                    r"recur", r"repeat"]),
    ],
    answer=(
        "Prefix matching then copying: at token A it attends to whatever came right after "
        "an earlier A, and pushes up the logit of that token, completing [A][B] … [A] → [B]."
    ),
    formulas=["attend: i → j + 1 where x_j = x_i, j < i;   predict x_{j+1}"],
    seed_note=(
        "The seed says 'copy a token after prefix recurrence', which is right in spirit; the "
        "copied token is the one that FOLLOWED the earlier occurrence. A caveat on measuring "
        "the copy: the direct-path OV copying score (W_U W_O W_V W_E) can miss it, because "
        "the residual the head reads at the attended position is dominated by the layer-0 "
        "output (V-composition), not by the raw embedding; scoring the OV circuit on the "
        "per-token mean of the residual the head actually reads shows it. The evidence "
        "reports both scores from this run."
    ),
    evidence=evidence,
)
