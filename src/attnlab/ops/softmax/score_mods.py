"""Score modifiers `score_mod(score, b, h, q_idx, kv_idx) -> score` (FlexAttention style).

Indices are absolute positions (bottom-right aligned, conventions §2) and broadcast like masks.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                    torch.Tensor]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022): geometric 2^(-8/n · (h+1)); for n not a power
    of two, the slopes of the next lower power of two interleaved with every other slope of
    2n (the paper's reference construction)."""
    if n_heads < 1:
        raise ValueError(f"n_heads ({n_heads}) must be >= 1")

    def pow2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        s = pow2(n_heads)
    else:
        p = 2 ** math.floor(math.log2(n_heads))
        s = pow2(p) + pow2(2 * p)[0::2][: n_heads - p]
    return torch.tensor(s, dtype=torch.float32)


def alibi(slopes: torch.Tensor) -> ScoreMod:
    """ALiBi: add `-m_h · (i - j)` to the score of query i and key j (linear distance bias)."""
    slopes = torch.as_tensor(slopes, dtype=torch.float32)
    if slopes.ndim != 1:
        raise ValueError(f"slopes must be 1-D (one per query head), got {tuple(slopes.shape)}")

    def mod(score, b, h, q, k):
        if h.numel() and int(h.max()) >= slopes.numel():  # once per call, on the (H,) index
            raise ValueError(f"slopes has {slopes.numel()} entries but query head "
                             f"{int(h.max())} was scored; expected one slope per query head")
        return score - slopes.to(score.device)[h] * (q - k).to(score.dtype)

    return mod


def softcap(cap: float) -> ScoreMod:
    """Tanh soft-capping `cap · tanh(score / cap)` (Gemma-2 uses cap 50 on attention logits)."""
    if not cap > 0:
        raise ValueError(f"cap ({cap}) must be > 0")

    def mod(score, b, h, q, k):
        return cap * torch.tanh(score / cap)

    return mod
