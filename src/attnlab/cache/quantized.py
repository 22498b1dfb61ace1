"""Quantized KV caches: int8 per-token symmetric, and KIVI-style 4/2-bit.

- `Int8KVCache`: every token's K and V row (per head) is stored as int8 codes with one
  float32 scale `s = max|x| / 127` over the row's finite entries (symmetric, per token):
  `x ≈ code · s`. Bytes per token and head: D + 4 per tensor instead of 4·D (fp32) or 2·D
  (fp16). This is the int8 layout of docs/conventions.md §4 that int8 decode kernels read.
- `KIVICache` (Liu et al. 2024, "KIVI"): asymmetric b-bit (b = 4 or 2) quantization with
  keys **per channel** (min/max over a group of `group_size` tokens, for each channel) and
  values **per token** (min/max over groups of `group_size` channels), plus a
  full-precision residual window of the most recent tokens (docs/sources.md: group 32,
  residual 128). The oldest `group_size` fp tokens are quantized as one group whenever the
  fp window holds ≥ `residual + group_size` tokens, so it always keeps ≥ `residual`. Codes
  are packed 8/b per byte; scale and zero point are float32.

Representable range: scales and zero points are float32 and computed in float32, so any
row (int8) or group (KIVI) whose largest finite magnitude lies between about 1e-36 and
float32's maximum (3.4e38) keeps its relative resolution — `max|x| / 127` per element for
int8, `(max − min) / (2^b − 1)` for KIVI; rows below ~1e-36 lose precision in subnormal
scales, and an all-zero row is stored exactly. Non-finite entries stay where they came
from: statistics use the finite entries only, and each NaN/±inf is kept verbatim in a
sparse side table (`NonFinite`) that dequantisation puts back (int8 marks them with the
otherwise unused code −128), so one NaN never spreads over its row or group.

Inputs must be floating tensors of the cache's dtype on the cache's device (clear
`TypeError` / `ValueError` otherwise). `update` returns dequantized K/V of the whole
history (B, Hkv, L, D): without a fused dequant-attention kernel the read costs O(L·D)
dequantization per step — the memory, not the read traffic, is what these caches save.
Error vs an fp32 cache: see `attention_error` and tests/test_quantized_cache.py.
"""
from __future__ import annotations

import torch

from .._checks import check_divisible, check_positive_int
from .base import CountedCache, KVCache
from .contiguous import _check_dtype_device, _same_device

NONFINITE_CODE = -128  # int8 code of an entry kept verbatim in the side table

# --- pure quantization functions ---------------------------------------------------------


def quantize_symmetric_int8(x: torch.Tensor):
    """Per-row (last dim) symmetric int8: returns (codes int8, scale float32 (..., 1)).

    The scale uses the row's finite entries; non-finite entries get `NONFINITE_CODE`."""
    xf = x.float()
    finite = torch.isfinite(xf)
    amax = torch.where(finite, xf.abs(), 0.0).amax(-1, keepdim=True)  # (..., 1)
    scale = amax / 127.0
    s = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(torch.where(finite, xf, 0.0) / s).clamp_(-127, 127).to(torch.int8)
    codes[~finite] = NONFINITE_CODE
    return codes, scale


def dequantize_symmetric_int8(codes: torch.Tensor, scale: torch.Tensor, dtype=torch.float32):
    """code · scale; `NONFINITE_CODE` entries come back NaN (the cache restores their
    exact value from its side table)."""
    out = codes.float() * scale.float()
    return out.masked_fill(codes == NONFINITE_CODE, float("nan")).to(dtype)


