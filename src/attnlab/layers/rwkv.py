"""RWKV mixer: time-mix (WKV) followed by channel-mix, as one RWKV block (Peng et al. 2023;
RWKV-6: Peng et al. 2024, "Eagle and Finch").

mixer(x) = t + ChannelMix(LN(x + t)) with t = TimeMix(x), so that the model's residual
`x + mixer(x)` reproduces RWKV's two residual steps. Token shift mixes each token with the
previous one (zero before the first): x_mix = x·μ + shift(x)·(1 − μ).
- version 4: r = σ(W_r x_r), k = W_k x_k, v = W_v x_v; out = W_o(r ⊙ WKV4(w = e^{decay}, u, k, v)).
- version 6: adds a gate g and a data-dependent decay log w_t = −exp(w₀ + tanh(x_w A) B) (a
  low-rank "LoRA" as in RWKV-6); WKV6 matrix state per head, GroupNorm per head, W_o(gn ⊙ SiLU(g)).
  (RWKV-6's data-dependent token-shift interpolation is replaced by static μ here.)
Channel-mix: W_v relu(W_k x_k)² gated by σ(W_r x_r).
Decode state per layer: the two token-shift inputs (d_model each) and the WKV state
(v4: a, b, p of (H, D); v6: S of (H, D, D)) — constant in sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_divisible, check_positive_int
from ..cache.base import KVCache
from ..cache.context import AttentionContext, as_context
from ..cache.layout import StateLayout
from ..cache.recurrent import RecurrentStateCache
from ..ops.rwkv import WKV4State, wkv4, wkv4_matrix, wkv6, wkv6_matrix
from ..ops.rwkv.wkv4 import P_INIT
from .attention import check_hidden
from .base import Mixer


@dataclass
class RWKVSpec:
    """Config of one RWKV block; head_dim = d_model // n_heads."""

    n_heads: int
    version: int = 6
    ffn_mult: float = 3.5
    decay_lora: int = 16
    chunk_size: int = 16

    def __post_init__(self) -> None:
        check_positive_int("n_heads", self.n_heads)
        if self.version not in (4, 6):
            raise ValueError(f"version ({self.version!r}) must be 4 or 6")
        if not self.ffn_mult > 0:
            raise ValueError(f"ffn_mult ({self.ffn_mult}) must be > 0")
        check_positive_int("decay_lora", self.decay_lora)
        check_positive_int("chunk_size", self.chunk_size)

    def build(self, d_model: int, layer_idx: int) -> RWKVMixer:
        return RWKVMixer(d_model, self.n_heads, version=self.version, ffn_mult=self.ffn_mult,
                         decay_lora=self.decay_lora, chunk_size=self.chunk_size,
                         layer_idx=layer_idx)


