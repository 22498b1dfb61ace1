"""A TinyLM whose attention layers run context-parallel.

`ContextParallelLM(model, group=..., method=...)` swaps every `layers.Attention` mixer of
a `models.TinyLM` for `ContextParallelAttention`, which shares the layer's projections
(the same `nn.Linear` objects, so parameter names and the state dict are unchanged),
rotates q/k with the shard's absolute positions and calls
`context_parallel_attention`. Embedding, norms, MLPs and the head act token by token, so
they run unchanged on the shard. Training: `loss` is the shard's summed cross-entropy
over the global token count (the ranks' losses add up to the single-process mean), and
`sync_grads` sums the gradients over ranks (one all-reduce of one flat buffer), after
which every rank holds the single-process gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import Attention
from ..models.lm import TinyLM
from ..ops.rope import apply_rope
from .api import context_parallel_attention
from .comm import Comm


class ContextParallelAttention(nn.Module):
    """forward(x (B, n, d_model)) for the shard whose absolute positions are
    `self.positions` (set by `ContextParallelLM.forward`); no KV cache."""

    def __init__(self, attn: Attention, *, group=None, method: str = "ring",
                 ulysses_size: int | None = None, q_block: int = 64, kv_block: int = 64):
        super().__init__()
        if not isinstance(attn, Attention):
            raise TypeError(f"attn must be a layers.Attention, got {type(attn).__name__}")
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.rope, self.rope_base, self.rope_interleaved = (
            attn.rope, attn.rope_base, attn.rope_interleaved)
        self.mask, self.scale, self.layer_idx = attn.mask, attn.scale, attn.layer_idx
        self.group, self.method, self.ulysses_size = group, method, ulysses_size
        self.q_block, self.kv_block = q_block, kv_block
        self.positions: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:
            raise ValueError("ContextParallelAttention runs prefill/training without a cache; "
                             "decode with distributed.decode.ShardedKVCache")
        if self.positions is None or self.positions.shape != (x.shape[1],):
            raise ValueError(f"positions ({None if self.positions is None else tuple(self.positions.shape)}) "
                             f"must be set to the shard's ({x.shape[1]},) absolute positions")
        B, n, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, n, H, D).transpose(1, 2)  # (B, H, n, D)
        k = self.k_proj(x).view(B, n, Hkv, D).transpose(1, 2)  # (B, Hkv, n, D)
        v = self.v_proj(x).view(B, n, Hkv, D).transpose(1, 2)  # (B, Hkv, n, D)
        if self.rope:
            rot = {"base": self.rope_base, "interleaved": self.rope_interleaved}
            q, k = apply_rope(q, self.positions, **rot), apply_rope(k, self.positions, **rot)
        out = context_parallel_attention(q, k, v, mask=self.mask, group=self.group,
                                         method=self.method, q_pos=self.positions,
                                         kv_pos=self.positions, scale=self.scale,
                                         ulysses_size=self.ulysses_size,
                                         q_block=self.q_block, kv_block=self.kv_block)
        return self.o_proj(out.transpose(1, 2).reshape(B, n, H * D))  # (B, n, d_model)


class ContextParallelLM(nn.Module):
    """`model` (a TinyLM, modified in place) with context-parallel attention layers."""

    def __init__(self, model: TinyLM, *, group=None, method: str = "ring",
                 ulysses_size: int | None = None, q_block: int = 64, kv_block: int = 64):
        super().__init__()
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        for i, block in enumerate(model.blocks):
            if not isinstance(block.mixer, Attention):
                raise TypeError(f"layer {i} is a {type(block.mixer).__name__}; only softmax "
                                "Attention layers run context-parallel")
            block.mixer = ContextParallelAttention(block.mixer, group=group, method=method,
                                                   ulysses_size=ulysses_size,
                                                   q_block=q_block, kv_block=kv_block)
        self.model, self.group = model, group

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens (B, n): this rank's shard; positions (n,): their absolute positions."""
        positions = torch.as_tensor(positions).long()
        for block in self.model.blocks:
            block.mixer.positions = positions
        return self.model(tokens)

    def loss(self, tokens, targets, positions, n_total: int) -> torch.Tensor:
        """This shard's share of the global mean next-token loss (shares add up to it)."""
        logits = self(tokens, positions)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             reduction="sum")
        return ce / (tokens.shape[0] * n_total)

    def sync_grads(self) -> None:
        """Sum every parameter's gradient over ranks (one flat all-reduce)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        Comm(self.group).all_reduce(flat, "grad", "gradient all-reduce")
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def global_loss(self, loss: torch.Tensor) -> float:
        """The ranks' shares summed: the single-process mean loss."""
        t = loss.detach().reshape(1).clone()
        return float(Comm(self.group).all_reduce(t, "meta", "loss all-reduce"))
