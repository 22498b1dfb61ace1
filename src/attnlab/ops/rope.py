"""Rotary position embedding (RoFormer, Su et al. 2021) as pure functions.

Two layouts of the rotated pairs: "half" (pairs (i, i + D/2); GPT-NeoX / HF Llama) and
"interleaved" (pairs (2i, 2i+1); the original RoFormer / Meta Llama / DeepSeek-V2's
complex-pair convention). O(N·D).
"""
from __future__ import annotations

import torch

from .._checks import check_tensor


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0):
    """cos, sin of shape (N, dim/2) for integer positions (N,)."""
    if dim % 2:
        raise ValueError(f"rope dim ({dim}) must be even")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64).unsqueeze(-1) * inv_freq  # (N, dim/2)
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, *, base: float = 10000.0,
               interleaved: bool = False) -> torch.Tensor:
    """Rotate x (..., N, D) by the angles of `positions` (N,) integer positions.

    x may be float16/bfloat16/float32/float64: the rotation is computed in float32 (angles
    in float64 first, so large positions keep their precision) and returned in x's dtype.
    """
    check_tensor("x", x)
    if not x.dtype.is_floating_point or x.ndim < 2:
        raise TypeError(f"x must be a floating tensor (..., N, D), got dtype {x.dtype} and "
                        f"shape {tuple(x.shape)}")
    D = x.shape[-1]
    positions = torch.as_tensor(positions, device=x.device)
    if positions.ndim != 1 or positions.shape[0] != x.shape[-2]:
        raise ValueError(f"positions must have shape ({x.shape[-2]},), got {tuple(positions.shape)}")
    cos, sin = rope_angles(positions, D, base)
    cos, sin = cos.to(x.device), sin.to(x.device)
    xf = x.float()
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]  # (..., N, D/2)
        r1 = x1 * cos - x2 * sin
        r2 = x1 * sin + x2 * cos
        out = torch.stack([r1, r2], dim=-1).flatten(-2)  # (..., N, D)
    else:
        x1, x2 = xf[..., : D // 2], xf[..., D // 2:]
        out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
