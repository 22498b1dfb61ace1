"""Validation shared by the linear family's ops (linear attention, Performer, RWKV, SSD)."""
from __future__ import annotations

import torch

from ..._checks import check_finite


def check_finite_fast(name: str, x: torch.Tensor) -> None:
    """check_finite in one reduction: a finite sum proves every element finite; only when
    the sum is not finite (a NaN/inf, or an overflowing sum) is the elementwise check run."""
    if x.numel() and not bool(torch.isfinite(x.sum())):
        check_finite(name, x)
