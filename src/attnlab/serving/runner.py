"""Packed forward of a TinyLM over a paged KV cache (the engine's model step).

One step processes a ragged batch: for each scheduled sequence, its next `n` tokens
(a prefill chunk, or one decode token) starting at its own position. All tokens are
packed into one row of T tokens, so the projections and MLPs run as single (T, d_model)
matmuls; only attention is per sequence: every decode token (n = 1) goes into ONE
`paged_attention` call with batch = number of decoders, every prefill chunk into its own
call with Nq = n (bottom-right causal). K/V of all T tokens are written into the pool
slots reserved by the scheduler before attention reads them.

Supported mixers: `layers.attention.Attention` without a sliding window (MHA/GQA/MQA,
RoPE or none). The layer's hook points are not called on this path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache.paged import PagedKVCache
from ..layers.attention import Attention
from ..models.lm import TinyLM
from ..ops.paged import paged_attention
from ..ops.rope import apply_rope


@dataclass
class StepEntry:
    """One sequence's share of a step: `tokens` at positions start.. and their pool slots."""

    seq_id: object
    tokens: list[int]
    start: int
    slots: torch.Tensor  # (n,) from PagedKVCache.reserve


def check_servable(model: TinyLM) -> None:
    """The runner handles full causal softmax attention layers only; say so otherwise."""
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        m = blk.mixer
        if type(m) is not Attention or m.window is not None or not m.causal:
            raise ValueError(f"model.blocks[{i}].mixer ({type(m).__name__}, window="
                             f"{getattr(m, 'window', None)}) is not servable; expected a causal "
                             "Attention layer without a window")


def new_paged_cache(model: TinyLM, num_blocks: int, block_size: int = 16, *,
                    prefix_caching: bool = True) -> PagedKVCache:
    """A pool sized for this model's KV heads (all layers share one block table)."""
    check_servable(model)
    a = model.blocks[0].mixer
    dtype = next(model.parameters()).dtype
    return PagedKVCache(model.cfg.n_layers, a.n_kv_heads, a.head_dim, num_blocks, block_size,
                        dtype=dtype, device=next(model.parameters()).device,
                        prefix_caching=prefix_caching)


@torch.no_grad()
def packed_forward(model: TinyLM, cache: PagedKVCache, entries: list[StepEntry]) -> torch.Tensor:
    """Run one step; returns the logits of each entry's LAST token, (len(entries), vocab).

    `cache.seq_len(e.seq_id)` must already include the entry's tokens (reserved)."""
    dev = next(model.parameters()).device
    toks = torch.tensor([t for e in entries for t in e.tokens], dtype=torch.long, device=dev)
    pos = torch.cat([torch.arange(e.start, e.start + len(e.tokens)) for e in entries]).to(dev)
    slots = torch.cat([e.slots for e in entries])  # (T,)
    T = toks.shape[0]
    ends = torch.tensor([len(e.tokens) for e in entries]).cumsum(0)  # (E,) exclusive ends
    decoders = [i for i, e in enumerate(entries) if len(e.tokens) == 1]
    prefills = [i for i, e in enumerate(entries) if len(e.tokens) > 1]
    dec_rows = (ends[decoders] - 1).tolist() if decoders else []
    dec_tables = cache.tables_tensor([entries[i].seq_id for i in decoders]) if decoders else None
    dec_lens = torch.tensor([cache.seq_len(entries[i].seq_id) for i in decoders])

    x = model.embed(toks)[None]  # (1, T, d_model)
    for li, blk in enumerate(model.blocks):
        att: Attention = blk.mixer
        H, Hkv, D = att.n_heads, att.n_kv_heads, att.head_dim
        x = blk.hook_resid_pre(x)
        h = blk.norm1(x)[0]  # (T, d_model)
        q = att.q_proj(h).view(T, H, D).transpose(0, 1)  # (H, T, D)
        k = att.k_proj(h).view(T, Hkv, D).transpose(0, 1)  # (Hkv, T, D)
        v = att.v_proj(h).view(T, Hkv, D).transpose(0, 1)  # (Hkv, T, D)
        if att.rope:
            q = apply_rope(q, pos, base=att.rope_base, interleaved=att.rope_interleaved)
            k = apply_rope(k, pos, base=att.rope_base, interleaved=att.rope_interleaved)
        cache.write(li, slots, k.contiguous(), v.contiguous())
        out = torch.empty(H, T, D, dtype=q.dtype, device=q.device)  # (H, T, D)
        kp, vp = cache.k_pool[li], cache.v_pool[li]  # (Hkv, num_blocks, bs, D)
        if decoders:
            qd = q[:, dec_rows].transpose(0, 1).unsqueeze(2)  # (Bd, H, 1, D)
            od = paged_attention(qd, kp, vp, dec_tables, dec_lens, scale=att.scale)
            out[:, dec_rows] = od[:, :, 0].transpose(0, 1)  # (H, Bd, D)
        for i in prefills:
            e = entries[i]
            r0, r1 = int(ends[i]) - len(e.tokens), int(ends[i])
            qp = q[:, r0:r1].unsqueeze(0)  # (1, H, n, D)
            op = paged_attention(qp, kp, vp, cache.tables_tensor([e.seq_id]),
                                 torch.tensor([cache.seq_len(e.seq_id)]), scale=att.scale)
            out[:, r0:r1] = op[0]
        mixed = att.o_proj(out.transpose(0, 1).reshape(1, T, H * D))  # (1, T, d_model)
        x = x + blk.hook_mixer_out(mixed)
        x = blk.hook_resid_post(x + blk.hook_mlp_out(blk.mlp(blk.norm2(x))))
    last = x[0, ends - 1]  # (E, d_model)
    last = model.norm(last)
    w = model.embed.weight if model.head is None else model.head.weight
    return last @ w.T  # (E, vocab)
