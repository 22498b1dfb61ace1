"""Head redundancy on a trained byte-level LM (Michel et al. 2019; Voita et al. 2019).

Train a small MHA model on the stdlib corpus, then on held-out text:
- single-head ablation: loss increase when each head alone is zeroed (distribution);
- pruning curve: iteratively gate off the least important heads (importance
  E|∂L/∂ξ_h| recomputed each round) and record validation loss vs fraction removed.
Reported: the fraction of heads whose lone removal costs < 1% of the loss, the largest
single-head cost, and the fraction that can be pruned before loss rises 5% / 10%.
"""
from __future__ import annotations

import functools
import operator
import statistics
from dataclasses import asdict, dataclass

import torch

from ..analysis.ablation import lm_loss, pruning_curve, single_head_ablation
from ..layers.attention import AttentionSpec
from ..models.config import ModelConfig
from ..models.data import ByteCorpus
from ..models.train import TrainConfig, Trainer
from .common import Run, build_lm, pyplot, save_figure


@dataclass
class RedundancyConfig:
    d_model: int = 64
    n_heads: int = 8
    n_layers: int = 3
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 80
    lr: float = 3e-3
    prune_step: int = 2
    importance_batches: int = 2
    seeds: tuple[int, ...] = (0,)

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> RedundancyConfig:
        if quick:
            return cls(steps=200, lr=1e-2, n_heads=4, n_layers=2, prune_step=1,
                       seeds=(seed,))
        return cls(steps=800, lr=1e-2, prune_step=2, importance_batches=4,
                   seeds=(seed, seed + 1, seed + 2))


def first_fraction_over(curve, base: float, rise: float) -> float:
    """Largest pruned fraction whose loss stays within (1 + rise)·base before first exceeding it."""
    ok = 0.0
    for f, loss in zip(curve.fraction, curve.loss):
        if loss > (1 + rise) * base:
            break
        ok = f
    return ok


def one_seed(c: RedundancyConfig, seed: int, keep: dict | None = None) -> dict:
    """Train and measure one seed; `keep`, if given, receives the trained model under
    "model" and the evaluation tokens under "eval_tokens"."""
    cfg = ModelConfig(vocab_size=256, d_model=c.d_model, n_layers=c.n_layers,
                      mixers=AttentionSpec(c.n_heads, backend="sdpa"), max_seq_len=c.seq_len)
    model = build_lm(cfg, seed)
    Trainer(model, ByteCorpus(c.seq_len, c.batch_size, seed=seed),
            TrainConfig(steps=c.steps, lr=c.lr, log_every=c.steps, progress=False)).run()
    val = ByteCorpus(c.seq_len, 16, split="val", seed=seed)
    evt = val.batch(0).tokens
    imp_batches = [val.batch(1 + i).tokens for i in range(c.importance_batches)]
    with torch.no_grad():
        base = float(lm_loss(model(evt), evt))
    delta = single_head_ablation(model, evt)  # (L, H)
    curve = pruning_curve(model, imp_batches, evt, step=c.prune_step)
    flat = delta.flatten().tolist()
    if keep is not None:
        keep["model"], keep["eval_tokens"] = model, evt
    return {"seed": seed, "base_loss": base, "single_head_delta": delta.tolist(),
            "frac_heads_below_1pct": sum(d < 0.01 * base for d in flat) / len(flat),
            "max_single_head_delta": max(flat),
            "prunable_at_5pct": first_fraction_over(curve, base, 0.05),
            "prunable_at_10pct": first_fraction_over(curve, base, 0.10),
            "curve": {"fraction": curve.fraction, "loss": curve.loss,
                      "order": [list(p) for p in curve.order]}}


def run(quick: bool = True, out_dir: str = "experiments/results", seed: int = 0) -> dict:
    c = RedundancyConfig.preset(quick, seed)
    r = Run("redundancy", out_dir, quick, seed)
    runs = [one_seed(c, s) for s in c.seeds]
    summary = {k: {"mean": statistics.fmean(x[k] for x in runs),
                   "min": min(x[k] for x in runs), "max": max(x[k] for x in runs)}
               for k in ("frac_heads_below_1pct", "max_single_head_delta",
                         "prunable_at_5pct", "prunable_at_10pct")}
    result = {"config": asdict(c), "runs": runs, "summary": summary}
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for x in runs:
            axes[0].hist(functools.reduce(operator.iadd, x["single_head_delta"], []), bins=12, alpha=0.5,
                         label=f"seed {x['seed']}")
            axes[1].plot(x["curve"]["fraction"], x["curve"]["loss"], marker="o",
                         label=f"seed {x['seed']}")
        axes[0].set(xlabel="loss increase when one head is zeroed (nats)", ylabel="heads",
                    title="single-head ablation")
        axes[1].set(xlabel="fraction of heads pruned", ylabel="val loss",
                    title="pruning by gradient importance")
        axes[1].legend(fontsize=7)
        result["plot"] = save_figure(fig, r.png_path)
    return r.finish(result)
