"""Autoregressive generation with a cache: prefill the prompt once, then one token per step.

Each decode step runs the model on ONE new token per sequence and reads the history from
the cache, so a step costs O(n_layers · cached length) attention work instead of
re-running the whole prefix.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from ..cache.context import AttentionContext
from .lm import TinyLM


@torch.no_grad()
def generate(model: TinyLM, prompt: torch.Tensor, max_new_tokens: int,
             temperature: float = 0.0, seed: int | None = None, *,
             top_k: int | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Extend `prompt` (B, N0) by `max_new_tokens`; returns (B, N0 + max_new_tokens).

    temperature 0 = greedy (argmax); > 0 samples from softmax(logits / temperature),
    optionally restricted to the `top_k` largest logits, from a generator seeded by `seed`.
    `attention_mask` (B, N0), 0 on padding: a left-padded batch of prompts of different
    lengths, as Hugging Face's generate takes it; each sequence's positions start at its
    first real token (position_ids = cumsum(mask) − 1) and padding is never attended.
    """
    check_tensor("prompt", prompt, 2)
    check_positive_int("max_new_tokens", max_new_tokens, minimum=0)
    if not temperature >= 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0")
    if top_k is not None:
        check_positive_int("top_k", top_k)
    B, N0 = prompt.shape
    # the last sampled token is never fed back: the model sees N0 + max_new_tokens - 1
    # positions. Checked here, before any forward pass, not mid-generation.
    if N0 + max_new_tokens - 1 > model.cfg.max_seq_len:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) with a prompt of {N0} tokens needs "
                         f"{N0 + max_new_tokens - 1} positions; expected at most max_seq_len "
                         f"({model.cfg.max_seq_len})")
    if max_new_tokens == 0:
        return prompt.clone()
    gen = torch.Generator(device=prompt.device)
    if seed is not None:
        gen.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    cache = model.new_cache(B, N0 + max_new_tokens, dtype=dtype, device=prompt.device)
    was_training = model.training
    model.eval()
    out = [prompt]
    pad = {}
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, 2)
        if attention_mask.shape != prompt.shape:
            raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        mask = attention_mask.to(device=prompt.device, dtype=torch.long)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, N0): 0 at each first real token
        pad = {"attention_mask": mask, "position_ids": pos}
    ctx = AttentionContext(cache)  # the model's one forward, with a contiguous cache
    logits = model(prompt, ctx, **pad)[:, -1]  # (B, vocab)
    for step in range(max_new_tokens):
        nxt = _pick(logits, temperature, top_k, gen)  # (B, 1)
        out.append(nxt)
        if step + 1 < max_new_tokens:
            if pad:
                mask = torch.cat([pad["attention_mask"], torch.ones_like(nxt)], 1)  # (B, L+1)
                pad = {"attention_mask": mask, "position_ids": pad["position_ids"][:, -1:] + 1}
            logits = model(nxt, ctx, **pad)[:, -1]
    model.train(was_training)
    return torch.cat(out, dim=1)


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
          gen: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)
