"""Q34: attention sinks — mass on position 0 in small byte-level LMs trained here, with
and without BOS and with a learned sink logit; StreamingLLM eviction under --full."""
from __future__ import annotations

import functools

import torch

from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._committed import committed

STREAM_LEN, SINK_WINDOW = 128, 31  # streamed tokens; rolling window beside 1 sink slot


def eviction_cost(model, tokens: torch.Tensor) -> dict[str, float]:
    """Streaming loss (nats, after eviction begins) with a 32-token cache: the 32 most
    recent tokens ("window") vs the first token + the 31 most recent ("sinks+window")."""
    from ...analysis.streaming import stream_losses

    out = {}
    for kind in ("window", "sinks+window"):
        nll = stream_losses(model, tokens, kind, 1, SINK_WINDOW)  # (B, N − 1)
        out[kind] = float(nll[:, 1 + SINK_WINDOW:].mean())
    return out


def _train(seed: int, full: bool, steps: int | None = None) -> dict:
    from ...experiments.sinks import BOS, VARIANTS, SinksConfig, sink_scores, train_variant
    from ...models.data import ByteCorpus

    c = SinksConfig.preset(not full, seed)
    if steps is not None:
        c.steps = steps
    text = ByteCorpus(STREAM_LEN, 4, split="val", seed=seed).batch(0).tokens
    out = {}
    for name in VARIANTS:
        model, vtask, loss = train_variant(name, c, seed, max(256, c.seq_len + 1))
        key0, on_sink = sink_scores(model, vtask.batch(0).tokens)
        out[name] = {"key0": key0, "on_sink": on_sink, "loss": loss}
        if name in ("plain", "bos"):  # the BOS model streams text that starts with BOS
            toks = torch.cat([torch.full((4, 1), BOS), text], 1) if name == "bos" else text
            out[name]["stream"] = eviction_cost(model, toks)
    out["uniform"] = sum(1 / (i + 1) for i in range(1, c.seq_len)) / (c.seq_len - 1)
    return out


@functools.lru_cache(maxsize=2)
def _run(seed: int, full: bool) -> dict:
    return _train(seed, full)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    r = _run(ctx.seed, ctx.full)
    u = r["uniform"]
    means = {k: float(r[k]["key0"].mean()) for k in ("plain", "bos", "sink_logit")}
    for k, v in means.items():
        ev.measurements[f"{k}: mean attention on position 0 (all heads)"] = round(v, 4)
        ev.measurements[f"{k}: per-head max"] = round(float(r[k]["key0"].max()), 4)
    ev.measurements["uniform causal head would give"] = round(u, 4)
    ev.measurements["sink_logit: mean mass on the learned sink"] = round(
        float(r["sink_logit"]["on_sink"].mean()), 4)
    ev.measurements["validation loss plain / bos / sink_logit"] = tuple(
        round(r[k]["loss"], 4) for k in ("plain", "bos", "sink_logit"))
    cost = {}
    for k in ("bos", "plain"):
        st = r[k]["stream"]
        cost[k] = st["window"] - st["sinks+window"]
        ev.measurements[f"{k}: streaming loss, 32-token cache, window / first token + window"] = (
            round(st["window"], 3), round(st["sinks+window"], 3))
    ev.measurements["cost of evicting the first token (nats): bos / plain model"] = (
        round(cost["bos"], 3), round(cost["plain"], 3))
    bos_max = float(r["bos"]["key0"].max())
    ev.check("with a BOS token, some head becomes a sink (≥ 3× a uniform head on position 0)",
             bos_max >= 3 * u, f"max {bos_max:.3f} vs uniform {u:.3f}")
    ev.check("BOS draws more attention on average than an ordinary first byte",
             means["bos"] > means["plain"], f"{means['bos']:.3f} vs {means['plain']:.3f}")
    ev.check("sink scores are valid probabilities", all(
        0 <= float(r[k]["key0"].min()) and float(r[k]["key0"].max()) <= 1 for k in means))
    ev.check("StreamingLLM on the model that grew a sink: evicting the BOS costs > 0.03 nats "
             "and ≥ 2× what evicting the first byte costs the sink-free model",
             cost["bos"] > 0.03 and cost["bos"] >= 2 * cost["plain"],
             f"bos {cost['bos']:.3f} vs plain {cost['plain']:.3f} nats")
    ev.cite("Llama-2-13B on PG19 (65K tokens): window-only cache perplexity 5158.07; 4 initial "
            "(sink) tokens + 1020 recent: 5.40", "StreamingLLM (Xiao et al. 2023), Table 1; "
            "docs/sources.md")
    full = committed("sinks")
    if full is not None:
        fv = full["variants"]
        seeds = [x["seed"] for x in fv["bos"]["per_seed"]]
        tag = f"committed full run ({len(seeds)} seeds, {full['config']['steps']} steps)"
        for k in ("plain", "bos", "sink_logit"):
            ev.measurements[f"{tag}: {k} sink heads per model (key-0 mass > "
                            f"{full['config']['sink_threshold']})"] = \
                [x["sink_heads"] for x in fv[k]["per_seed"]]
            ev.measurements[f"{tag}: {k} mean attention on position 0"] = \
                round(fv[k]["mean_key0_mass"], 4)
        st = full.get("streaming")
        if st:
            ev.measurements[f"{tag}: StreamingLLM loss window / sinks+window / dense on the "
                            "plain model, which grew no sink head (so it cannot show the "
                            "effect)"] = tuple(round(st["loss"][k], 3) for k in
                                               ("window", "sinks+window", "dense"))
    ev.key_figure = ("mean attention on position 0: " + ", ".join(
        f"{k} {v:.2f}" for k, v in means.items()) + f" (uniform head {u:.2f}); best BOS head "
        f"{bos_max:.2f}; evicting the sink costs {cost['bos']:.2f} nats (plain model "
        f"{cost['plain']:.2f})")
    return ev


