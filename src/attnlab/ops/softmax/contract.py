"""The contract every softmax backend shares: validation once at the boundary, the
degenerate shapes, learned sinks and the non-finite rules (docs/conventions.md §2, §3, §6).

`validate(...)` checks every argument once and returns a `Call`; backends receive a
`Call` and trust it. `finish(call, out, lse)` applies what is the same for every backend:
the sink (one extra partial `(o = 0, lse = s_h)` merged once, conventions §3) and rule (b)
of the non-finite policy (a row whose lse is NaN or +inf has out NaN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..._checks import check_finite, check_positions, check_qkv, check_scale
from ...masks import Mask
from .merge import merge


@dataclass
class Call:
    """Validated inputs of one attention call. q (B, Hq, Nq, D), k (B, Hkv, Nk, D),
    v (B, Hkv, Nk, Dv); `mask` None, a `Mask` or a bool tensor (B|1, Hq|1, Nq, Nk) on q's
    device; `scale` a float; positions None or int64 CPU tensors; `sink` None or (Hq,)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: Mask | torch.Tensor | None
    scale: float
    score_mod: object
    sink: torch.Tensor | None
    q_pos: torch.Tensor | None
    kv_pos: torch.Tensor | None
    return_lse: bool

    def __post_init__(self):
        self.B, self.Hq, self.Nq, self.D = self.q.shape
        self.Hkv, self.Nk, self.Dv = self.k.shape[1], self.k.shape[2], self.v.shape[3]
        self.G = self.Hq // self.Hkv

    @property
    def grad(self) -> bool:
        """Whether autograd must see this call (a leaf needs a gradient)."""
        ts = (self.q, self.k, self.v) + ((self.sink,) if self.sink is not None else ())
        return torch.is_grad_enabled() and any(t.requires_grad for t in ts)

    @property
    def default_positions(self) -> bool:
        return self.q_pos is None and self.kv_pos is None

    @property
    def mask_kind(self) -> str:
        """"none", "causal" (the plain causal pattern, which torch's fused kernel computes:
        Nq == Nk and default positions), "mask" (any other Mask) or "tensor"."""
        if self.mask is None:
            return "none"
        if isinstance(self.mask, torch.Tensor):
            return "tensor"
        if self.mask.is_causal and self.Nq == self.Nk and self.default_positions:
            return "causal"
        return "mask"

    @property
    def stat_dtype(self) -> torch.dtype:
        """Softmax statistics: float64 for float64 inputs, float32 otherwise (§1)."""
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32


def check_mask(mask, B: int, Hq: int, Nq: int, Nk: int, device) -> Mask | torch.Tensor | None:
    """A Mask, None, or a bool tensor of 2 to 4 dims ending in (Nq, Nk), broadcastable to
    (B, Hq, Nq, Nk), on q's device; tensors come back 4-D."""
    if mask is None or isinstance(mask, Mask):
        return mask
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a Mask or a bool tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask tensor must be bool (True = attend), got {mask.dtype}")
    if not 2 <= mask.ndim <= 4 or tuple(mask.shape[-2:]) != (Nq, Nk):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be 2 to 4 dims ending with "
                         f"(Nq, Nk) = ({Nq}, {Nk})")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but q is on {device}; expected one device")
    m = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if m.shape[0] not in (1, B) or m.shape[1] not in (1, Hq):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to "
                         f"(B, Hq, Nq, Nk) = {(B, Hq, Nq, Nk)}")
    return m


def check_sink(sink, Hq: int, q: torch.Tensor) -> torch.Tensor | None:
    if sink is None:
        return None
    if not isinstance(sink, torch.Tensor):
        sink = torch.as_tensor(sink, dtype=torch.float32)
    if not (sink.dtype.is_floating_point and sink.shape == (Hq,)):
        raise ValueError(f"sink must be a floating tensor of shape (Hq,) = ({Hq},), got "
                         f"{tuple(sink.shape)} {sink.dtype}")
    if sink.device != q.device:
        raise ValueError(f"sink is on {sink.device} but q is on {q.device}; expected one device")
    return sink


def validate(q, k, v, *, mask=None, scale=None, score_mod=None, sink=None, return_lse=False,
             q_pos=None, kv_pos=None, check_finite_values: bool = False) -> Call:
    """Every check of conventions §6, once. Raises TypeError/ValueError naming the argument."""
    B, Hq, _Hkv, Nq, Nk, D, _Dv = check_qkv(q, k, v)
    scale = check_scale(scale)
    if score_mod is not None and not callable(score_mod):
        raise TypeError(f"score_mod must be callable, got {type(score_mod).__name__}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    sink = check_sink(sink, Hq, q)
    if check_finite_values:
        for name, t in (("q", q), ("k", k), ("v", v), ("sink", sink)):
            if t is not None:
                check_finite(name, t.detach())
    return Call(q, k, v, check_mask(mask, B, Hq, Nq, Nk, q.device),
                1.0 / math.sqrt(D) if scale is None else scale, score_mod, sink,
                check_positions("q_pos", q_pos, Nq), check_positions("kv_pos", kv_pos, Nk),
                return_lse)


def poison(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Rule (b): a row whose lse is NaN or +inf (a visible NaN or +inf score) has out NaN."""
    bad = torch.isnan(lse) | (lse == math.inf)
    if bool(bad.any()):
        out = out.masked_fill(bad.unsqueeze(-1), math.nan)
    return out


def finish(call: Call, out: torch.Tensor, lse: torch.Tensor | None):
    """Apply the sink, rule (b) and the return convention to a backend's (out, lse).
    `out` may come in the compute dtype (float32 for float16/bfloat16): the sink is merged
    in the statistics dtype and the result is rounded to q's dtype once, here."""
    if lse is not None:
        if call.sink is not None:
            s = call.sink.to(lse.dtype).view(1, call.Hq, 1).expand_as(lse)
            o = out.to(lse.dtype)
            out, lse = merge(o, lse, torch.zeros_like(o), s)
        out = poison(out, lse)
    out = out.to(call.q.dtype)
    return (out, lse) if call.return_lse else out


def nonfinite(*ts: torch.Tensor) -> bool:
    """Whether any tensor holds a NaN/inf: one cheap pass each. float16/bfloat16: one
    `aminmax` (min and max propagate NaN and show ±inf; no float32 copy, no overflow — a
    float32 sum would first convert the whole tensor, ~19% of a bf16 window call); other
    dtypes: a sum (NaN/inf anywhere makes it non-finite; a finite overflow only costs an
    exact fallback). O(numel) reads."""
    for t in ts:
        if not t.numel():
            continue
        if t.dtype in (torch.float16, torch.bfloat16):
            lo, hi = torch.aminmax(t.detach())
            if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
                return True
        elif not bool(torch.isfinite(t.detach().sum(
                dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))):
            return True
    return False
