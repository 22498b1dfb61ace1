"""TinyLM: a config-driven decoder-only transformer for conformance tests and experiments.

Token embedding → n_layers pre-norm blocks `x + mixer(RMSNorm(x))`, `x + MLP(RMSNorm(x))`
→ final RMSNorm → LM head (tied to the embedding by default, as GPT-2 / Press & Wolf 2017).
No absolute position embedding: positions come from each mixer (RoPE, recurrence).
Cost per token: O(n_layers · (mixer + 2·d_model·d_ff or 3·d_model·d_ff for SwiGLU)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_tensor
from ..cache.base import CacheStack, KVCache
from ..cache.context import AttentionContext, as_context
from ..layers.base import Mixer
from ..layers.hooks import HookPoint
from .config import ModelConfig


class MLP(nn.Module):
    """SwiGLU `W2(silu(W1 x) ⊙ W3 x)` (Shazeer 2020) or GELU `W2 gelu(W1 x)` (GPT-2)."""

    def __init__(self, d_model: int, d_ff: int, kind: str):
        super().__init__()
        self.kind = kind
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.gate = nn.Linear(d_model, d_ff, bias=False) if kind == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block around one mixer and one MLP.

    Hook points (identity unless hooked): `hook_resid_pre`, `hook_mixer_out`,
    `hook_mlp_out`, `hook_resid_post`, all (B, N, d_model).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = cfg.layer_specs[layer_idx].build(cfg.d_model, layer_idx)
        if not isinstance(self.mixer, Mixer):
            raise TypeError(f"mixers[{layer_idx}].build() must return a Mixer, got "
                            f"{type(self.mixer).__name__}")
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.mlp)
        self.hook_resid_pre = HookPoint("resid_pre")
        self.hook_mixer_out = HookPoint("mixer_out")
        self.hook_mlp_out = HookPoint("mlp_out")
        self.hook_resid_post = HookPoint("resid_post")

    def forward(self, x: torch.Tensor, ctx: AttentionContext | None = None) -> torch.Tensor:
        """`ctx`: the forward's attention context (None = no cache, default positions)."""
        x = self.hook_resid_pre(x)
        x = x + self.hook_mixer_out(self.mixer(self.norm1(x), ctx))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.norm2(x))))


class TinyLM(nn.Module):
    """forward(tokens (B, N) long, ctx=None, *, attention_mask=None, position_ids=None)
    -> logits (B, N, vocab_size).

    The model's only forward. `ctx` is an `AttentionContext` (cache handle + positions,
    `cache.context`) or, as shorthand, a cache from `new_cache` (wrapped in a context
    whose positions follow the cache). With a cache, `tokens` are the next N tokens of
    every sequence; prefill + token-by-token decoding equals one parallel forward
    (`models.conformance.check_parallel_equals_decode`). `generate`, the conformance
    check and the serving engine (`serving.Engine`, paged per-layer views) all call it.
    `attention_mask` (B, cached + N) and `position_ids` (N,) or (B, N) follow Hugging
    Face (left-padded batches, `layers.positions`); every mixer must then be softmax
    attention or MLA.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size,
                                                              bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Normal(0, init_std) for the embedding and every Linear weight; zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.cfg.init_std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, ctx: AttentionContext | KVCache | None = None, *,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("tokens", tokens, 2)
        if tokens.dtype != torch.long:
            raise TypeError(f"tokens must have dtype torch.long, got {tokens.dtype}")
        if tokens.shape[1] == 0:
            raise ValueError(f"tokens must hold at least one token, got shape "
                             f"{tuple(tokens.shape)}")
        ctx = as_context(ctx, attention_mask=attention_mask, position_ids=position_ids)
        cache = ctx.cache
        if cache is not None and cache.n_layers != self.cfg.n_layers:
            raise ValueError(f"cache has {cache.n_layers} layers; expected n_layers "
                             f"({self.cfg.n_layers})")
        if ctx.positions is not None:
            end = int(ctx.positions.max()) + 1 if ctx.positions.numel() else 0
        else:
            end = (0 if cache is None else cache.seq_len(0)) + tokens.shape[1]
        if end > self.cfg.max_seq_len:
            raise ValueError(f"positions up to {end} exceed max_seq_len "
                             f"({self.cfg.max_seq_len})")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"tokens must lie in [0, {self.cfg.vocab_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        self._positions(ctx.attention_mask, ctx.position_ids)
        if cache is not None:  # refuse before layer 0 writes: a full layer 3 must not
            cache.check_append(tokens.shape[1])  # leave layers 0–2 one step ahead
        arg = None if cache is None and ctx.positions is None and not ctx.padding() else ctx
        x = self.embed(tokens)  # (B, N, d_model)
        for block in self.blocks:
            x = block(x, arg)
        x = self.norm(x)
        w = self.embed.weight if self.head is None else self.head.weight
        return x @ w.T  # (B, N, vocab)

    def _positions(self, attention_mask, position_ids) -> dict:
        """The keyword arguments every mixer gets; only mixers with `takes_positions`
        (softmax attention, MLA) accept padding masks and explicit positions."""
        given = {k: v for k, v in (("attention_mask", attention_mask),
                                   ("position_ids", position_ids)) if v is not None}
        if given:
            for i, block in enumerate(self.blocks):
                if not (isinstance(block.mixer, Mixer) and block.mixer.takes_positions):
                    raise ValueError(f"{' and '.join(given)} given, but blocks[{i}].mixer "
                                     f"({type(block.mixer).__name__}) does not take them; "
                                     "expected softmax attention or MLA layers")
        if position_ids is not None and check_tensor("position_ids", position_ids).numel() \
                and int(position_ids.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position_ids up to {int(position_ids.max())} exceed "
                             f"max_seq_len ({self.cfg.max_seq_len})")
        return given

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> CacheStack:
        """One cache per layer from each mixer's `new_cache`, stacked (hybrid-friendly)."""
        return CacheStack([b.mixer.new_cache(batch, capacity, dtype=dtype, device=device)
                           for b in self.blocks])

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Sum of every layer's cached bytes per token."""
        return sum(b.mixer.kv_bytes_per_token(dtype_bytes) for b in self.blocks)
