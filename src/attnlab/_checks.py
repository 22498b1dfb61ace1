"""Input validation shared by the public boundary (conventions §6).

Every check raises ValueError/TypeError naming the argument, its value and what was
expected. Checks run once per public call, never inside inner loops.
"""
from __future__ import annotations

import torch


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
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")


def check_same_device_dtype(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}; expected one device")
        if t.dtype != t0.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {n0} has dtype {t0.dtype}; expected one dtype")


def check_qkv(q, k, v) -> tuple[int, int, int, int, int, int, int]:
    """Validate conventions §1 layouts. Returns (B, Hq, Hkv, Nq, Nk, D, Dv)."""
    check_tensor("q", q, 4)
    check_tensor("k", k, 4)
    check_tensor("v", v, 4)
    check_same_device_dtype(q=q, k=k, v=v)
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
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"q heads ({Hq}) must be divisible by k/v heads ({Hkv})")
    return B, Hq, Hkv, Nq, Nk, D, Dv
