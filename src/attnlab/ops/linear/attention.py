"""Linear attention (Katharopoulos et al. 2020): public entry points.

`linear_attention(q, k, v)` maps queries and keys through φ and computes
    causal:        o_i = φ(q_i) Σ_{j≤i} φ(k_j)ᵀ v_j / (φ(q_i) · Σ_{j≤i} φ(k_j) + eps)
    bidirectional: O = φ(Q) (φ(K)ᵀ V) / (φ(Q) φ(K)ᵀ 1 + eps)
in O(N·F·Dv) instead of softmax's O(N²·D). `normalize=False` drops the denominator.

Layouts follow conventions §1: q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); query
head h reads KV head h // (Hq // Hkv). Causal alignment is bottom-right (conventions §2): query i
sits at position i + Nk − Nq; rows that see no key read only the initial state (zero
output without one). Recurrent returns follow conventions §3: `initial_state` is a
`LinearState(S (B, Hkv, F, Dv), z (B, Hkv, F) or None)` holding keys before position 0,
and `output_final_state=True` returns `(out, LinearState)` after the last key.
Works in float32/float64 (and in fp16/bf16 wherever torch's matmul does).
"""
from __future__ import annotations

import torch

from ..._checks import check_positive_int, check_qkv, check_tensor
from .checks import check_finite_fast as check_finite
from .feature_maps import FeatureMap, apply_feature_map, resolve_feature_map
from .forms import LinearState, bidirectional, causal_chunked, causal_parallel, causal_recurrent

MODES = ("parallel", "chunked", "recurrent")


def _check_state(state, B: int, Hkv: int, Fd: int, Dv: int, normalize: bool, ref: torch.Tensor):
    if state is None:
        S = torch.zeros(B, Hkv, Fd, Dv, dtype=ref.dtype, device=ref.device)
        z = torch.zeros(B, Hkv, Fd, dtype=ref.dtype, device=ref.device) if normalize else None
        return S, z
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError(f"initial_state must be a LinearState(S, z) or an (S, z) tuple, got "
                        f"{type(state).__name__}")
    S, z = state
    check_tensor("initial_state.S", S, 4)
    if tuple(S.shape) != (B, Hkv, Fd, Dv):
        raise ValueError(f"initial_state.S has shape {tuple(S.shape)}; expected "
                         f"(B, Hkv, F, Dv) = {(B, Hkv, Fd, Dv)}")
    if normalize:
        if z is None:
            raise ValueError("initial_state.z is None but normalize=True needs the key sum z "
                             f"of shape {(B, Hkv, Fd)}")
        check_tensor("initial_state.z", z, 3)
        if tuple(z.shape) != (B, Hkv, Fd):
            raise ValueError(f"initial_state.z has shape {tuple(z.shape)}; expected "
                             f"(B, Hkv, F) = {(B, Hkv, Fd)}")
        z = z.to(ref.dtype)
    else:
        z = None
    return S.to(ref.dtype), z


def linear_attention_features(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, *,
                              causal: bool = True, normalize: bool = True,
                              mode: str = "chunked", chunk_size: int = 64, eps: float = 1e-6,
                              initial_state: LinearState | None = None,
                              output_final_state: bool = False):
    """Linear attention on feature-mapped queries qf (B, Hq, Nq, F) and keys kf (B, Hkv, Nk, F).

    Used by `linear_attention` and by Performer (FAVOR+), whose features are random.
    `mode`: "parallel" (masked quadratic), "chunked" (chunk_size tokens per block) or
    "recurrent" (token loop); for causal=False "parallel" forms φ(Q)φ(K)ᵀ and the others
    use φ(Q)(φ(K)ᵀV).
    """
    B, Hq, Hkv, Nq, Nk, Fd, Dv = check_qkv(qf, kf, v)
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {list(MODES)}")
    check_positive_int("chunk_size", chunk_size)
    if not eps >= 0:
        raise ValueError(f"eps ({eps}) must be >= 0")
    S0, z0 = _check_state(initial_state, B, Hkv, Fd, Dv, normalize, qf)
    G = Hq // Hkv
    qg = qf.reshape(B, Hkv, G, Nq, Fd)  # (B, Hkv, G, Nq, F): head h = kv·G + g
    if not causal:
        out, state = bidirectional(qg, kf, v, S0, z0, eps, quadratic=mode == "parallel")
    else:
        if Nk > Nq:  # bottom-right: the first Nk − Nq keys precede every query; fold them in
            pre = Nk - Nq
            S0 = S0 + kf[:, :, :pre].transpose(-1, -2) @ v[:, :, :pre]  # (B, Hkv, F, Dv)
            z0 = None if z0 is None else z0 + kf[:, :, :pre].sum(-2)
            kf, v = kf[:, :, pre:], v[:, :, pre:]
        elif Nq > Nk:  # the first Nq − Nk queries see no key: zero keys add nothing
            kf = torch.nn.functional.pad(kf, (0, 0, Nq - Nk, 0))
            v = torch.nn.functional.pad(v, (0, 0, Nq - Nk, 0))
        if mode == "parallel":
            out, state = causal_parallel(qg, kf, v, S0, z0, eps)
        elif mode == "chunked":
            out, state = causal_chunked(qg, kf, v, S0, z0, eps, chunk_size)
        else:
            out, state = causal_recurrent(qg, kf, v, S0, z0, eps)
    out = out.reshape(B, Hq, Nq, Dv)  # (B, Hq, Nq, Dv)
    return (out, state) if output_final_state else out


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     feature_map: str | FeatureMap = "elu+1", causal: bool = True,
                     normalize: bool = True, mode: str = "chunked", chunk_size: int = 64,
                     eps: float = 1e-6, initial_state: LinearState | None = None,
                     output_final_state: bool = False):
    """Linear attention with feature map φ; see the module docstring for the formulas.

    Cost: chunked O(N·C·(F + Dv) + N·F·Dv), recurrent O(N·F·Dv), parallel O(N²·(F + Dv)).
    Raises ValueError on non-finite inputs, a negative-valued φ with normalize=True,
    mismatched state shapes and chunk_size < 1.
    """
    check_qkv(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_finite(name, t)
    name, fn = resolve_feature_map(feature_map)
    qf = apply_feature_map(name, fn, q, "q", normalize)  # (B, Hq, Nq, F)
    kf = apply_feature_map(name, fn, k, "k", normalize)  # (B, Hkv, Nk, F)
    return linear_attention_features(qf, kf, v, causal=causal, normalize=normalize, mode=mode,
                                     chunk_size=chunk_size, eps=eps, initial_state=initial_state,
                                     output_final_state=output_final_state)
