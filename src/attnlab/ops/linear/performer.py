"""Performer FAVOR+ (Choromanski et al. 2020, "Rethinking Attention with Performers").

The softmax kernel exp(q·k/√d) is estimated with positive random features
    φ(x) = exp(ωᵢᵀx̂ − |x̂|²/2)/√m,  x̂ = x · d^{-1/4},  ωᵢ ~ N(0, I_d),  i = 1..m
(docs/sources.md "Performer"; the paper's Lemma 1, positive features), so that
E[φ(q)·φ(k)] = exp(q̂·k̂) = exp(q·k/√d) and attention becomes normalised linear attention
with φ — O(N·m·Dv) instead of O(N²·D). Orthogonal random features (ORF, §2.4) draw the
ωᵢ in blocks of d mutually orthogonal directions with Gaussian-like lengths; they lower
the variance and stay unbiased **only with the QR sign fix** Q ← Q·sign(diag R) — plain
Householder QR fixes the signs of R's diagonal, which biases Q away from the Haar measure.

Stabilisation: a query's features are scaled by exp(−max_i exponent) of its own row,
which cancels exactly in the normalised ratio; key exponents ωᵀk̂ − |k̂|²/2 ≤ |ω|²/2 are
bounded whatever k is, so keys need no shift (and the decode state stays consistent).
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_positive_int, check_qkv, check_tensor
from .attention import linear_attention_features
from .checks import check_finite_fast as check_finite
from .forms import LinearState


def draw_random_features(m: int, d: int, *, orthogonal: bool = True, sign_fix: bool = True,
                         generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """ω (m, d): iid N(0, I) rows, or ORF blocks (each row's length drawn as |N(0, I_d)|).

    `sign_fix=False` reproduces the biased QR-without-correction draw (for demonstration).
    """
    check_positive_int("m", m)
    check_positive_int("d", d)
    if not orthogonal:
        return torch.randn(m, d, generator=generator, dtype=dtype).to(device)
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(g)  # Householder QR: R's diagonal signs are fixed by LAPACK
        if sign_fix:
            Q = Q * torch.sign(torch.diagonal(R)).unsqueeze(0)  # Haar-distributed Q
        blocks.append(Q.T)  # rows = orthonormal directions
    W = torch.cat(blocks, 0)[:m]  # (m, d)
    lengths = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1)  # chi_d
    return (W * lengths.unsqueeze(1)).to(dtype=dtype, device=device)


def favor_features(x: torch.Tensor, omega: torch.Tensor, *, is_query: bool,
                   stabilize: bool = True) -> torch.Tensor:
    """φ(x) (…, m) for x (…, d); queries are row-shifted when `stabilize` (see module doc)."""
    d = x.shape[-1]
    xs = x * d ** -0.25  # (…, d): splits the 1/√d temperature between q and k
    expo = xs @ omega.T - 0.5 * xs.square().sum(-1, keepdim=True)  # (…, m)
    if is_query and stabilize:
        expo = expo - expo.amax(-1, keepdim=True).detach()
    return torch.exp(expo) / math.sqrt(omega.shape[0])


def favor_kernel_estimate(x: torch.Tensor, y: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Unshifted estimate φ(x)·φ(y) of exp(x·y/√d) for x, y (…, d) (used by the tests)."""
    fx = favor_features(x, omega, is_query=False)
    fy = favor_features(y, omega, is_query=False)
    return (fx * fy).sum(-1)


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor,
                        *, causal: bool = True, mode: str = "chunked", chunk_size: int = 64,
                        initial_state: LinearState | None = None,
                        output_final_state: bool = False, eps: float = 1e-6):
    """FAVOR+ approximation of softmax attention with scale 1/√D (conventions §1 layouts).

    Causal uses the chunked linear-attention path (or "parallel"/"recurrent"); the state is
    a LinearState over the m features. Error vs exact softmax falls like 1/√m.
    """
    D = check_qkv(q, k, v)[5]
    check_tensor("omega", omega, 2)
    if omega.shape[1] != D:
        raise ValueError(f"omega has shape {tuple(omega.shape)}; expected (m, head_dim={D})")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_finite(name, t)
    omega = omega.to(q.dtype)
    qf = favor_features(q, omega, is_query=True)  # (B, Hq, Nq, m)
    kf = favor_features(k, omega, is_query=False)  # (B, Hkv, Nk, m)
    return linear_attention_features(qf, kf, v, causal=causal, normalize=True, mode=mode,
                                     chunk_size=chunk_size, eps=eps, initial_state=initial_state,
                                     output_final_state=output_final_state)
