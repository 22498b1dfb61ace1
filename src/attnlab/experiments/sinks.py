"""Attention sinks (Xiao et al. 2023, StreamingLLM): how much attention each head of a
small trained byte-level LM puts on position 0, in three variants trained identically:
- "plain": position 0 is an ordinary byte;
- "bos": a BOS token (id 256) starts every sequence;
- "sink_logit": plain data, but every head has a learned sink logit s_h added to the
  softmax denominator, p_ij = exp(z_ij) / (exp(s_h) + Σ_k exp(z_ik)) (the "off-by-one"
  softmax; gpt-oss ships it as learned per-head sinks), so a head can attend to nothing.
Sink score = mean attention on key 0 from queries 1..N−1; a position-blind (uniform) head
gives mean 1/(i+1). For the plain model, the StreamingLLM eviction comparison of
`attnlab.analysis.streaming` (window vs sinks+window vs dense cache) is run when present.
"""
from __future__ import annotations

import functools
import operator
import statistics
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..analysis.heads import sink_score
from ..analysis.hooks import run_with_cache
from ..layers.attention import Attention, AttentionSpec
from ..models.config import ModelConfig
from ..models.data import Batch, ByteCorpus
from ..models.train import TrainConfig, Trainer, evaluate
from ..ops.softmax.reference import attention_reference
from .common import Run, build_lm, pyplot, save_figure

VARIANTS = ("plain", "bos", "sink_logit")
BOS = 256


class SinkLogitAttention(Attention):
    """Attention with a learned per-head sink logit (no value), parallel forward only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sink = nn.Parameter(torch.zeros(self.n_heads))

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:
            raise ValueError("SinkLogitAttention supports the parallel forward only (cache=None)")
        B, N, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        pos = torch.arange(N, device=x.device)  # (N,)
        from ..ops.rope import apply_rope

        q = apply_rope(self.q_proj(x).view(B, N, H, D).transpose(1, 2), pos)  # (B, H, N, D)
        k = apply_rope(self.k_proj(x).view(B, N, Hkv, D).transpose(1, 2), pos)  # (B, Hkv, N, D)
        v = self.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)  # (B, Hkv, N, D)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        out = self.hook_head_out(attention_reference(q, k, v, mask=self.mask, sink=self.sink))
        return self.o_proj(out.transpose(1, 2).reshape(B, N, H * D))  # (B, N, d_model)


@dataclass
class SinkLogitSpec(AttentionSpec):
    def build(self, d_model: int, layer_idx: int) -> SinkLogitAttention:
        return SinkLogitAttention(d_model, self.n_heads, self.n_kv_heads, layer_idx=layer_idx)


@dataclass
class BOSCorpus:
    """ByteCorpus windows with BOS (256) in front: vocab 257, seq_len + 1 tokens."""

    inner: ByteCorpus

    def __post_init__(self) -> None:
        self.vocab_size, self.seq_len = 257, self.inner.seq_len + 1

    def batch(self, step: int) -> Batch:
        t = self.inner.batch(step).tokens
        return Batch(torch.cat([torch.full((t.shape[0], 1), BOS), t], dim=1))


@dataclass
class SinksConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 150
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0,)
    sink_threshold: float = 0.3  # a head with sink score above this is called a sink head
    streaming: bool = False

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> SinksConfig:
        if quick:
            return cls(steps=200, lr=1e-2, seeds=(seed,))
        # lr 1e-2 as in the quick size: at 3e-3 no head of this small model forms a sink
        # within 1,500 steps, with or without BOS (measured)
        return cls(steps=1000, lr=1e-2, seeds=(seed, seed + 1, seed + 2), streaming=True)


def sink_scores(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, H) mass on key 0 from queries ≥ 1 (batch mean), and (L, H) mass on the learned
    sink logit where the model has one (run_with_cache ignores it: it is re-added here)."""
    cache = run_with_cache(model, tokens)
    key0, on_sink = [], []
    for i, a in sorted(cache.layers.items()):
        m = model.blocks[i].mixer
        if isinstance(m, SinkLogitAttention):
            s = m.sink.detach().view(1, -1, 1, 1).expand(*a.scores.shape[:-1], 1)
            p = torch.softmax(torch.cat([a.scores, s], dim=-1), dim=-1)  # (B, H, N, N+1)
            pattern, extra = p[..., :-1], p[..., 1:, -1].mean((0, 2))  # (H,)
            on_sink.append(extra)
        else:
            pattern = a.pattern
        key0.append(sink_score(pattern).mean(0))  # (H,)
    return torch.stack(key0), (torch.stack(on_sink) if on_sink else None)