def _shift(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """(B, N, d): the previous token of every position (prev, or zeros, before the first)."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if prev is None else prev.unsqueeze(1)
    return torch.cat([first, x[:, :-1]], dim=1)


class RWKVMixer(Mixer):
    """RWKV-4 or RWKV-6 block (time-mix + channel-mix); forward(x (B, N, d_model), cache)."""

    def __init__(self, d_model: int, n_heads: int, *, version: int = 6, ffn_mult: float = 3.5,
                 decay_lora: int = 16, chunk_size: int = 16, layer_idx: int = 0):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        check_divisible("d_model", d_model, "n_heads", n_heads)
        if version not in (4, 6):
            raise ValueError(f"version ({version!r}) must be 4 or 6")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.version, self.chunk_size = version, check_positive_int("chunk_size", chunk_size)
        self.layer_idx = check_positive_int("layer_idx", layer_idx, minimum=0)
        H, D = n_heads, self.head_dim
        names = ("r", "k", "v") if version == 4 else ("r", "k", "v", "g", "w")
        ramp = torch.arange(d_model) / d_model  # RWKV's per-channel init ramp
        self.mu = nn.ParameterDict({n: nn.Parameter(ramp ** (0.5 + i / 4))
                                    for i, n in enumerate(names)})
        self.W = nn.ModuleDict({n: nn.Linear(d_model, d_model, bias=False)
                                for n in names if n != "w"})
        self.W_o = nn.Linear(d_model, d_model, bias=False)
        # decay: RWKV-4 w = exp(time_decay) per channel; RWKV-6 log w = −exp(w0 + lora)
        self.time_decay = nn.Parameter(torch.linspace(-5.0, 1.0, d_model).view(H, D))
        self.time_first = nn.Parameter(torch.full((H, D), 0.5))  # bonus u
        if version == 6:
            self.decay_A = nn.Parameter(torch.zeros(d_model, decay_lora))
            self.decay_B = nn.Parameter(torch.randn(decay_lora, d_model) * 0.01)
            self.ln_x = nn.GroupNorm(H, d_model, eps=1e-5 * H)
        self.ln_cm = nn.LayerNorm(d_model)
        d_ff = max(1, int(ffn_mult * d_model))
        self.cm_mu_k = nn.Parameter(ramp.clone())
        self.cm_mu_r = nn.Parameter(ramp.clone())
        self.cm_key = nn.Linear(d_model, d_ff, bias=False)
        self.cm_value = nn.Linear(d_ff, d_model, bias=False)
        self.cm_recept = nn.Linear(d_model, d_model, bias=False)

    # --- pieces --------------------------------------------------------------------------
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)

    def _projections(self, x, prev):
        """Token-shifted r, k, v (B, H, N, D), the mixed inputs, and log w (B, H, N, D) for
        version 6 (None for version 4, whose decay is the constant e^{time_decay})."""
        xx = _shift(x, prev)  # (B, N, d)
        mixed = {n: x * mu + xx * (1 - mu) for n, mu in self.mu.items()}
        r, k, v = (self._heads(self.W[n](mixed[n])) for n in ("r", "k", "v"))
        log_w = None
        if self.version == 6:
            lora = torch.tanh(mixed["w"] @ self.decay_A) @ self.decay_B  # (B, N, d)
            log_w = self._heads(-torch.exp(self.time_decay.view(self.d_model) + lora))  # ≤ 0
        return r, k, v, log_w, mixed

    def _time_mix(self, x, prev, wkv_state):
        r, k, v, log_w, mixed = self._projections(x, prev)
        B, N, d = x.shape
        if self.version == 4:
            out, st = wkv4(torch.exp(self.time_decay), self.time_first, k, v,
                           chunk_size=self.chunk_size, initial_state=wkv_state,
                           output_final_state=True)
            y = torch.sigmoid(r) * out  # (B, H, N, D)
            y = y.transpose(1, 2).reshape(B, N, d)
            return self.W_o(y), st
        out, S = wkv6(r, k, v, log_w, self.time_first, chunk_size=self.chunk_size,
                      initial_state=wkv_state, output_final_state=True)
        y = self.ln_x(out.transpose(1, 2).reshape(B * N, d)).view(B, N, d)  # per-head norm
        return self.W_o(y * F.silu(self.W["g"](mixed["g"]))), S

    @torch.no_grad()
    def implied_attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The WKV as an attention matrix on the mixer input x (B, N, d_model), no cache.

        Version 6: one unnormalised (B, H, N, N) matrix per head, WKV = A @ v. Version 4:
        WKV is normalised per channel, so each of the d_model channels is its own head:
        (B, d_model, N, N) rows summing to 1, WKV[..., c] = P_c @ v[..., c]. Returns
        pattern, q (= r), k, v in matching head layouts and the WKV output `out`
        (B, heads, N, Dv), which the mixer then gates and projects.
        """
        r, k, v, log_w, _ = self._projections(x, None)
        B, H, N, D = k.shape
        if self.version == 6:
            A = wkv6_matrix(r, k, log_w, self.time_first)  # (B, H, N, N)
            return {"kind": "rwkv", "pattern": A, "q": r, "k": k, "v": v, "out": A @ v.float()}
        P = wkv4_matrix(torch.exp(self.time_decay), self.time_first, k)  # (B, H, D, N, N)
        P = P.reshape(B, H * D, N, N)  # (B, C, N, N): channel c = h·D + d

        def per_channel(t):
            return t.permute(0, 1, 3, 2).reshape(B, H * D, N, 1)  # (B, C, N, 1)

        out = P @ per_channel(v.float())  # (B, C, N, 1)
        return {"kind": "rwkv", "pattern": P, "q": per_channel(r), "k": per_channel(k),
                "v": per_channel(v), "out": out}

    def _channel_mix(self, h, prev):
        hh = _shift(h, prev)
        k = torch.relu(self.cm_key(h * self.cm_mu_k + hh * (1 - self.cm_mu_k))).square()
        return torch.sigmoid(self.cm_recept(h * self.cm_mu_r + hh * (1 - self.cm_mu_r))) * \
            self.cm_value(k)

    # --- Mixer -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: KVCache | AttentionContext | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.W_o.weight.dtype)
        prev_tm = prev_cm = wkv_state = None
        rc, idx = as_context(cache).layer(self.layer_idx)  # its state, by interface
        if rc is not None:
            st = rc.state(idx)
            prev_tm, prev_cm = st["shift_tm"], st["shift_cm"]
            wkv_state = WKV4State(st["a"], st["b"], st["p"]) if self.version == 4 else st["S"]
        t, new_wkv = self._time_mix(x, prev_tm, wkv_state)
        h = self.ln_cm(x + t)  # (B, N, d)
        out = t + self._channel_mix(h, prev_cm)
        if rc is not None:
            new = {"shift_tm": x[:, -1], "shift_cm": h[:, -1]}
            if self.version == 4:
                new.update(a=new_wkv.a, b=new_wkv.b, p=new_wkv.p)
            else:
                new["S"] = new_wkv
            rc.commit(idx, new, x.shape[1])
        return out

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> RecurrentStateCache:
        H, D, d = self.n_heads, self.head_dim, self.d_model
        shapes = {"shift_tm": (d,), "shift_cm": (d,)}
        fill = {}
        if self.version == 4:
            shapes.update(a=(H, D), b=(H, D), p=(H, D))
            fill["p"] = P_INIT
        else:
            shapes["S"] = (H, D, D)
        return RecurrentStateCache(1, batch, shapes, capacity=capacity, dtype=dtype,
                                   device=device, fill=fill)

    def serving_layout(self) -> StateLayout:
        """Per-sequence state slots: token shifts and the WKV state."""
        return self.new_cache(1, 1).layout()

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 0
