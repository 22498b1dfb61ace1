"""Mamba-2 state-space duality (SSD; Dao & Gu 2024, "Transformers are SSMs"), three algorithms.

Per head, with scalar decay a_t = exp(Δ_t·A) (A ≤ 0 scalar-times-identity, Δ_t ≥ 0):
    h_t = a_t h_{t-1} + B_tᵀ (Δ_t x_t)        h_t: (S, P) state
    y_t = C_t h_t
i.e. causal linear attention (q = C, k = B, v = Δ·x, identity feature map, no normaliser)
with a data-dependent scalar decay. Unrolled: Y = (L ∘ C Bᵀ) X with the 1-semiseparable
mask L_ij = a_{j+1}···a_i for j ≤ i (0 above the diagonal) — the paper's eq. (16)/§3.
- quadratic: that N×N form, O(N²·(S + P)) (§4 "attention mode");
- chunked: quadratic inside chunks, states passed between chunks, O(N·C·(S + P) + N·S·P)
  (§6 "SSD algorithm": diagonal blocks, chunk states, state passing, off-diagonal blocks);
- recurrent: the token loop, O(N·S·P), the decode form.

Inputs here are already expanded and validated by `ssd.py`: q/k = C/B (B, G, 1, N, S) shared
by the R heads of a group, v = Δ·x (B, G, R, N, P), log_a = Δ·A (B, G, R, N) ≤ 0 and floored
at LOG_DECAY_FLOOR. State: (B, G, R, S, P).
"""
from __future__ import annotations

import torch