def train_variant(name: str, c: SinksConfig, seed: int, max_seq_len: int):
    corpus = ByteCorpus(c.seq_len, c.batch_size, seed=seed)
    val = ByteCorpus(c.seq_len, 8, split="val", seed=seed)
    task, vtask = (BOSCorpus(corpus), BOSCorpus(val)) if name == "bos" else (corpus, val)
    spec = SinkLogitSpec(c.n_heads) if name == "sink_logit" else AttentionSpec(c.n_heads,
                                                                               backend="sdpa")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=c.d_model, n_layers=c.n_layers,
                      mixers=spec, max_seq_len=max_seq_len)
    model = build_lm(cfg, seed)
    Trainer(model, task, TrainConfig(steps=c.steps, lr=c.lr, log_every=c.steps,
                                     progress=False)).run()
    return model, vtask, evaluate(model, vtask, 2)["loss"]


def run(quick: bool = True, out_dir: str = "experiments/results", seed: int = 0) -> dict:
    c = SinksConfig.preset(quick, seed)
    r = Run("sinks", out_dir, quick, seed)
    n = c.seq_len
    uniform = sum(1 / (i + 1) for i in range(1, n)) / (n - 1)
    variants, stream = {}, None
    for name in VARIANTS:
        per_seed = []
        for s in c.seeds:
            model, vtask, loss = train_variant(name, c, s, max(256, n + 1))
            key0, on_sink = sink_scores(model, vtask.batch(0).tokens)
            per_seed.append({"seed": s, "val_loss": loss, "key0_mass": key0.tolist(),
                             "sink_logit_mass": None if on_sink is None else on_sink.tolist(),
                             "sink_heads": int((key0 > c.sink_threshold).sum())})
            if name == "plain" and c.streaming and s == c.seeds[0]:
                stream = streaming_eviction(model, c, s)
        means = [statistics.fmean(functools.reduce(operator.iadd, x["key0_mass"], [])) for x in per_seed]
        variants[name] = {"per_seed": per_seed, "mean_key0_mass": statistics.fmean(means),
                          "max_key0_mass": max(max(functools.reduce(operator.iadd, x["key0_mass"], [])) for x in per_seed),
                          "sink_heads_mean": statistics.fmean(x["sink_heads"] for x in per_seed)}
    result = {"config": asdict(c), "uniform_key0_mass": uniform, "variants": variants,
              "streaming": stream}
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for j, name in enumerate(VARIANTS):
            vals = functools.reduce(operator.iadd, (functools.reduce(operator.iadd, x["key0_mass"], []) for x in variants[name]["per_seed"]), [])
            ax.scatter([j] * len(vals), vals, alpha=0.6)
        ax.axhline(uniform, color="grey", ls="--", label="uniform head")
        ax.set_xticks(range(len(VARIANTS)), VARIANTS)
        ax.set(ylabel="attention on position 0 (per head)", title="sink mass per head")
        ax.legend()
        result["plot"] = save_figure(fig, r.png_path)
    return r.finish(result)


def streaming_eviction(model, c: SinksConfig, seed: int) -> dict | None:
    """StreamingLLM window vs sinks+window vs dense caches on the plain model, if the
    serving analysis (`attnlab.analysis.streaming`) is installed."""
    try:
        from ..analysis.streaming import StreamingConfig
        from ..analysis.streaming import run as stream_run
    except ImportError:
        return None
    cfg = StreamingConfig(d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
                          n_kv_heads=c.n_heads, train_len=c.seq_len, n_sink=4,
                          window=c.seq_len // 2 - 4, eval_len=4 * c.seq_len, seed=seed)
    res = stream_run(cfg, model=model)
    return {"loss": res.loss, "perplexity": res.perplexity, "sink_mass": res.sink_mass,
            "uniform_mass": res.uniform_mass, "positions_scored": res.positions_scored}
