"""Feature maps φ for linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Linear attention replaces `exp(q·k)` by `φ(q)·φ(k)`. Built-in maps:
- `"elu+1"`: φ(x) = elu(x) + 1 (the paper's choice; strictly positive);
- `"relu"`: φ(x) = max(x, 0) (non-negative; a row can be all zero);
- `"identity"`: φ(x) = x (signed; only valid without the normaliser).
A custom map is any callable `(…, D) -> (…, F)`; it is applied to queries and keys alike.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


FEATURE_MAPS: dict[str, FeatureMap] = {"elu+1": elu_plus_one, "relu": F.relu,
                                       "identity": identity}
NON_NEGATIVE = frozenset({"elu+1", "relu"})


def resolve_feature_map(feature_map: str | FeatureMap) -> tuple[str, FeatureMap]:
    """Name and callable of `feature_map` (a key of FEATURE_MAPS or a callable)."""
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map ({feature_map!r}) must be one of "
                             f"{sorted(FEATURE_MAPS)} or a callable")
        return feature_map, FEATURE_MAPS[feature_map]
    if callable(feature_map):
        return getattr(feature_map, "__name__", type(feature_map).__name__), feature_map
    raise TypeError(f"feature_map must be a str or a callable, got "
                    f"{type(feature_map).__name__}")


def apply_feature_map(name: str, fn: FeatureMap, x: torch.Tensor, arg: str,
                      need_non_negative: bool) -> torch.Tensor:
    """φ(x) with its output checked: same leading shape, and ≥ 0 where the normaliser needs it."""
    out = fn(x)
    if not isinstance(out, torch.Tensor) or out.shape[:-1] != x.shape[:-1]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"feature_map ({name}) applied to {arg} {tuple(x.shape)} returned "
                         f"{got}; expected shape {tuple(x.shape[:-1])} + (F,)")
    if need_non_negative and name not in NON_NEGATIVE and out.numel():
        lo = float(out.min())
        if lo < 0:
            raise ValueError(f"feature_map ({name}) produced negative values on {arg} "
                             f"(min {lo:.3g}); normalize=True needs a non-negative feature map")
    return out
