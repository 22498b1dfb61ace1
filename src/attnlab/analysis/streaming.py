"""StreamingLLM eviction experiment on a small trained model (Xiao et al. 2023).

Train a TinyLM on bytes of the Python standard library (`models.data.ByteCorpus`) with
sequences of `train_len` tokens, then stream held-out text `eval_len` tokens long (past
the training length) one token at a time through three caches of the same size budget:
- "window": the most recent `n_sink + window` tokens only (`SinkKVCache(n_sink=0)`);
- "sinks+window": the first `n_sink` tokens + the `window` most recent (`SinkKVCache`);
- "dense": every token (contiguous cache; RoPE positions run past the training length).
Both evicting caches re-assign positions inside the cache (keys cached before RoPE).
Reported: next-token loss (nats) averaged over positions ≥ the cache budget, i.e. after
eviction starts, and the attention mass that the trained model puts on position 0 in a
plain forward of `train_len` tokens (a "sink" shows as mass far above 1/(i+1)).

`bos_token` makes every training and evaluation sequence start with one fixed token, the
setting in which LLMs develop a sink on it (StreamingLLM §3.3 also trains with a dedicated
sink token). The paper's result (Llama-2-13B, PG19): window-only perplexity 5158 vs 5.40 with 4 sinks
(docs/sources.md). A model this small may or may not develop a sink; the function measures,
it does not assume. Cost: training `steps` × O(batch·train_len·d_model²) plus
O(eval_len) single-token forwards per cache kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ..cache.base import CacheStack
from ..cache.sink import SinkKVCache
from ..layers.attention import AttentionSpec
from ..models.config import ModelConfig
from ..models.data import ByteCorpus
from ..models.lm import TinyLM
from ..models.train import TrainConfig, Trainer

KINDS = ("window", "sinks+window", "dense")


@dataclass
class StreamingConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    train_len: int = 64
    train_steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    n_sink: int = 4  # the paper's 4 initial tokens (docs/sources.md)
    window: int = 28  # cache budget n_sink + window = 32 < train_len
    eval_len: int = 256
    eval_sequences: int = 4
    bos_token: int | None = None  # a fixed first token in training and evaluation streams
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "train_len",
                     "train_steps", "batch_size", "window", "eval_len", "eval_sequences"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("n_sink", self.n_sink, minimum=0)
        if self.bos_token is not None and not 0 <= self.bos_token < 256:
            raise ValueError(f"bos_token ({self.bos_token}) must be a byte value in [0, 256)")
        if self.n_sink + self.window >= self.eval_len:
            raise ValueError(f"eval_len ({self.eval_len}) must exceed the cache budget "
                             f"n_sink + window ({self.n_sink + self.window})")


@dataclass
class StreamingResult:
    loss: dict[str, float]  # mean next-token NLL after eviction starts, per cache kind
    perplexity: dict[str, float]
    sink_mass: float  # mean attention on position 0 (queries ≥ 8, all heads and layers)
    uniform_mass: float  # what a position-blind head would give: mean of 1/(i+1)
    train_loss: float
    positions_scored: int
    per_position: dict[str, list[float]] = field(repr=False, default_factory=dict)


@dataclass
class _WithBOS:
    """Wraps a task: the first token of every sequence becomes `bos` (length unchanged)."""

    task: ByteCorpus
    bos: int
    vocab_size: int = 256

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    def batch(self, step: int):
        b = self.task.batch(step)
        b.tokens[:, 0] = self.bos
        return b


def train_model(cfg: StreamingConfig) -> tuple[TinyLM, float]:
    """A TinyLM trained on stdlib bytes; returns (model, final training loss)."""
    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig(vocab_size=256, d_model=cfg.d_model, n_layers=cfg.n_layers,
                       mixers=AttentionSpec(n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads),
                       max_seq_len=cfg.eval_len)
    model = TinyLM(mcfg)
    task = ByteCorpus(seq_len=cfg.train_len, batch_size=cfg.batch_size, seed=cfg.seed)
    if cfg.bos_token is not None:
        task = _WithBOS(task, cfg.bos_token)
    tr = Trainer(model, task, TrainConfig(steps=cfg.train_steps, lr=cfg.lr, progress=False,
                                          log_every=max(1, cfg.train_steps // 10)))
    hist = tr.run()
    return model.eval(), float(hist[-1]["loss"])


@torch.no_grad()
def sink_mass(model: TinyLM, tokens: torch.Tensor, min_query: int = 8) -> float:
    """Mean softmax weight on key 0 over queries ≥ min_query, heads and layers."""
    qs, ks = [], []
    hooks = []
    for blk in model.blocks:
        hooks.append(blk.mixer.hook_q.register_forward_hook(lambda m, i, o: qs.append(o)))
        hooks.append(blk.mixer.hook_k.register_forward_hook(lambda m, i, o: ks.append(o)))
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    masses = []
    for q, k in zip(qs, ks):  # q (B, H, N, D), k (B, Hkv, N, D) post-RoPE
        G = q.shape[1] // k.shape[1]
        kk = k.repeat_interleave(G, 1)
        s = q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, N)
        N = s.shape[-1]
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        p = s.softmax(-1)  # (B, H, N, N)
        masses.append(p[:, :, min_query:, 0].mean())
    return float(torch.stack(masses).mean())


@torch.no_grad()
def stream_losses(model: TinyLM, tokens: torch.Tensor, kind: str, n_sink: int,
                  window: int) -> torch.Tensor:
    """Per-position next-token NLL (B, N−1) feeding `tokens` (B, N) one at a time."""
    if kind not in KINDS:
        raise ValueError(f"kind ({kind!r}) must be one of {list(KINDS)}")
    B, N = tokens.shape
    if kind == "dense":
        cache = model.new_cache(B, N)
    else:
        a = model.blocks[0].mixer
        sinks, win = (0, n_sink + window) if kind == "window" else (n_sink, window)
        cache = CacheStack([SinkKVCache(1, B, a.n_kv_heads, a.head_dim, n_sink=sinks,
                                        window=win) for _ in model.blocks])
    out = []
    for t in range(N - 1):
        logits = model(tokens[:, t:t + 1], cache)[:, -1]  # (B, vocab)
        out.append(F.cross_entropy(logits, tokens[:, t + 1], reduction="none"))
    return torch.stack(out, 1)  # (B, N − 1)


def run(cfg: StreamingConfig | None = None, model: TinyLM | None = None) -> StreamingResult:
    """Train (unless `model` is given) and measure; see the module docstring."""
    cfg = cfg or StreamingConfig()
    train_loss = float("nan")
    if model is None:
        model, train_loss = train_model(cfg)
    val = ByteCorpus(seq_len=cfg.eval_len, batch_size=cfg.eval_sequences, split="val",
                     seed=cfg.seed)
    tokens = val.batch(0).tokens  # (S, eval_len)
    if cfg.bos_token is not None:
        tokens[:, 0] = cfg.bos_token
    budget = cfg.n_sink + cfg.window
    per, loss = {}, {}
    for kind in KINDS:
        nll = stream_losses(model, tokens, kind, cfg.n_sink, cfg.window)  # (S, N−1)
        per[kind] = nll.mean(0).tolist()
        loss[kind] = float(nll[:, budget:].mean())  # predictions made after eviction began
    n = min(cfg.train_len, cfg.eval_len)
    mass = sink_mass(model, tokens[:, :n])
    uniform = sum(1 / (i + 1) for i in range(8, n)) / (n - 8)
    return StreamingResult(loss, {k: math.exp(v) for k, v in loss.items()}, mass, uniform,
                           train_loss, tokens.shape[1] - 1 - budget, per)
