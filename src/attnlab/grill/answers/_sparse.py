"""Shared evidence helpers for the sparse-attention questions (14–20, 39, 40, 46, 49)."""
from __future__ import annotations

import torch

from ...masks import Mask, global_tokens
from ...ops.softmax import attention_reference


def band(radius: int) -> Mask:
    """Bidirectional local window: |i − j| <= radius (Longformer's encoder window)."""
    return Mask(lambda b, h, q, k: (q - k).abs() <= radius, f"band({radius})")


def window_plus_globals(radius: int, globals_: list[int]) -> Mask:
    """Longformer pattern: a bidirectional band plus global positions."""
    return band(radius) | global_tokens(globals_)


def needle_readout(n: int, needle_pos: int, window: int | None, d: int = 16,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One retrieval head: the last query looks for a key planted at `needle_pos`.

    Returns (output with the needle, output with the needle's value replaced) for the last
    position; `window=None` is full causal attention. The needle key matches the query
    strongly, so full attention copies the needle's value; outside the window it cannot.
    """
    g = torch.Generator().manual_seed(seed)
    k = 0.1 * torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    v = 0.1 * torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / u.norm()
    k[0, 0, needle_pos] = 8.0 * u
    v[0, 0, needle_pos] = 0.0
    v[0, 0, needle_pos, 0] = 1.0  # the needle's value: e_0
    q = (8.0 * u).view(1, 1, 1, d)
    pos = torch.arange(n)
    mask = (pos <= n - 1) if window is None else ((n - 1 - pos) < window)  # (N,)
    mask = mask.view(1, n)
    out = attention_reference(q, k, v, mask=mask)[0, 0, 0]  # (d,)
    v2 = v.clone()
    v2[0, 0, needle_pos, 0] = -1.0  # a different needle
    out2 = attention_reference(q, k, v2, mask=mask)[0, 0, 0]
    return out, out2