def quantize_asymmetric(x: torch.Tensor, bits: int, dim: int):
    """Min/max asymmetric b-bit codes (uint8, unpacked) with float32 scale and zero along
    `dim`, over the finite entries (non-finite entries get code 0; keep them aside)."""
    xf = x.float()
    finite = torch.isfinite(xf)
    lo = torch.where(finite, xf, float("inf")).amin(dim, keepdim=True)
    hi = torch.where(finite, xf, float("-inf")).amax(dim, keepdim=True)
    none = ~torch.isfinite(lo)  # no finite entry in the group
    lo, hi = lo.masked_fill(none, 0.0), hi.masked_fill(none, 0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    s = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((torch.where(finite, xf, lo) - lo) / s).clamp_(0, 2 ** bits - 1)
    return codes.to(torch.uint8), scale, lo


def dequantize_asymmetric(codes, scale, zero, dtype=torch.float32):
    return (codes.float() * scale.float() + zero.float()).to(dtype)


class NonFinite:
    """Sparse side table of the non-finite entries of one quantized tensor, per layer:
    their (b, h, t, d) indices and exact values. O(#non-finite) memory."""

    def __init__(self, n_layers: int):
        self._idx: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self._val: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]

    def record(self, layer: int, x: torch.Tensor, t0: int) -> None:
        """Keep the non-finite entries of x (B, H, T, D), whose token 0 is position t0."""
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = bad.nonzero()  # (n, 4): b, h, t, d
            self._val[layer].append(x[bad].float())
            idx[:, 2] += t0
            self._idx[layer].append(idx)

    def restore(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        """Put the recorded values back into out (B, H, L, D) (positions < L only)."""
        if not self._idx[layer]:
            return out
        idx, val = torch.cat(self._idx[layer]), torch.cat(self._val[layer])
        keep = idx[:, 2] < out.shape[2]
        idx, val = idx[keep], val[keep]
        out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = val.to(out.dtype)
        return out

    def reset(self) -> None:
        for lst in (*self._idx, *self._val):
            lst.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for lst in (*self._idx, *self._val)
                   for t in lst)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., D) uint8 codes < 2**bits -> (..., D·bits/8) bytes, low bits first."""
    per = 8 // bits
    c = codes.view(*codes.shape[:-1], codes.shape[-1] // per, per)  # (..., D/per, per)
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    return (c << shifts).sum(-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    c = (packed.unsqueeze(-1) >> shifts) & (2 ** bits - 1)  # (..., D/per, per)
    return c.reshape(*packed.shape[:-1], packed.shape[-1] * per)


# --- caches ------------------------------------------------------------------------------

class _QuantBase(CountedCache):
    def __init__(self, n_layers, batch, n_kv_heads, head_dim, capacity, dtype, device):
        self._init_counts(n_layers, batch, capacity)
        self.n_kv_heads = check_positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.dtype, self.device = _check_dtype_device(dtype, device)
        if not dtype.is_floating_point:
            raise TypeError(f"dtype ({dtype}) must be a floating dtype")
        self._k_bad, self._v_bad = NonFinite(n_layers), NonFinite(n_layers)

    def _check_kv(self, layer_idx, k, v) -> int:
        self._check_layer(layer_idx)
        want = (self.batch, self.n_kv_heads, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or \
                    (x.shape[0], x.shape[1], x.shape[3]) != want:
                raise ValueError(f"{name} must have shape (B={want[0]}, Hkv={want[1]}, T, "
                                 f"D={want[2]}), got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
        for name, x in (("k", k), ("v", v)):
            if not x.is_floating_point():
                raise TypeError(f"{name} has dtype {x.dtype}; expected a floating tensor of "
                                f"the cache's dtype {self.dtype}")
            if x.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {x.dtype}; expected the cache's dtype "
                                f"{self.dtype}")
            if not _same_device(x.device, self.device):
                raise ValueError(f"{name} is on {x.device}; expected the cache's device "
                                 f"{self.device}")
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"k has {k.shape[2]} new tokens but v has {v.shape[2]}")
        T = k.shape[2]
        self._check_room(layer_idx, T)  # before any write
        return T

    def _bufs(self):
        return [t for t in vars(self).values() if isinstance(t, torch.Tensor)]

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated buffers plus the side table of non-finite entries."""
        return sum(t.numel() * t.element_size() for t in self._bufs()) + \
            self._k_bad.nbytes + self._v_bad.nbytes