QUESTION = Question(
    id=34,
    title=TITLES[34],
    short=(
        "Many heads put a large share of their attention on the first token (often BOS) "
        "whatever it says: softmax must put each row's mass somewhere, and a token every "
        "query can see becomes a cheap no-op target. StreamingLLM showed that evicting these "
        "sink tokens from a sliding KV cache wrecks perplexity, while keeping four of them "
        "beside the window restores it."
    ),
    rubric=[
        KeyPoint("heavy attention on the first token / BOS",
                 [r"first token", r"\bbos\b", r"position 0", r"initial tokens?"]),
        KeyPoint("softmax rows must sum to 1: a no-op place to dump mass",
                 [r"sum to (1|one)", r"softmax", r"dump", r"no[- ]op", r"nothing to attend"]),
        KeyPoint("StreamingLLM: evicting sinks breaks long streaming; keep ~4 sink tokens",
                 [r"streaming ?llm", r"evict", r"keep (the )?(first|four|4)", r"xiao"],
                 formula="Llama-2-13B, PG19: window-only ppl 5158 vs 5.40 with 4 sinks"),
        KeyPoint("fixes: a dedicated sink token or a learned sink logit",
                 [r"sink token", r"sink logit", r"off[- ]by[- ]one", r"gpt-oss", r"learn(ed|able) sink"],
                 formula="p_ij = exp(z_ij) / (exp(s_h) + Σ_k exp(z_ik))"),
    ],
    answer=(
        "In trained LLMs many heads put a large share of their attention on the first token "
        "(often BOS) whatever its content, typically from layer 2 onward. Softmax forces "
        "each row to sum to 1, so a head that has nothing useful to read still has to put "
        "its mass somewhere; the first token, visible to every query, becomes a cheap "
        "no-op target whose value vector is small. Xiao et al. (2023, StreamingLLM) showed "
        "the consequence: evicting those first tokens from a sliding KV cache makes "
        "perplexity explode (Llama-2-13B on PG19: 5158 with window-only vs 5.40 keeping 4 "
        "initial tokens), while keeping a few 'sink' tokens restores it. Remedies build the "
        "sink in: a dedicated learnable sink token at pre-training, or a learned per-head "
        "sink logit in the softmax denominator (softmax off-by-one; gpt-oss)."
    ),
    formulas=[
        "sink score_h = (1/(N−1)) Σ_{i≥1} P_h[i, 0];   uniform causal head: (1/(N−1)) Σ 1/(i+1)",
        "learned sink: p_ij = exp(z_ij) / (exp(s_h) + Σ_k exp(z_ik))",
    ],
    seed_note=(
        "The seed's description is right; it omits the numbers (StreamingLLM: 5158 vs "
        "5.40 perplexity, docs/sources.md) and the fixes (sink token, learned sink logit). "
        "Our models are tiny and briefly trained on bytes: the evidence shows which variant "
        "grows sink heads in this run (BOS does, an ordinary first byte does not, a learned "
        "sink logit takes the mass instead) and repeats StreamingLLM's eviction test on the "
        "BOS model that grew them. The committed full-run eviction comparison was made on "
        "the plain model, which grew no sink head, so it cannot show the effect; it is "
        "printed only as that control. How strong sinks get at billion scale is beyond "
        "what this scale can show."
    ),
    evidence=evidence,
)
