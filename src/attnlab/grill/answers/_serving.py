"""The serving engine as grill evidence (Q36 paged serving, Q38 KV growth): windowed and
MLA models served through their own forward by the paged engine, each request checked
token for token against `generate`, and the bytes one sequence holds read from the pools
(`attnlab.serving.measure`)."""
from __future__ import annotations

from ...serving.measure import sequence_memory, serve_and_check
from ..registry import Evidence

KINDS = ("window", "mla")


def add_engine_served(ev: Evidence, seed: int) -> str:
    """Serve windowed and MLA requests on a pool small enough to force preemption."""
    parts = []
    for kind in KINDS:
        r = serve_and_check(kind, n_requests=4, num_blocks=10, seed=seed)
        ev.measurements[f"engine, {kind} model: requests equal to generate alone / "
                        "preemptions / largest batch"] = (
            f"{sum(r['same'])}/{len(r['same'])}", r["preemptions"], r["max_batch"])
        ev.check(f"the paged engine serves a {kind} model: every request equals generate "
                 "one at a time, token for token, through preemption",
                 all(r["same"]) and r["preemptions"] > 0,
                 f"{sum(r['same'])}/{len(r['same'])} equal, {r['preemptions']} preemptions")
        parts.append(f"{kind} {sum(r['same'])}/{len(r['same'])}")
    return "engine == generate: " + ", ".join(parts)


def add_sequence_memory(ev: Evidence, window: int = 64) -> str:
    """Bytes one sequence holds at two contexts: flat for a window, linear for MLA."""
    contexts = (512, 2048)
    out = []
    for kind in KINDS:
        m = sequence_memory(kind, contexts, window=window)
        got = tuple(m[c]["measured"] for c in contexts)
        ev.measurements[f"engine pools, {kind} model: bytes one sequence holds at "
                        f"{contexts[0]} / {contexts[1]} tokens (W = {window})"] = got
        ev.check(f"{kind}: measured bytes per sequence equal the layout formula",
                 all(m[c]["measured"] == m[c]["formula"] for c in contexts),
                 f"{got} vs {tuple(m[c]['formula'] for c in contexts)}")
        if kind == "window":
            ev.check("a windowed layer's bytes per sequence stay flat beyond W (4× context, "
                     "same bytes)", got[0] == got[1] > 0, f"{got[0]} → {got[1]} B")
        else:
            ev.check("MLA's latent cache grows linearly (4× context, 4× bytes ± one block)",
                     abs(got[1] / got[0] - 4) < 0.25, f"{got[1] / got[0]:.2f}×")
        out.append(f"{kind} {got[0]:,} → {got[1]:,} B")
    return "per sequence 512 → 2048 tokens: " + ", ".join(out)
