"""RWKV-4 WKV (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", eq. 14-16).

Per channel c, with decay rate w_c ≥ 0 (per-step factor e^{−w_c}) and bonus u_c:
    wkv_t = (Σ_{i<t} e^{−(t−1−i)w + k_i} v_i + e^{u + k_t} v_t)
          / (Σ_{i<t} e^{−(t−1−i)w + k_i}       + e^{u + k_t})
The state is (a, b, p): numerator and denominator sums scaled by e^{−p}, where p is the
running maximum exponent — the numerically stable form of the official CUDA kernel, so
exponents never exceed 0 and |k| far beyond fp32's exp range stays finite.
- parallel ("GPT mode"): the N×N exponent table, max-shifted per row — O(N²·D);
- chunked: the same table inside chunks, the (a, b, p) state between them — O(N·C·D);
- recurrent ("RNN mode"): one update per token — O(N·D).
Layouts: k, v (B, H, N, D) (channels = H·D), w, u (H, D); state tensors (B, H, D).
fp16/bf16 inputs are computed in float32 and cast back (p starts at −1e38, beyond fp16).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..._checks import check_positive_int, check_tensor
from ..linear.checks import check_finite_fast as check_finite

MODES = ("chunked", "parallel", "recurrent")
# RWKV-4's official kernels start p at −1e38 rather than −inf so that p − q stays finite.
P_INIT = -1e38


class WKV4State(NamedTuple):
    """a = Σ e^{x_i − p} v_i, b = Σ e^{x_i − p}, p = running max exponent; each (B, H, D)."""

    a: torch.Tensor
    b: torch.Tensor
    p: torch.Tensor


def _block(w, u, k, v, st: WKV4State):
    """Outputs and end state for one block of T tokens starting from state `st`."""
    T = k.shape[2]
    tau = torch.arange(T, dtype=k.dtype, device=k.device)  # (T,)
    # exponent of key i as seen by query t (i < t): k_i − (t − 1 − i)·w
    lag = (tau[:, None] - 1 - tau[None, :])  # (T, T)
    E = k.unsqueeze(2) - lag[None, None, :, :, None] * w[None, :, None, None, :]  # (B,H,T,T,D)
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[None, None, :, :, None]
    E = torch.where(diag, (u.unsqueeze(1) + k).unsqueeze(2).expand_as(E), E)  # self: u + k_t
    future = torch.ones(T, T, dtype=torch.bool, device=k.device).triu(1)[None, None, :, :, None]
    E = E.masked_fill(future, float("-inf"))
    Ep = st.p.unsqueeze(2) - tau[None, None, :, None] * w[None, :, None, :]  # (B, H, T, D)
    m = torch.maximum(E.amax(3), Ep)  # (B, H, T, D): row max including the carried state
    P = torch.exp(E - m.unsqueeze(3))  # (B, H, T, T, D)
    sp = torch.exp(Ep - m)  # (B, H, T, D)
    num = (P * v.unsqueeze(2)).sum(3) + sp * st.a.unsqueeze(2)  # (B, H, T, D)
    den = P.sum(3) + sp * st.b.unsqueeze(2)
    out = num / den
    # end state: keys i decayed to the block end: k_i − (T − 1 − i)·w; old state: p − T·w
    Ek = k - (T - 1 - tau)[None, None, :, None] * w[None, :, None, :]  # (B, H, T, D)
    p_old = st.p - T * w  # (B, H, D)
    p_new = torch.maximum(Ek.amax(2), p_old)
    e_old = torch.exp(p_old - p_new)
    ek = torch.exp(Ek - p_new.unsqueeze(2))  # (B, H, T, D)
    return out, WKV4State(e_old * st.a + (ek * v).sum(2), e_old * st.b + ek.sum(2), p_new)


def _recurrent(w, u, k, v, st: WKV4State):
    a, b, p = st
    outs = []
    for t in range(k.shape[2]):
        kt, vt = k[:, :, t], v[:, :, t]  # (B, H, D)
        ww = u + kt
        q = torch.maximum(p, ww)
        e1, e2 = torch.exp(p - q), torch.exp(ww - q)
        outs.append((e1 * a + e2 * vt) / (e1 * b + e2))
        ww = p - w
        q = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - q), torch.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    return torch.stack(outs, 2), WKV4State(a, b, p)


def wkv4(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
         mode: str = "chunked", chunk_size: int = 32, initial_state: WKV4State | None = None,
         output_final_state: bool = False):
    """RWKV-4 WKV; returns wkv (B, H, N, D) or (wkv, WKV4State) with output_final_state.

    Raises ValueError for w < 0 (decay factor e^{−w} outside (0, 1]), non-finite inputs,
    mismatched shapes and chunk_size < 1.
    """
    for name, t, nd in (("w", w, 2), ("u", u, 2), ("k", k, 4), ("v", v, 4)):
        check_tensor(name, t, nd)
        check_finite(name, t)
    B, H, N, D = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v has shape {tuple(v.shape)}; expected the shape of k {tuple(k.shape)}")
    for name, t in (("w", w), ("u", u)):
        if tuple(t.shape) != (H, D):
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (H, D) = {(H, D)}")
    if bool((w < 0).any()):
        raise ValueError(f"w must be >= 0 (decay e^-w in (0, 1]); got min {float(w.min()):.3g}")
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {list(MODES)}")
    check_positive_int("chunk_size", chunk_size)
    out_dtype = k.dtype
    if out_dtype in (torch.float16, torch.bfloat16):  # exponent sums need float32 range
        w, u, k, v = (t.float() for t in (w, u, k, v))
        if initial_state is not None and isinstance(initial_state, tuple):
            initial_state = WKV4State(*(t.float() for t in initial_state))
    if initial_state is None:
        zeros = k.new_zeros(B, H, D)
        st = WKV4State(zeros, zeros, torch.full_like(zeros, P_INIT))
    else:
        if not isinstance(initial_state, tuple) or len(initial_state) != 3:
            raise TypeError("initial_state must be a WKV4State(a, b, p)")
        for name, t in zip("abp", initial_state):
            check_tensor(f"initial_state.{name}", t, 3)
            if tuple(t.shape) != (B, H, D):
                raise ValueError(f"initial_state.{name} has shape {tuple(t.shape)}; expected "
                                 f"(B, H, D) = {(B, H, D)}")
        st = WKV4State(*initial_state)
    if mode == "recurrent":
        out, st = _recurrent(w, u, k, v, st)
    else:
        C = N if mode == "parallel" else chunk_size
        outs = []
        for s in range(0, N, C):
            o, st = _block(w, u, k[:, :, s:s + C], v[:, :, s:s + C], st)
            outs.append(o)
        out = torch.cat(outs, 2)  # (B, H, N, D)
    out = out.to(out_dtype)
    return (out, WKV4State(*(t.to(out_dtype) for t in st))) if output_final_state else out
