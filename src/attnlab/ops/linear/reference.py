"""Naive float32 references for the linear family's linear attention: a plain loop per query.

Obviously correct by construction: for each query row, sum the kernel weights φ(q_i)·φ(k_j)
of the keys it may see (bottom-right causal alignment, conventions §2) plus the initial state.
O(Nq·Nk·(F + Dv)); use only on small inputs.
"""
from __future__ import annotations

import torch

from .feature_maps import FeatureMap, resolve_feature_map
from .forms import LinearState


def linear_attention_reference(q, k, v, *, feature_map: str | FeatureMap = "elu+1",
                               causal: bool = True, normalize: bool = True, eps: float = 1e-6,
                               initial_state: LinearState | None = None):
    """Returns (out (B, Hq, Nq, Dv), LinearState after all keys), computed in float32."""
    _, fn = resolve_feature_map(feature_map)
    q, k, v = q.float(), k.float(), v.float()
    qf, kf = fn(q), fn(k)  # (B, Hq, Nq, F), (B, Hkv, Nk, F)
    B, Hq, Nq, Fd = qf.shape
    Hkv, Nk, Dv = kf.shape[1], kf.shape[2], v.shape[-1]
    G = Hq // Hkv
    if initial_state is None:
        S0 = torch.zeros(B, Hkv, Fd, Dv)
        z0 = torch.zeros(B, Hkv, Fd)
    else:
        S0 = initial_state[0].float()
        z0 = initial_state[1].float() if initial_state[1] is not None else torch.zeros(B, Hkv, Fd)
    out = torch.zeros(B, Hq, Nq, Dv)
    for h in range(Hq):
        g = h // G  # conventions §1 grouping
        for i in range(Nq):
            last = i + Nk - Nq if causal else Nk - 1  # last visible key (bottom-right)
            num = torch.einsum("bf,bfd->bd", qf[:, h, i], S0[:, g])  # (B, Dv)
            den = (qf[:, h, i] * z0[:, g]).sum(-1)  # (B,)
            if last >= 0:
                w = (qf[:, h, i, None, :] * kf[:, g, :last + 1]).sum(-1)  # (B, last+1) weights
                num = num + torch.einsum("bj,bjd->bd", w, v[:, g, :last + 1])
                den = den + w.sum(-1)
            out[:, h, i] = num / (den[:, None] + eps) if normalize else num
    S = S0 + torch.einsum("bhnf,bhnd->bhfd", kf, v)
    z = z0 + kf.sum(2)
    return out, LinearState(S, z if normalize else None)
