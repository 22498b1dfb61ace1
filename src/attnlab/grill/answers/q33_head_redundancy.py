"""Q33: why many heads can be removed — single-head ablation and a pruning curve on a
small byte-level LM trained here (quick size)."""
from __future__ import annotations

import functools

from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES
from ._committed import committed, spread


@functools.lru_cache(maxsize=2)
def _run(seed: int, full: bool) -> dict:
    from ...experiments.redundancy import RedundancyConfig, one_seed

    return one_seed(RedundancyConfig.preset(not full, seed), seed)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    r = _run(ctx.seed, ctx.full)
    deltas = sorted(d for row in r["single_head_delta"] for d in row)
    base = r["base_loss"]
    ev.measurements["validation loss (nats/byte)"] = round(base, 4)
    ev.measurements["single-head ablation Δloss, sorted"] = [round(d, 4) for d in deltas]
    ev.measurements["heads whose lone removal costs < 1% of the loss"] = \
        r["frac_heads_below_1pct"]
    ev.measurements["largest single-head cost / median"] = (
        round(deltas[-1], 4), round(deltas[len(deltas) // 2], 4))
    ev.measurements["pruning curve (fraction, loss)"] = [
        (round(f, 3), round(v, 4)) for f, v in zip(r["curve"]["fraction"], r["curve"]["loss"])]
    ev.measurements["fraction prunable within +5% / +10% loss"] = (
        r["prunable_at_5pct"], r["prunable_at_10pct"])
    ev.check("costs are skewed: the worst head costs ≥ 3× the median head",
             deltas[-1] >= 3 * max(deltas[len(deltas) // 2], 1e-6),
             f"{deltas[-1]:.4f} vs {deltas[len(deltas) // 2]:.4f}")
    ev.check("the pruning curve ends above where it starts (pruning everything hurts)",
             r["curve"]["loss"][-1] > r["curve"]["loss"][0])
    full = committed("redundancy")
    if full is not None:
        fs, runs = full["summary"], full["runs"]
        tag = f"committed full run ({len(runs)} seeds, {full['config']['steps']} steps)"
        ev.measurements[f"{tag}: heads costing < 1% alone"] = spread(fs["frac_heads_below_1pct"])
        ev.measurements[f"{tag}: prunable within +5% / +10% loss"] = (
            spread(fs["prunable_at_5pct"]), spread(fs["prunable_at_10pct"]))
        ev.measurements[f"{tag}: largest single-head Δloss"] = spread(fs["max_single_head_delta"])
        ev.check(f"{tag}: in every seed some heads are nearly free (< 1%) and some are not",
                 all(0 < x["frac_heads_below_1pct"] < 1 for x in runs),
                 ", ".join(f"{x['frac_heads_below_1pct']:.2f}" for x in runs))
    ev.key_figure = (f"{r['frac_heads_below_1pct']:.0%} of heads cost < 1% alone; "
                     f"{r['prunable_at_10pct']:.0%} prunable within +10% loss (tiny model)")
    return ev


QUESTION = Question(
    id=33,
    title=TITLES[33],
    answer=(
        "Because trained multi-head layers are over-complete: several heads learn similar "
        "or low-value functions, so removing one lets the others (and the residual stream) "
        "carry the information. Michel et al. (2019) removed heads at test time and found "
        "most layers of a trained Transformer/BERT can be reduced to one head with little "
        "loss, and pruned 20–40% of heads greedily using the importance I_h = E|∂L/∂ξ_h| "
        "of a per-head gate ξ_h. Voita et al. (2019) found a few 'specialised' heads "
        "(positional, syntactic, rare-word) do most of the work and pruned 38 of 48 encoder "
        "heads at a 0.15 BLEU cost. The skew matters: a minority of heads is essential, "
        "which heads those are varies by model and task, and small models have less slack."
    ),
    formulas=[
        "gate: MHA(x) = Σ_h ξ_h · Att_h(x) W_O^h,   ξ_h = 1",
        "importance I_h = E_x |∂L(x)/∂ξ_h|   (Michel et al. 2019, eq. 2)",
        "pruning: repeatedly set ξ_h = 0 for the lowest I_h, recomputing I",
    ],
    seed_note=(
        "The seed calls the heads 'ablation-resistant'; the usual term is redundancy, and "
        "the key papers quantify it (Michel: 20–40% of heads pruned with no significant "
        "loss; Voita: 38 of 48 encoder heads). Our tiny model has only 8 heads, so it shows "
        "the skew of single-head costs and the shape of the pruning curve, not those "
        "percentages."
    ),
    evidence=evidence,
)