class Int8KVCache(_QuantBase):
    """Per-token symmetric int8 K and V with float32 scales; capacity preallocated."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int,
                 capacity: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__(n_layers, batch, n_kv_heads, head_dim, capacity, dtype, device)
        shape = (n_layers, batch, n_kv_heads, capacity)
        self.k_codes = torch.zeros((*shape, head_dim), dtype=torch.int8, device=self.device)
        self.v_codes = torch.zeros((*shape, head_dim), dtype=torch.int8, device=self.device)
        self.k_scale = torch.zeros((*shape, 1), dtype=torch.float32, device=self.device)
        self.v_scale = torch.zeros((*shape, 1), dtype=torch.float32, device=self.device)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        T = self._check_kv(layer_idx, k, v)
        a, b = self._lens[layer_idx], self._lens[layer_idx] + T
        for codes, scale, bad, x in ((self.k_codes, self.k_scale, self._k_bad, k),
                                     (self.v_codes, self.v_scale, self._v_bad, v)):
            c, s = quantize_symmetric_int8(x)  # (B, Hkv, T, D), (B, Hkv, T, 1)
            codes[layer_idx, :, :, a:b] = c
            scale[layer_idx, :, :, a:b] = s
            bad.record(layer_idx, x, a)
        self._lens[layer_idx] = b
        return tuple(bad.restore(layer_idx, dequantize_symmetric_int8(
            codes[layer_idx, :, :, :b], scale[layer_idx, :, :, :b], self.dtype))
            for codes, scale, bad in ((self.k_codes, self.k_scale, self._k_bad),
                                      (self.v_codes, self.v_scale, self._v_bad)))

    def reset(self) -> None:
        self._lens = [0] * self.n_layers
        self._k_bad.reset()
        self._v_bad.reset()

    @property
    def used_nbytes(self) -> int:
        return self.nbytes * sum(self._lens) // (self.n_layers * self._capacity)


class KIVICache(_QuantBase):
    """KIVI-style b-bit cache (b in {2, 4}): keys per-channel over token groups, values
    per-token over channel groups, fp residual window of the `residual` latest tokens."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int,
                 capacity: int, *, bits: int = 2, group_size: int = 32, residual: int = 128,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__(n_layers, batch, n_kv_heads, head_dim, capacity, dtype, device)
        if bits not in (2, 4):
            raise ValueError(f"bits ({bits}) must be 2 or 4")
        check_positive_int("group_size", group_size)
        check_divisible("head_dim", head_dim, "group_size", group_size)
        check_positive_int("residual", residual, minimum=0)
        self.bits, self.group_size, self.residual = bits, group_size, residual
        G, per = group_size, 8 // bits
        n_groups = capacity // G  # token groups that can ever be quantized
        base = (n_layers, batch, n_kv_heads)
        dev = self.device
        # keys: per-channel stats per token group; codes packed along the channel axis
        self.k_packed = torch.zeros((*base, n_groups * G, head_dim // per), dtype=torch.uint8,
                                    device=dev)
        self.k_scale = torch.zeros((*base, n_groups, head_dim), dtype=torch.float32, device=dev)
        self.k_zero = torch.zeros_like(self.k_scale)
        # values: per-token stats per channel group
        self.v_packed = torch.zeros_like(self.k_packed)
        self.v_scale = torch.zeros((*base, n_groups * G, head_dim // G), dtype=torch.float32,
                                   device=dev)
        self.v_zero = torch.zeros_like(self.v_scale)
        win = min(capacity, residual + 2 * G)  # fp window: residual ≤ r < residual + 2G
        self.k_res = torch.zeros((*base, win, head_dim), dtype=dtype, device=dev)
        self.v_res = torch.zeros_like(self.k_res)
        self._nq = [0] * n_layers  # quantized tokens per layer (a multiple of G)

    def _flush(self, li: int) -> None:
        """Quantize the oldest G tokens of the fp window."""
        G, D, a = self.group_size, self.head_dim, self._nq[li]
        k, v = self.k_res[li, :, :, :G], self.v_res[li, :, :, :G]  # (B, Hkv, G, D)
        kc, ks, kz = quantize_asymmetric(k, self.bits, dim=-2)  # per channel: (B,Hkv,1,D)
        self.k_packed[li, :, :, a:a + G] = pack(kc, self.bits)
        self.k_scale[li, :, :, a // G] = ks[:, :, 0]
        self.k_zero[li, :, :, a // G] = kz[:, :, 0]
        vg = v.reshape(*v.shape[:3], D // G, G)  # (B, Hkv, G tok, D/G, G ch)
        vc, vs, vz = quantize_asymmetric(vg, self.bits, dim=-1)  # per token and channel group
        self.v_packed[li, :, :, a:a + G] = pack(vc.reshape(v.shape), self.bits)
        self.v_scale[li, :, :, a:a + G] = vs[..., 0]
        self.v_zero[li, :, :, a:a + G] = vz[..., 0]
        self._k_bad.record(li, k, a)  # non-finite entries kept verbatim
        self._v_bad.record(li, v, a)
        n_res = self._lens[li] - a
        self.k_res[li, :, :, : n_res - G] = self.k_res[li, :, :, G:n_res].clone()
        self.v_res[li, :, :, : n_res - G] = self.v_res[li, :, :, G:n_res].clone()
        self._nq[li] = a + G

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        T = self._check_kv(layer_idx, k, v)
        li, G = layer_idx, self.group_size
        for t in range(0, T, G):  # append in slices so the fp window never overflows
            x_k, x_v = k[:, :, t:t + G], v[:, :, t:t + G]
            n = x_k.shape[2]
            while self._lens[li] - self._nq[li] >= self.residual + G:
                self._flush(li)  # keeps ≥ residual fp tokens; leaves room for n ≤ G
            r = self._lens[li] - self._nq[li]
            self.k_res[li, :, :, r:r + n] = x_k.to(self.dtype)
            self.v_res[li, :, :, r:r + n] = x_v.to(self.dtype)
            self._lens[li] += n
        return self._read(li)

    def _read(self, li: int):
        G, nq, D = self.group_size, self._nq[li], self.head_dim
        n_res = self._lens[li] - nq
        kc = unpack(self.k_packed[li, :, :, :nq], self.bits)  # (B, Hkv, nq, D)
        kc = kc.view(*kc.shape[:2], nq // G, G, D)  # (B, Hkv, groups, G, D)
        kq = dequantize_asymmetric(kc, self.k_scale[li, :, :, :nq // G, None],
                                   self.k_zero[li, :, :, :nq // G, None], self.dtype)
        vc = unpack(self.v_packed[li, :, :, :nq], self.bits)
        vc = vc.view(*vc.shape[:3], D // G, G)  # (B, Hkv, nq, D/G, G)
        vq = dequantize_asymmetric(vc, self.v_scale[li, :, :, :nq, :, None],
                                   self.v_zero[li, :, :, :nq, :, None], self.dtype)
        kq = self._k_bad.restore(li, kq.reshape(*kq.shape[:2], nq, D))  # (B, Hkv, nq, D)
        vq = self._v_bad.restore(li, vq.reshape(*vq.shape[:2], nq, D))
        k = torch.cat([kq, self.k_res[li, :, :, :n_res]], 2)
        v = torch.cat([vq, self.v_res[li, :, :, :n_res]], 2)
        return k, v  # (B, Hkv, L, D)

    def reset(self) -> None:
        self._lens = [0] * self.n_layers
        self._nq = [0] * self.n_layers
        self._k_bad.reset()
        self._v_bad.reset()


def attention_error(cache: KVCache, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor,
                    chunk: int = 64) -> float:
    """Relative attention-output error ‖o_cache − o_fp32‖ / ‖o_fp32‖ after streaming k, v
    (B, Hkv, L, D) into layer 0 of `cache` in chunks and attending with q (B, Hq, Nq, D)
    (the last Nq tokens' queries) over what the cache returns."""
    from ..masks import causal
    from ..ops.softmax import attention_reference

    for t in range(0, k.shape[2], chunk):
        kk, vv = cache.update(0, k[:, :, t:t + chunk], v[:, :, t:t + chunk])
    exact = attention_reference(q, k.float(), v.float(), mask=causal())
    got = attention_reference(q, kk.float(), vv.float(), mask=causal())
    return float((got - exact).norm() / exact.norm())
