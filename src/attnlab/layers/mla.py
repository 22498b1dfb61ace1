"""Multi-head Latent Attention (DeepSeek-V2 report, §2.1 and App. C).

Keys and values are compressed jointly into a latent `c_KV = W_DKV h` (kv_lora_rank, 512
in DeepSeek-V2) and up-projected per head: `k_C = W_UK c_KV`, `v_C = W_UV c_KV`. RoPE
sits on a separate, decoupled part: per-head `q_R = RoPE(W_QR c_Q)` and ONE key
`k_R = RoPE(W_KR h)` shared by all heads; `q = [q_C; q_R]`, `k = [k_C; k_R]`, scale
`1/sqrt(qk_nope + qk_rope)`. The cache holds only `c_KV` and `k_R`:
(kv_lora_rank + qk_rope_head_dim) elements per token per layer (576 for DeepSeek-V2).

Module layout as released (DeepSeek-V2 code, HF `DeepseekV2Attention`), so checkpoints map
one-to-one: `q_proj` (no query compression, V2-Lite) or `q_a_proj` → `q_a_layernorm` →
`q_b_proj`; `kv_a_proj_with_mqa` gives `[c_KV; k_R]` in one matmul; `kv_a_layernorm` on
`c_KV`; `kv_b_proj` gives `[k_C; v_C]` per head; RoPE in the interleaved convention
(DeepSeek-V3 checkpoints may use rotate-half: `rope_interleaved=False`), optionally
scaled (`rope_scaling`, YaRN for DeepSeek: with `mscale_all_dim` the softmax scale is
multiplied by `(0.1·mscale_all_dim·ln(factor) + 1)²`, as the released code does), and
`attention_bias` on q_a_proj / kv_a_proj_with_mqa / o_proj. Hugging Face-style
`position_ids` and `attention_mask` as in `layers.positions`.

Two paths, selected by `absorb`:
- naive: up-project the cached latent to per-head K/V (B, H, L, ·), then attend;
  O(L·r·H·(d_nope + d_v)) extra work and memory per step.
- absorbed: fold W_UK into the query (`q_lat = q_C W_UK`, (B, H, N, r)) and attend over
  the latent directly, as MQA with one shared "head" `[c_KV; k_R]` (the H heads become
  H·N query rows of one matmul); apply W_UV to the attended latent afterwards. No
  per-head K/V for the history is ever formed; a decode step reads the L·(r + d_R)
  cached elements once: O(H·L·(2r + d_R)) work. This is DeepSeek's `attn_impl="absorb"`.
  (Timings of the two paths are benchmark results, not properties of the code: see
  benchmarks/results/.)
- "auto": per call, the path with fewer multiply-adds (`mla_path_flops`): naive for long
  prefills (up-projecting L latents once costs less than scoring N·L pairs over 2r + d_R
  dims instead of d_nope + d_R), absorbed for decode steps, as serving stacks do. For
  DeepSeek-V2 sizes at L = 4096 the crossover is at 164 new tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_positive_int
from ..cache.base import KVCache
from ..cache.context import AttentionContext, as_context
from ..cache.latent import LatentKVCache
from ..cache.layout import PagedLayout
from ..masks import causal
from ..ops.rope import apply_rope
from ..ops.rope_scaling import RopeScaling, yarn_mscale
from ..ops.softmax import attention
from .attention import check_backend, check_hidden, check_rope_scaling
from .base import Mixer
from .hooks import HookPoint
from .positions import check_position_ids, with_padding

ABSORB_MODES = (False, True, "auto")


def mla_path_flops(n_heads: int, n_new: int, n_kv: int, kv_lora_rank: int, qk_nope: int,
                   qk_rope: int, v_dim: int) -> tuple[int, int]:
    """Multiply-adds of (naive, absorbed) attention for n_new queries over n_kv cached tokens
    (projections shared by both paths left out)."""
    H, N, L, r = n_heads, n_new, n_kv, kv_lora_rank
    naive = L * r * H * (qk_nope + v_dim) + H * N * L * (qk_nope + qk_rope + v_dim)
    absorbed = H * N * qk_nope * r + H * N * L * (2 * r + qk_rope) + H * N * r * v_dim
    return naive, absorbed


@dataclass
class MLASpec:
    """Config of one MLA layer. DeepSeek-V2: n_heads 128, q_lora_rank 1536, kv_lora_rank
    512, qk_nope 128, qk_rope 64, v 128; V2-Lite: 16 heads, q_lora_rank None (docs/sources.md).

    `scale=None` means `1/sqrt(qk_nope + qk_rope)`, times `yarn_mscale(factor,
    mscale_all_dim)²` when `rope_scaling` carries `mscale_all_dim` (DeepSeek's rule);
    `softmax_scale` is the resolved value.
    """

    n_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    rope_base: float = 10000.0
    absorb: bool | str = False  # False (naive), True (absorbed) or "auto"
    norm_eps: float = 1e-6
    backend: str = "auto"
    rope_scaling: RopeScaling | None = None
    rope_interleaved: bool = True
    attention_bias: bool = False
    scale: float | None = None
    qk_head_dim: int = 0  # derived: qk_nope_head_dim + qk_rope_head_dim
    softmax_scale: float = 0.0  # derived: the scale attention uses

    def __post_init__(self) -> None:
        for name in ("n_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                     "v_head_dim"):
            check_positive_int(name, getattr(self, name))
        if self.q_lora_rank is not None:
            check_positive_int("q_lora_rank", self.q_lora_rank)
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps ({self.norm_eps}) must be > 0")
        check_absorb(self.absorb)
        check_backend(self.backend)
        check_rope_scaling(self.rope_scaling)
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale ({self.scale}) must be > 0 or None")
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.softmax_scale = self.scale if self.scale is not None else mla_scale(
            self.qk_head_dim, self.rope_scaling)

    def build(self, d_model: int, layer_idx: int) -> MultiLatentAttention:
        return MultiLatentAttention(d_model, self, layer_idx=layer_idx)


def mla_scale(qk_head_dim: int, rope_scaling: RopeScaling | None) -> float:
    """DeepSeek-V2 §2.1.3: 1/sqrt(d_h + d_R); with scaled RoPE carrying `mscale_all_dim`,
    times `yarn_mscale(factor, mscale_all_dim)²` (DeepSeek's released YaRN rule)."""
    scale = 1.0 / math.sqrt(qk_head_dim)
    if rope_scaling is not None and rope_scaling.kind != "default" and rope_scaling.mscale_all_dim:
        scale *= yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim) ** 2
    return scale


def check_absorb(absorb) -> bool | str:
    if not any(absorb is m or (isinstance(m, str) and absorb == m) for m in ABSORB_MODES):
        raise ValueError(f"absorb ({absorb!r}) must be False, True or 'auto'")
    return absorb


class MultiLatentAttention(Mixer):
    """DeepSeek-V2 MLA. forward(x (B, N, d_model), cache=None) -> (B, N, d_model).

    With a cache (a `LatentKVCache`), the new tokens' `c_KV` and rotated `k_R` are
    appended, and attention reads the whole cached latent. `absorb` picks the path (see
    the module docstring); both give the same answer to conventions §5 tolerance.
    """

    takes_positions = True  # forward accepts attention_mask / position_ids

    def __init__(self, d_model: int, spec: MLASpec, *, layer_idx: int = 0,
                 absorb: bool | str | None = None):
        super().__init__()
        check_positive_int("d_model", d_model)
        if not isinstance(spec, MLASpec):
            raise TypeError(f"spec must be an MLASpec, got {type(spec).__name__}")
        check_positive_int("layer_idx", layer_idx, minimum=0)
        self.d_model, self.spec, self.layer_idx = d_model, spec, layer_idx
        self.absorb = spec.absorb if absorb is None else check_absorb(absorb)
        self.backend = spec.backend
        H, s = spec.n_heads, spec
        self.scale = s.softmax_scale  # DeepSeek-V2 §2.1.3: 1/sqrt(d_h + d_R) (see mla_scale)
        self.mask = causal()
        bias = s.attention_bias
        if s.q_lora_rank is None:
            self.q_proj = nn.Linear(d_model, H * s.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d_model, s.q_lora_rank, bias=bias)
            self.q_a_layernorm = nn.RMSNorm(s.q_lora_rank, eps=s.norm_eps)
            self.q_b_proj = nn.Linear(s.q_lora_rank, H * s.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d_model, s.kv_lora_rank + s.qk_rope_head_dim,
                                            bias=bias)
        self.kv_a_layernorm = nn.RMSNorm(s.kv_lora_rank, eps=s.norm_eps)
        self.kv_b_proj = nn.Linear(s.kv_lora_rank, H * (s.qk_nope_head_dim + s.v_head_dim),
                                   bias=False)
        self.o_proj = nn.Linear(H * s.v_head_dim, d_model, bias=bias)
        self.hook_q = HookPoint("q")  # (B, H, N, qk_nope + qk_rope), RoPE part rotated
        self.hook_k = HookPoint("k")  # naive path only: (B, H, L, qk_nope + qk_rope)
        self.hook_v = HookPoint("v")  # naive path only: (B, H, L, v_head_dim)
        self.hook_latent = HookPoint("latent")  # (B, L, kv_lora_rank): what is cached
        self.hook_head_out = HookPoint("head_out")  # (B, H, N, v_head_dim)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"d_model={self.d_model}, n_heads={s.n_heads}, q_lora_rank={s.q_lora_rank}, "
                f"kv_lora_rank={s.kv_lora_rank}, qk_nope={s.qk_nope_head_dim}, "
                f"qk_rope={s.qk_rope_head_dim}, v={s.v_head_dim}, absorb={self.absorb}")

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        s = self.spec
        if s.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))  # c_Q then W_UQ/W_QR
        return q.view(B, N, s.n_heads, s.qk_head_dim).transpose(1, 2)  # (B, H, N, dq)

    def uses_absorbed(self, n_new: int, n_kv: int) -> bool:
        """Whether a call with n_new queries over n_kv keys takes the absorbed path."""
        if self.absorb != "auto":
            return bool(self.absorb)
        s = self.spec
        naive, absorbed = mla_path_flops(s.n_heads, n_new, n_kv, s.kv_lora_rank,
                                         s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim)
        return absorbed < naive

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (H, qk_nope, r) and W_UV (H, v, r), views of kv_b_proj.weight."""
        s = self.spec
        w = self.kv_b_proj.weight.view(s.n_heads, s.qk_nope_head_dim + s.v_head_dim,
                                       s.kv_lora_rank)  # (H, nope + v, r)
        return w[:, : s.qk_nope_head_dim], w[:, s.qk_nope_head_dim:]

    def forward(self, x: torch.Tensor, cache: KVCache | AttentionContext | None = None, *,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        check_hidden("x", x, self.d_model, self.o_proj.weight.dtype, self.o_proj.weight.device)
        ctx = as_context(cache, attention_mask=attention_mask, position_ids=position_ids)
        cache, li = ctx.layer(self.layer_idx)  # this layer's cache, by interface
        s = self.spec
        B, N, _ = x.shape
        H, r, dn, dr = s.n_heads, s.kv_lora_rank, s.qk_nope_head_dim, s.qk_rope_head_dim
        positions = ctx.new_positions(self.layer_idx, B, N, x.device)  # (N,) or (B, N)
        rope_pos = positions if ctx.position_ids is None else check_position_ids(
            ctx.position_ids, B, N, x.device)  # (N,) or (B, N)
        n_total = N if cache is None else cache.seq_len(li) + N
        mask = with_padding(self.mask, ctx.attention_mask, B, n_total, x.device)
        rot = {"base": s.rope_base, "interleaved": s.rope_interleaved, "scaling": s.rope_scaling}

        q = self._queries(x)  # (B, H, N, dn + dr)
        q_pe = apply_rope(q[..., dn:], rope_pos, **rot)
        q = self.hook_q(torch.cat([q[..., :dn], q_pe], dim=-1))  # (B, H, N, dn + dr)
        q_nope, q_pe = q[..., :dn], q[..., dn:]

        ckv = self.kv_a_proj_with_mqa(x)  # (B, N, r + dr) = [c_KV; k_R]
        c_kv = self.kv_a_layernorm(ckv[..., :r])  # (B, N, r)
        k_pe = apply_rope(ckv[..., r:].unsqueeze(1), rope_pos,
                          **rot).squeeze(1)  # (B, N, dr), rotated before caching
        if cache is not None and cache.in_place_attention:
            return self._attend_in_place(cache, li, q_nope, q_pe, c_kv, k_pe, positions)
        if cache is None and mask is self.mask and ctx.positions is None:
            q_pos = kv_pos = None
        elif cache is None:
            q_pos = kv_pos = positions
        else:
            c_kv, k_pe = cache.update(li, c_kv, k_pe)  # (B, L, r), (B, L, dr)
            q_pos, kv_pos = positions, cache.kv_positions(li)
        c_kv = self.hook_latent(c_kv)
        L = c_kv.shape[1]

        if self.uses_absorbed(N, L):
            w_uk, w_uv = self._up_weights()
            q_lat = torch.einsum("bhnd,hdr->bhnr", q_nope, w_uk)  # (B, H, N, r)
            # one shared latent "KV head": fold the H heads into the query rows so the
            # scores are one (H·N) x L matmul per sequence (as FlashMLA does)
            q_abs = torch.cat([q_lat, q_pe], dim=-1).reshape(B, 1, H * N, r + dr)  # row h·N + n
            k_abs = torch.cat([c_kv, k_pe], dim=-1).unsqueeze(1)  # (B, 1, L, r + dr)
            q_rows = (positions if q_pos is None else q_pos).repeat(H)  # (H·N,)
            kv_rows = torch.arange(L, device=x.device) if kv_pos is None else kv_pos  # (L,)
            o_lat = attention(q_abs, k_abs, c_kv.unsqueeze(1), mask=mask,
                              scale=self.scale, backend=self.backend,
                              q_pos=q_rows, kv_pos=kv_rows)  # (B, 1, H·N, r)
            o_lat = o_lat.view(B, H, N, r)  # (B, H, N, r)
            out = torch.einsum("bhnr,hvr->bhnv", o_lat, w_uv)  # (B, H, N, v)
        else:
            kv = self.kv_b_proj(c_kv).view(B, L, H, dn + s.v_head_dim).transpose(1, 2)
            k_nope, v = kv[..., :dn], kv[..., dn:]  # (B, H, L, dn), (B, H, L, v)
            k = torch.cat([k_nope, k_pe.unsqueeze(1).expand(B, H, L, dr)], dim=-1)
            k, v = self.hook_k(k), self.hook_v(v)  # (B, H, L, dn + dr), (B, H, L, v)
            out = attention(q, k, v, mask=mask, scale=self.scale, backend=self.backend,
                            q_pos=q_pos, kv_pos=kv_pos)  # (B, H, N, v)
        out = self.hook_head_out(out)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, H * s.v_head_dim))

    def _attend_in_place(self, cache: KVCache, li: int, q_nope, q_pe, c_kv, k_pe,
                         positions) -> torch.Tensor:
        """Absorbed attention through a cache that reads its storage in place (the
        engine's paged latent view): the latent "KV head" `[c_KV; k_R]` (r + d_R per
        token) is both key and value, as MQA with one head; the first r output columns
        are the attended latent (the k_R columns are dropped), then W_UV."""
        s = self.spec
        B, H, N, _ = q_nope.shape
        r = s.kv_lora_rank
        w_uk, w_uv = self._up_weights()
        q_lat = torch.einsum("bhnd,hdr->bhnr", q_nope, w_uk)  # (B, H, N, r)
        q_abs = torch.cat([q_lat, q_pe], dim=-1)  # (B, H, N, r + dr)
        kv = torch.cat([c_kv, k_pe], dim=-1).unsqueeze(1)  # (B, 1, N, r + dr)
        self.hook_latent(c_kv)

        def attend(q_, k_, v_, *, q_pos, kv_pos, extra_mask=None):
            m = self.mask if extra_mask is None else self.mask & extra_mask
            return attention(q_, k_, v_, mask=m, scale=self.scale, backend=self.backend,
                             q_pos=q_pos, kv_pos=kv_pos)

        o = cache.attend(li, q_abs, kv, kv, attention=attend, q_pos=positions,
                         scale=self.scale)  # (B, H, N, r + dr)
        out = torch.einsum("bhnr,hvr->bhnv", o[..., :r], w_uv)  # (B, H, N, v)
        out = self.hook_head_out(out)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, H * s.v_head_dim))

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> KVCache:
        """A one-layer LatentKVCache: c_KV (kv_lora_rank) + k_R (qk_rope_head_dim) per token."""
        return LatentKVCache(1, batch, self.spec.kv_lora_rank, self.spec.qk_rope_head_dim,
                             capacity, dtype=dtype, device=device)

    def serving_layout(self) -> PagedLayout:
        """A paged latent pool: `[c_KV; k_R]` per token (576 elements for DeepSeek-V2),
        one "KV head" that is both key and value (absorbed reads)."""
        d = self.spec.kv_lora_rank + self.spec.qk_rope_head_dim
        return PagedLayout(1, d, d, None, values_are_keys=True)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """(kv_lora_rank + qk_rope_head_dim) · bytes (DeepSeek-V2 §2.1.4; 576 elements)."""
        check_positive_int("dtype_bytes", dtype_bytes)
        return (self.spec.kv_lora_rank + self.spec.qk_rope_head_dim) * dtype_bytes
