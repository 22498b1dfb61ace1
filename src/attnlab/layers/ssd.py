"""Mamba-2 mixer (Dao & Gu 2024, §7 "Mamba-2 architecture"), built on `ops.ssd`.

x → in_proj → [z, xBC, Δ]; xBC → causal depthwise conv (width d_conv) → SiLU → split into
x (H heads of P channels), B and C (n_groups × d_state); y = SSD(x, softplus(Δ + Δ_bias),
A = −exp(A_log), B, C) + D·x; out = out_proj(RMSNorm(y · SiLU(z))).
Decode state per layer (RecurrentStateCache): "ssm" (H, d_state, P) and "conv", the last
d_conv − 1 conv inputs (d_conv − 1, conv_dim) — constant in sequence length.
Cost per forward: O(N·d_model·(2·d_inner + 2·G·S + H)) projections + chunked SSD
O(N·C·(S + P) + N·S·P) per head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_divisible, check_positive_int
from ..cache.base import KVCache
from ..cache.context import AttentionContext, as_context
from ..cache.layout import StateLayout
from ..cache.recurrent import RecurrentStateCache
from ..ops.ssd import ssd
from ..ops.ssd.forms import LOG_DECAY_FLOOR, segsum
from .attention import check_hidden
from .base import Mixer


@dataclass
class SSDSpec:
    """Config of one Mamba-2 layer; d_inner = expand·d_model is split into heads of head_dim."""

    d_state: int = 16
    head_dim: int = 16
    expand: int = 2
    n_groups: int = 1
    d_conv: int = 4
    chunk_size: int = 64

    def __post_init__(self) -> None:
        for name in ("d_state", "head_dim", "expand", "n_groups", "d_conv", "chunk_size"):
            check_positive_int(name, getattr(self, name))

    def build(self, d_model: int, layer_idx: int) -> SSDMixer:
        return SSDMixer(d_model, d_state=self.d_state, head_dim=self.head_dim,
                        expand=self.expand, n_groups=self.n_groups, d_conv=self.d_conv,
                        chunk_size=self.chunk_size, layer_idx=layer_idx)


class SSDMixer(Mixer):
    """Mamba-2 block; forward(x (B, N, d_model), cache=None) -> (B, N, d_model)."""

    def __init__(self, d_model: int, *, d_state: int = 16, head_dim: int = 16, expand: int = 2,
                 n_groups: int = 1, d_conv: int = 4, chunk_size: int = 64, layer_idx: int = 0):
        super().__init__()
        check_positive_int("d_model", d_model)
        for name, val in (("d_state", d_state), ("head_dim", head_dim), ("expand", expand),
                          ("n_groups", n_groups), ("d_conv", d_conv), ("chunk_size", chunk_size)):
            check_positive_int(name, val)
        d_inner = expand * d_model
        check_divisible("d_inner (expand·d_model)", d_inner, "head_dim", head_dim)
        n_heads = d_inner // head_dim
        check_divisible("n_heads", n_heads, "n_groups", n_groups)
        self.d_model, self.d_inner, self.n_heads, self.head_dim = d_model, d_inner, n_heads, head_dim
        self.d_state, self.n_groups, self.d_conv = d_state, n_groups, d_conv
        self.chunk_size = chunk_size
        self.layer_idx = check_positive_int("layer_idx", layer_idx, minimum=0)
        self.conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + n_heads, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim)
        # Mamba-2 init: A ∈ [1, 16] → A_log; Δ ∈ [1e-3, 1e-1] log-uniform through softplus⁻¹
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, n_heads)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), n_heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = nn.RMSNorm(d_inner, eps=1e-6)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _inputs(self, x: torch.Tensor, prev: torch.Tensor):
        """Gate z, the conv window `seq`, and the SSD inputs xs (B, H, N, P), B and C
        (B, G, N, S), Δ (B, H, N) from x (B, N, d_model) and the conv history `prev`."""
        B, N, _ = x.shape
        H, P, G, S = self.n_heads, self.head_dim, self.n_groups, self.d_state
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        seq = torch.cat([prev, xbc], dim=1)  # (B, K−1+N, conv_dim)
        xbc = F.silu(F.conv1d(seq.transpose(1, 2), self.conv.weight, self.conv.bias,
                              groups=self.conv_dim)).transpose(1, 2)  # (B, N, conv_dim)
        xs, Bm, Cm = xbc.split([self.d_inner, G * S, G * S], dim=-1)
        xs = xs.view(B, N, H, P).transpose(1, 2)  # (B, H, N, P)
        Bm = Bm.view(B, N, G, S).transpose(1, 2)  # (B, G, N, S)
        Cm = Cm.view(B, N, G, S).transpose(1, 2)
        dt = F.softplus(dt + self.dt_bias).transpose(1, 2)  # (B, H, N)
        return z, seq, xs, Bm, Cm, dt

    def forward(self, x: torch.Tensor, cache: KVCache | AttentionContext | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.in_proj.weight.dtype)
        B, N, _ = x.shape
        K = self.d_conv
        rc, idx = as_context(cache).layer(self.layer_idx)  # its state, by interface
        if rc is not None:
            st = rc.state(idx)
            prev, h0 = st["conv"], st["ssm"]  # (B, K−1, conv_dim), (B, H, S, P)
        else:
            prev, h0 = x.new_zeros(B, K - 1, self.conv_dim), None
        z, seq, xs, Bm, Cm, dt = self._inputs(x, prev)
        A = -torch.exp(self.A_log)  # (H,)
        y, hN = ssd(xs, dt, A, Bm, Cm, D=self.D, chunk_size=self.chunk_size,
                    initial_state=h0, output_final_state=True)
        if rc is not None:
            rc.commit(idx, {"ssm": hN, "conv": seq[:, seq.shape[1] - (K - 1):]}, N)
        y = y.transpose(1, 2).reshape(B, N, self.d_inner)  # (B, N, d_inner)
        return self.out_proj(self.norm(y * F.silu(z)))

    @torch.no_grad()
    def implied_attention(self, x: torch.Tensor) -> dict:
        """The layer as an attention matrix on its input x (B, N, d_model), zero conv
        history (Dao & Gu 2024, eq. 16): M = L ∘ C Bᵀ with L_ij = a_{j+1}···a_i and the step
        size Δ_j folded into column j, so the inner output is y = M X + D·X (`out`,
        (B, H, N, P)), which the layer then gates, normalises and projects. M is not
        row-stochastic. q = C, k = B per head, v = X."""
        B = x.shape[0]
        H = self.n_heads
        _, _, xs, Bm, Cm, dt = self._inputs(x, x.new_zeros(B, self.d_conv - 1, self.conv_dim))
        Bm, Cm = (t.repeat_interleave(H // self.n_groups, dim=1) for t in (Bm, Cm))  # (B,H,N,S)
        log_a = (dt * -torch.exp(self.A_log)[:, None]).clamp(min=LOG_DECAY_FLOOR)  # (B, H, N)
        L = torch.exp(segsum(log_a))  # (B, H, N, N), 0 above the diagonal
        M = L * (Cm @ Bm.transpose(-1, -2)) * dt.unsqueeze(-2)  # (B, H, N, N)
        y = M @ xs + self.D.view(1, H, 1, 1) * xs  # (B, H, N, P)
        return {"kind": "ssd", "pattern": M, "q": Cm, "k": Bm, "v": xs, "out": y}

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> RecurrentStateCache:
        return RecurrentStateCache(
            1, batch, {"ssm": (self.n_heads, self.d_state, self.head_dim),
                       "conv": (self.d_conv - 1, self.conv_dim)},
            capacity=capacity, dtype=dtype, device=device)

    def serving_layout(self) -> StateLayout:
        """Per-sequence state slots: the SSM state and the conv window."""
        return self.new_cache(1, 1).layout()

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 0
