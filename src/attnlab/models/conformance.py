"""The reusable conformance check every mixer kind must pass.

Causal masking makes one parallel forward over a sequence compute, at every position,
exactly what token-by-token decoding with a cache computes. So for any model:
logits(forward(tokens)) == logits(prefill(tokens[:, :p]) then decode the rest with the
cache), up to float rounding. A mixer that leaks future tokens, rotates keys with the
wrong position, caches the wrong thing or mis-aligns its mask fails this check.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from ..cache.context import AttentionContext


@torch.no_grad()
def decode_logits(model, tokens: torch.Tensor, prefix_len: int, chunk: int = 1) -> torch.Tensor:
    """Logits of prefill(tokens[:, :prefix_len]) + decoding the rest `chunk` tokens at a time."""
    B, N = tokens.shape
    dtype = next(model.parameters()).dtype
    cache = model.new_cache(B, N, dtype=dtype, device=tokens.device)
    ctx = AttentionContext(cache)  # the model's one forward, positions from the cache
    parts = []
    if prefix_len > 0:
        parts.append(model(tokens[:, :prefix_len], ctx))
    for t in range(prefix_len, N, chunk):
        parts.append(model(tokens[:, t:t + chunk], ctx))  # (B, <=chunk, vocab)
    if cache.seq_len(0) != N:
        raise AssertionError(f"cache.seq_len(0) is {cache.seq_len(0)} after {N} tokens")
    return torch.cat(parts, dim=1)  # (B, N, vocab)


@torch.no_grad()
def check_parallel_equals_decode(model, tokens: torch.Tensor, prefix_len: int,
                                 atol: float = 1e-5, *, chunk: int = 1) -> float:
    """Max |parallel logits − cached-decode logits|; AssertionError with details if > atol.

    `tokens` (B, N) long; `prefix_len` in [0, N] tokens are prefilled in one call, the rest
    are fed `chunk` tokens per call (chunk 1 = token-by-token decoding).
    """
    check_tensor("tokens", tokens, 2)
    N = tokens.shape[1]
    check_positive_int("prefix_len", prefix_len, minimum=0)
    if prefix_len > N:
        raise ValueError(f"prefix_len ({prefix_len}) must be <= sequence length ({N})")
    check_positive_int("chunk", chunk)
    if not atol >= 0:
        raise ValueError(f"atol ({atol}) must be >= 0")
    was_training = model.training
    model.eval()
    try:
        full = model(tokens)  # (B, N, vocab)
        inc = decode_logits(model, tokens, prefix_len, chunk)
    finally:
        model.train(was_training)
    err = (full.float() - inc.float()).abs()  # (B, N, vocab)
    worst = float(err.max())
    if not worst <= atol:  # also catches NaN
        per_pos = err.amax(dim=(0, 2))  # (N,)
        bad = (per_pos > atol).nonzero().flatten().tolist()
        raise AssertionError(
            f"parallel forward and cached decode differ: max |diff| {worst:.3e} > atol {atol:.1e} "
            f"at positions {bad[:10]}{'...' if len(bad) > 10 else ''} "
            f"(prefix_len {prefix_len}, chunk {chunk}, N {N}, first bad position diff "
            f"{float(per_pos[bad[0]]) if bad else float('nan'):.3e})")
    return worst