# A per-step decay below e^-80 ≈ 1.8e-35 is zero for any fp32 state of magnitude < 1e30;
# flooring keeps cumulative sums finite so that differences of them never form inf − inf.
LOG_DECAY_FLOOR = -80.0


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(…, T) -> (…, T, T) with [i, j] = a_{j+1} + … + a_i for j ≤ i, −inf above the diagonal.

    Built by a cumulative sum of a masked copy (as Mamba-2's `ssd_minimal.segsum`), so no
    large prefix sums are subtracted from each other.
    """
    T = a.shape[-1]
    x = a.unsqueeze(-1).expand(*a.shape, T)  # (…, T, T): [i, j] = a_i
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    x = x.masked_fill(~below, 0.0).cumsum(-2)  # [i, j] = Σ_{j<k≤i} a_k
    keep = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return x.masked_fill(~keep, float("-inf"))


def quadratic(q, k, v, log_a, h0):
    """Y = (L ∘ C Bᵀ) X + decayed readout of h0; returns (y, final state)."""
    L = torch.exp(segsum(log_a))  # (B, G, R, N, N)
    scores = q @ k.transpose(-1, -2)  # (B, G, 1, N, N)
    y = (L * scores) @ v  # (B, G, R, N, P)
    cum = log_a.cumsum(-1)  # (B, G, R, N)
    y = y + torch.exp(cum).unsqueeze(-1) * (q @ h0)  # initial state decays to step i
    to_end = torch.exp(cum[..., -1:] - cum)  # (B, G, R, N): a_{j+1}···a_N
    hN = torch.exp(cum[..., -1, None, None]) * h0 + k.transpose(-1, -2) @ (to_end.unsqueeze(-1) * v)
    return y, hN


# Within a chunk exp(cum_i − cum_j) = exp(cum_i)·exp(−cum_j) is used while every chunk-local
# cumulative log decay stays above this bound (exp(60) ≈ 1.1e26: no fp32 overflow).
FACTORIZE_MIN_CUM = -60.0


def chunked(q, k, v, log_a, h0, chunk_size: int, factorize: bool | None = None):
    """Mamba-2's chunked SSD: intra-chunk quadratic + a scan over chunk states.

    The R heads of a B/C group share C Bᵀ; only the decay differs per head. While the
    chunk-local cumulative log decays stay above FACTORIZE_MIN_CUM (`factorize=None`
    decides), the decay mask factorises, exp(cum_i − cum_j) = exp(cum_i)·exp(−cum_j), into
    row and column scalings, and the heads fold into the value columns: every matmul is one
    GEMM per chunk and group — (C, S)x(S, C), (C, C)x(C, R·P), (S, C)x(C, R·P),
    (C, S)x(S, R·P). Otherwise (decays strong enough to underflow) the exact per-head mask
    exp(cum_i − cum_j) is formed, as in Mamba-2's `ssd_minimal`.
    """
    Bt, G, R, N, P = v.shape
    S = q.shape[-1]
    C = min(chunk_size, N)
    pad = (-N) % C
    if pad:  # padded steps: zero keys/values and decay 1 (log 0) leave the state unchanged
        q = torch.nn.functional.pad(q, (0, 0, 0, pad))
        k = torch.nn.functional.pad(k, (0, 0, 0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
        log_a = torch.nn.functional.pad(log_a, (0, pad))
    nc = (N + pad) // C
    qc = q.reshape(Bt, G, nc, C, S)  # (B, G, nc, C, S): shared by the group's R heads
    kc = k.reshape(Bt, G, nc, C, S)
    vc = v.reshape(Bt, G, R, nc, C, P)  # (B, G, R, nc, C, P)
    cum = log_a.reshape(Bt, G, R, nc, C).cumsum(-1)  # (B, G, R, nc, C): chunk-local
    if factorize is None:
        factorize = bool(cum.min() > FACTORIZE_MIN_CUM) if cum.numel() else True
    scores = qc @ kc.transpose(-1, -2)  # (B, G, nc, C, C) = C Bᵀ per chunk
    future = torch.ones(C, C, dtype=torch.bool, device=v.device).triu(1)

    def fold(t):  # (B, G, R, nc, C, P) -> (B, G, nc, C, R·P)
        return t.permute(0, 1, 3, 4, 2, 5).reshape(Bt, G, nc, C, R * P)

    def unfold(t):  # (B, G, nc, C, R·P) -> (B, G, R, nc, C, P)
        return t.view(Bt, G, nc, C, R, P).permute(0, 1, 4, 2, 3, 5)

    if factorize:
        xs = fold(torch.exp(-cum).unsqueeze(-1) * vc)  # (B, G, nc, C, R·P): exp(−cum_j) x_j
        y_diag = scores.masked_fill_(future, 0.0) @ xs  # (B, G, nc, C, R·P)
        states = kc.transpose(-1, -2) @ xs  # (B, G, nc, S, R·P), still without exp(cum_end)
        states = states.view(Bt, G, nc, S, R, P) * torch.exp(cum[..., -1]).permute(
            0, 1, 3, 2)[:, :, :, None, :, None]  # (B, G, nc, S, R, P)
    else:
        Lm = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(future, float("-inf")).exp()
        y_diag = fold((Lm * scores.unsqueeze(2)) @ vc)  # (B, G, nc, C, R·P)
        to_end = torch.exp(cum[..., -1:] - cum)  # (B, G, R, nc, C)
        states = (kc.transpose(-1, -2) @ fold(to_end.unsqueeze(-1) * vc)).view(
            Bt, G, nc, S, R, P)
    # pass states between chunks (a scan over nc chunks)
    chunk_decay = torch.exp(cum[..., -1]).permute(0, 1, 3, 2)  # (B, G, nc, R)
    h = h0.permute(0, 1, 3, 2, 4)  # (B, G, S, R, P)
    starts = []
    for c in range(nc):
        starts.append(h)
        h = chunk_decay[:, :, c, None, :, None] * h + states[:, :, c]
    h_start = torch.stack(starts, dim=2).reshape(Bt, G, nc, S, R * P)  # (B, G, nc, S, R·P)
    if factorize:  # y_i = exp(cum_i)·(Σ_j≤i s_ij exp(−cum_j) x_j + C_i h_start)
        inner = torch.baddbmm(y_diag.flatten(0, 2), qc.flatten(0, 2), h_start.flatten(0, 2))
        y = torch.exp(cum).unsqueeze(-1) * unfold(inner.view(Bt, G, nc, C, R * P))
    else:
        y = unfold(y_diag) + torch.exp(cum).unsqueeze(-1) * unfold(qc @ h_start)
    return y.reshape(Bt, G, R, nc * C, P)[..., :N, :], h.permute(0, 1, 3, 2, 4)


def recurrent(q, k, v, log_a, h0):
    """h_t = a_t h_{t-1} + B_tᵀ v_t;  y_t = C_t h_t — one step per token."""
    h = h0
    a = torch.exp(log_a)  # (B, G, R, N)
    ys = []
    for t in range(v.shape[-2]):
        h = a[..., t, None, None] * h + k[..., t, :, None] * v[..., t, None, :]  # (B, G, R, S, P)
        ys.append(q[..., t, None, :] @ h)  # (B, G, R, 1, P)
    return torch.cat(ys, dim=-2), h
