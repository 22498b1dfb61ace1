"""Rotary position embedding (RoFormer, Su et al. 2021) as pure functions.

Two layouts of the rotated pairs: "half" (pairs (i, i + D/2); GPT-NeoX / HF Llama) and
"interleaved" (pairs (2i, 2i+1); the original RoFormer / Meta Llama / DeepSeek-V2's
complex-pair convention). Frequencies are `base^(-2i/D)` unless a `RopeScaling`
(`ops.rope_scaling`: linear, dynamic NTK, YaRN, Llama 3) rewrites them. O(N·D).
"""
from __future__ import annotations

import torch

from .._checks import check_tensor
from .rope_scaling import RopeScaling, rope_inv_freq


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0,
                scaling: RopeScaling | None = None):
    """cos, sin of shape (*positions.shape, dim/2) for integer positions (N,) or (B, N).

    With a dynamic `scaling`, the frequencies follow the call's largest position.
    """
    seq_len = int(positions.max()) + 1 if positions.numel() else 0
    inv_freq = rope_inv_freq(dim, base, scaling, seq_len)  # (dim/2,) float64
    ang = positions.to(torch.float64).unsqueeze(-1) * inv_freq.to(positions.device)
    return torch.cos(ang).float(), torch.sin(ang).float()  # (..., N, dim/2)


def _check_positions(positions, x: torch.Tensor) -> torch.Tensor:
    positions = torch.as_tensor(positions, device=x.device)
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError(f"positions must hold integers, got dtype {positions.dtype}")
    N = x.shape[-2]
    ok = positions.shape == (N,) or (positions.ndim == 2 and x.ndim >= 3
                                     and positions.shape == (x.shape[0], N))
    if not ok and positions.ndim != 2:
        raise ValueError(f"positions must have shape ({N},), got {tuple(positions.shape)}")
    if not ok:
        raise ValueError(f"positions must have shape (B, {N}) with B = x.shape[0] "
                         f"({x.shape[0]}), got {tuple(positions.shape)}")
    return positions


def apply_rope(x: torch.Tensor, positions: torch.Tensor, *, base: float = 10000.0,
               interleaved: bool = False, scaling: RopeScaling | None = None) -> torch.Tensor:
    """Rotate x (..., N, D) by the angles of `positions`: (N,) shared by the batch, or
    (B, N) one row per sequence of x (B, ..., N, D) (left-padded batches).

    x may be float16/bfloat16/float32/float64: the rotation is computed in float32 (angles
    in float64 first, so large positions keep their precision) and returned in x's dtype.
    `scaling` rescales the frequencies and, for YaRN, multiplies the result by its
    attention factor (`RopeScaling.rope_factor`).
    """
    check_tensor("x", x)
    if not x.dtype.is_floating_point or x.ndim < 2:
        raise TypeError(f"x must be a floating tensor (..., N, D), got dtype {x.dtype} and "
                        f"shape {tuple(x.shape)}")
    D = x.shape[-1]
    positions = _check_positions(positions, x)
    cos, sin = rope_angles(positions, D, base, scaling)  # (N, D/2) or (B, N, D/2)
    if positions.ndim == 2:  # (B, N, D/2) -> (B, 1, ..., N, D/2) against x (B, ..., N, D)
        shape = (x.shape[0],) + (1,) * (x.ndim - 3) + cos.shape[1:]
        cos, sin = cos.view(shape), sin.view(shape)
    factor = 1.0 if scaling is None else scaling.rope_factor
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
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
