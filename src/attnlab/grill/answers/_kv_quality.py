"""Small-scale KV-sharing quality (MHA / GQA / MQA / MLA at matched parameters), shared by
the answers to Q5–Q7: a quick MQAR training run here, plus the committed full run
(`experiments/results/kv_sharing.json`, 3 seeds) when present."""
from __future__ import annotations

import functools

from ..registry import Evidence, EvidenceContext
from ._committed import committed

VARIANTS = ("MHA", "GQA-2", "MQA", "MLA")


@functools.lru_cache(maxsize=2)
def quick_mqar(seed: int = 0) -> dict[str, dict]:
    """Quick-size MQAR runs: {variant: {params, kv_bytes_per_token, acc, loss}}."""
    from ...experiments.kv_sharing import KVConfig, train_eval
    from ...models.data import MQAR

    c = KVConfig.preset(True, seed)

    def mk(sd):
        return MQAR(c.mqar_vocab, c.mqar_vocab, c.mqar_pairs, c.mqar_queries, c.batch_size,
                    seed=sd)

    return {v: train_eval(v, c, mk(seed), mk(10_000 + seed), seed) for v in VARIANTS}


def full_table() -> dict | None:
    """The committed full-run tables, or None."""
    data = committed("kv_sharing")
    return None if data is None else data.get("tables")


def add_small_scale(ev: Evidence, ctx: EvidenceContext) -> None:
    """Record the small-scale comparison on `ev` with checks on what it can show."""
    rows = quick_mqar(ctx.seed)
    ref = rows["MHA"]["params"]
    for v, r in rows.items():
        ev.measurements[f"small-scale MQAR (quick, 1 seed) {v}: params / KV B/token / acc"] = (
            r["params"], r["kv_bytes_per_token"], round(r["acc"], 3))
    from ...experiments.kv_sharing import KVConfig

    ev.measurements["small-scale note"] = (
        "the quick run trains seconds: its accuracies sit near chance (1/"
        f"{KVConfig.preset(True).mqar_vocab}) and rank nothing; quality comparisons come from the committed "
        "3-seed full run when present")
    worst = max(abs(r["params"] - ref) / ref for r in rows.values())
    ev.check("small-scale variants have matched parameter counts (within 5%)", worst < 0.05,
             f"worst {worst:.1%}")
    ev.check("small-scale KV bytes: MHA = H × MQA", rows["MHA"]["kv_bytes_per_token"] ==
             4 * rows["MQA"]["kv_bytes_per_token"])
    tab = full_table()
    if tab is not None:
        for task, key in (("mqar", "acc"), ("text", "loss")):
            for r in tab[task]["rows"]:
                ev.measurements[f"full run (3 seeds, committed) {task} {r['variant']}: "
                                f"KV B/token, {key} mean ± sd"] = (
                    r["kv_bytes_per_token"], round(r[key], 3), round(r[f"{key}_sd"], 3))
            ev.measurements[f"full run {task} Pareto front"] = tab[task]["pareto"]
