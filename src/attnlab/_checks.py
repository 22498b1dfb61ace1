"""Input validation shared by the public boundary (conventions §6).

Every check raises ValueError/TypeError naming the argument, its value and what was
expected. Checks run once per public call, never inside inner loops.
"""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum}")
    return value


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if divisor <= 0 or value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ValueError naming `name` and its first non-finite entry (conventions §2)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains NaN or inf (first at index {idx}: "
                         f"{x[idx].item()}); expected finite values")


def check_scale(scale) -> float | None:
    """`scale`: None (the default 1/sqrt(D)) or a finite real number > 0."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float, got {type(scale).__name__} ({scale!r})")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale ({scale}) must be a finite float > 0")
    return scale


def check_positions(name: str, pos, n: int) -> torch.Tensor | None:
    """Absolute positions: None or an integer tensor of shape (n,); returned as int64 CPU."""
    if pos is None:
        return None
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(pos).__name__}")
    if pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer positions, got dtype {pos.dtype}")
    if pos.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(pos.shape)}")
    return pos.long().cpu()


def check_same_device_dtype(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}; expected one device")
        if t.dtype != t0.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {n0} has dtype {t0.dtype}; expected one dtype")


def check_qkv(q, k, v) -> tuple[int, int, int, int, int, int, int]:
    """Validate conventions §1 layouts and dtypes. Returns (B, Hq, Hkv, Nq, Nk, D, Dv)."""
    check_tensor("q", q, 4)
    check_tensor("k", k, 4)
    check_tensor("v", v, 4)
    check_same_device_dtype(q=q, k=k, v=v)
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q dtype ({q.dtype}) must be a floating type "
                        f"(float16, bfloat16, float32 or float64)")
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nk, Dk = k.shape
    Bv, Hv, Nv, Dv = v.shape
    if Bk != B or Bv != B:
        raise ValueError(f"batch sizes differ: q {B}, k {Bk}, v {Bv}; expected equal")
    if Dk != D:
        raise ValueError(f"k head_dim ({Dk}) must equal q head_dim ({D})")
    if Hv != Hkv or Nv != Nk:
        raise ValueError(
            f"v shape {tuple(v.shape)} must match k in heads and length ({Hkv}, {Nk})"
        )
    for name, n in (("q heads", Hq), ("k/v heads", Hkv), ("q head_dim", D), ("v head_dim", Dv)):
        if n < 1:
            raise ValueError(f"{name} ({n}) must be >= 1")
    if Hq % Hkv != 0:
        raise ValueError(f"q heads ({Hq}) must be divisible by k/v heads ({Hkv})")
    return B, Hq, Hkv, Nq, Nk, D, Dv
