"""Induction heads in a 2-layer attention-only model (Olsson et al. 2022; Elhage et al. 2021).

Train on random blocks repeated with a per-sequence period, tracking on held-out repeated
sequences (period T, two copies): the best layer-1 induction score, the best layer-0
previous-token score, and the in-context gain = mean loss on the first copy − mean loss
on the second copy (the second is predictable only by looking back). The phase change is
the evaluation step ending the steepest rise of the best induction score. Afterwards the detected
induction heads are zero-ablated: the gain should collapse, while ablating the other
layer-1 heads (same count where possible) should leave most of it.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch

from ..analysis.ablation import ablate, lm_loss
from ..analysis.heads import copying_score, head_table
from ..analysis.hooks import run_with_cache
from ..layers.attention import AttentionSpec
from ..models.config import ModelConfig
from ..models.data import RepeatedTokens, repeated_random_tokens
from ..models.train import TrainConfig, Trainer
from .common import Run, build_lm, pyplot, save_figure


@dataclass
class InductionConfig:
    vocab: int = 64
    d_model: int = 64
    n_heads: int = 4
    seq_len: int = 64
    min_period: int = 8
    max_period: int = 32
    batch_size: int = 32
    steps: int = 300
    lr: float = 1e-2
    init_std: float = 0.1  # 0.02 (the TinyLM default) stays on the uniform plateau far longer
    eval_every: int = 10
    min_lr_ratio: float = 1.0  # constant lr after warmup: a decaying lr delays the phase change
    eval_period: int = 24
    eval_batch: int = 16
    seeds: tuple[int, ...] = (0,)
    head_threshold: float = 0.3  # induction score above which a layer-1 head counts

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> InductionConfig:
        if quick:
            return cls(steps=500, eval_every=25, seeds=(seed,))
        return cls(steps=1200, eval_every=20, seeds=(seed, seed + 1, seed + 2))


def eval_tokens(c: InductionConfig) -> torch.Tensor:
    return repeated_random_tokens(c.eval_batch, c.eval_period, 2, c.vocab, seed=10_000)


def in_context_gain(model, tokens: torch.Tensor, period: int) -> float:
    """Mean loss over targets in the first copy minus mean loss over the second copy."""
    with torch.no_grad():
        loss = lm_loss(model(tokens), tokens, reduction="none")  # (B, N−1): target t+1
    first = loss[:, :period - 1].mean()  # targets 1..T−1
    second = loss[:, period:].mean()  # targets T+1..2T−1: copies of tokens seen before
    return float(first - second)


def measure(model, c: InductionConfig) -> dict:
    toks = eval_tokens(c)
    tab = head_table(run_with_cache(model, toks).patterns(), c.eval_period)
    return {"induction_max": float(tab["induction"][1].max()),
            "prev_token_max": float(tab["previous"][0].max()),
            "icl_gain": in_context_gain(model, toks, c.eval_period)}


def phase_change_step(evals: list[dict], threshold: float) -> int | None:
    """The evaluation step ending the steepest rise of the best induction score, or None
    when no head ever reaches `threshold` (no induction head formed)."""
    if max(h["induction_max"] for h in evals) < threshold:
        return None
    prev = [0.0] + [h["induction_max"] for h in evals[:-1]]
    jumps = [h["induction_max"] - p for h, p in zip(evals, prev)]
    return evals[max(range(len(evals)), key=jumps.__getitem__)]["step"]


def train_one(c: InductionConfig, seed: int, keep: dict | None = None) -> dict:
    """Train one seed; `keep`, if given, receives the trained model under "model"."""
    cfg = ModelConfig(vocab_size=c.vocab, d_model=c.d_model, n_layers=2,
                      mixers=AttentionSpec(c.n_heads, backend="sdpa"), max_seq_len=c.seq_len,
                      init_std=c.init_std)
    model = build_lm(cfg, seed, attention_only=True)
    task = RepeatedTokens(c.vocab, c.seq_len, c.batch_size, c.min_period, c.max_period,
                          seed=seed)
    tc = TrainConfig(steps=c.steps, lr=c.lr, warmup=20, min_lr_ratio=c.min_lr_ratio, eval_every=c.eval_every,
                     log_every=c.steps, progress=False)
    hist = Trainer(model, task, tc, eval_fn=lambda m, s: measure(m, c)).run()
    evals = [h for h in hist if "icl_gain" in h]
    final = evals[-1]
    phase = phase_change_step(evals, c.head_threshold)

    toks = eval_tokens(c)
    tab = head_table(run_with_cache(model, toks).patterns(), c.eval_period)
    ind = tab["induction"][1]  # (H,) layer-1 heads
    heads = [h for h in range(c.n_heads) if float(ind[h]) >= c.head_threshold] or \
        [int(ind.argmax())]
    others = [h for h in range(c.n_heads) if h not in heads][:len(heads)]
    with ablate(model, [(1, h) for h in heads]):
        gain_ablated = in_context_gain(model, toks, c.eval_period)
    gain_others = None
    if others:
        with ablate(model, [(1, h) for h in others]):
            gain_others = in_context_gain(model, toks, c.eval_period)
    if keep is not None:
        keep["model"] = model
    return {
        "seed": seed, "curve": evals, "phase_change_step": phase,
        "induction_scores_layer1": [round(float(x), 4) for x in ind],
        "prev_token_scores_layer0": [round(float(x), 4) for x in tab["previous"][0]],
        "induction_heads": [[1, h] for h in heads],
        "copying_scores": {f"1.{h}": round(copying_score(model, 1, h), 4) for h in heads},
        "copying_scores_effective": {f"1.{h}": round(copying_score(model, 1, h, toks), 4)
                                     for h in heads},
        "icl_gain": final["icl_gain"], "icl_gain_induction_ablated": gain_ablated,
        "icl_gain_other_heads_ablated": gain_others,
    }


def run(quick: bool = True, out_dir: str = "experiments/results", seed: int = 0) -> dict:
    c = InductionConfig.preset(quick, seed)
    r = Run("induction", out_dir, quick, seed)
    runs = [train_one(c, s) for s in c.seeds]

    def spread(key):
        vals = [x[key] for x in runs if x[key] is not None]
        return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)} if vals else None

    result = {"config": asdict(c), "runs": runs,
              "summary": {k: spread(k) for k in ("phase_change_step", "icl_gain",
                                                 "icl_gain_induction_ablated",
                                                 "icl_gain_other_heads_ablated")}}
    result["summary"]["best_induction_score"] = spread_of(
        [max(x["induction_scores_layer1"]) for x in runs])
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for x in runs:
            steps = [h["step"] for h in x["curve"]]
            axes[0].plot(steps, [h["induction_max"] for h in x["curve"]], label=f"induction s{x['seed']}")
            axes[0].plot(steps, [h["prev_token_max"] for h in x["curve"]], "--",
                         label=f"prev-token s{x['seed']}")
            axes[1].plot(steps, [h["icl_gain"] for h in x["curve"]], label=f"seed {x['seed']}")
            if x["phase_change_step"] is not None:
                axes[1].axvline(x["phase_change_step"], color="grey", lw=0.8)
        axes[0].set(xlabel="step", ylabel="best head score", title="head scores (mass rule)")
        axes[1].set(xlabel="step", ylabel="loss(copy 1) − loss(copy 2) (nats)",
                    title="in-context gain; lines: phase change")
        axes[0].legend(fontsize=7)
        result["plot"] = save_figure(fig, r.png_path)
    return r.finish(result)


def spread_of(vals: list[float]) -> dict:
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
