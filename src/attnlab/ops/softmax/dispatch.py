"""`attention(q, k, v, ...)`: one entry point over every exact softmax backend.

Backends: "reference" (the dense oracle), "sdpa" (torch's fused scaled_dot_product_attention;
masks lower to a dense boolean mask unless the pattern is plain full/causal with Nq == Nk),
"flash" (tiled online softmax, `flash.py`), "block_sparse" (executor over the mask's block
layout, `block_sparse.py`), "decode" (split-KV, `decode.py`), and "auto" (`choose_backend`:
SDPA's fused kernel for plain full/causal with Nq == Nk, split-KV for decode shapes, the
block-sparse executor for any other `Mask`, SDPA for a dense bool tensor). Every backend
returns the same answer to conventions §5 tolerances (tests/test_dispatch.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..._checks import check_finite as check_finite_tensor
from ..._checks import check_qkv
from ...masks import Mask
from .block_sparse import block_sparse_attention
from .decode import decode_attention
from .flash import flash_attention
from .reference import attention_reference, dense_mask

BACKENDS: dict[str, object] = {}


def register_backend(name: str):
    """Register `fn(q, k, v, *, mask, scale, return_lse, q_pos, kv_pos)` under `name`."""

    def deco(fn):
        BACKENDS[name] = fn
        return fn

    return deco


def _is_plain_causal(mask) -> bool:
    return isinstance(mask, Mask) and mask.name == "causal"


@register_backend("reference")
def _reference(q, k, v, *, mask, scale, return_lse, q_pos, kv_pos):
    return attention_reference(q, k, v, mask=mask, scale=scale, return_lse=return_lse,
                               q_pos=q_pos, kv_pos=kv_pos)


@register_backend("sdpa")
def _sdpa(q, k, v, *, mask, scale, return_lse, q_pos, kv_pos):
    B, Hq, Hkv, Nq, Nk, D, _Dv = q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], \
        q.shape[3], v.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    default_pos = q_pos is None and kv_pos is None
    if return_lse:
        # torch's fused CPU flash kernel returns lse; it supports no mask or top-left causal
        if mask is None or (_is_plain_causal(mask) and Nq == Nk and default_pos):
            kk, vv = k, v
            if Hkv != Hq:
                kk, vv = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, kk, vv, 0.0, mask is not None, scale=scale)[:2]
            return out, lse.float()
        return attention_reference(q, k, v, mask=mask, scale=scale, return_lse=True,
                                   q_pos=q_pos, kv_pos=kv_pos)
    gqa = Hkv != Hq
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if _is_plain_causal(mask) and Nq == Nk and default_pos:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    m = dense_mask(mask, B, Hq, Nq, Nk, q_pos=q_pos, kv_pos=kv_pos)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=gqa)
    # conventions §2: a row with no visible key returns 0 (SDPA's math path may give NaN there)
    empty = ~m.any(-1, keepdim=True)  # (B|1, H|1, Nq, 1)
    if bool(empty.any()):
        out = out.masked_fill(empty, 0.0)
    return out


@register_backend("flash")
def _flash(q, k, v, *, mask, scale, return_lse, q_pos, kv_pos):
    return flash_attention(q, k, v, mask=mask, scale=scale, return_lse=return_lse,
                           q_pos=q_pos, kv_pos=kv_pos)


@register_backend("block_sparse")
def _block_sparse(q, k, v, *, mask, scale, return_lse, q_pos, kv_pos):
    return block_sparse_attention(q, k, v, mask=mask, scale=scale, return_lse=return_lse,
                                  q_pos=q_pos, kv_pos=kv_pos)


@register_backend("decode")
def _decode(q, k, v, *, mask, scale, return_lse, q_pos, kv_pos):
    return decode_attention(q, k, v, mask=mask, scale=scale, return_lse=return_lse,
                            q_pos=q_pos, kv_pos=kv_pos)


# decode shapes: at most this many queries against at least this many keys (a step of
# generation or a short speculative burst against a long cache)
DECODE_MAX_Q = 16
DECODE_MIN_K = 2048


def choose_backend(q, k, v, mask, q_pos=None, kv_pos=None) -> str:
    """The backend "auto" picks for these shapes and mask (rules in the module docstring)."""
    Nq, Nk = q.shape[2], k.shape[2]
    default_pos = q_pos is None and kv_pos is None
    if Nq <= DECODE_MAX_Q and Nk >= DECODE_MIN_K:
        return "decode"
    if mask is None:
        return "sdpa"
    if isinstance(mask, Mask):
        if _is_plain_causal(mask) and Nq == Nk and default_pos:
            return "sdpa"
        return "block_sparse"
    return "sdpa"  # a dense bool tensor: SDPA with attn_mask


def attention(q, k, v, *, mask=None, scale: float | None = None, score_mod=None, sink=None,
              return_lse: bool = False, q_pos=None, kv_pos=None, backend: str = "auto",
              check_finite: bool = False):
    """Exact softmax attention. q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv).

    `mask` is a `Mask` predicate or a bool tensor (True = attend); causal alignment is
    bottom-right. `score_mod(score, b, h, q_idx, kv_idx)` and a learned `sink` (Hq,) follow
    `attention_reference`. `check_finite=True` raises ValueError on NaN/inf in q, k or v.
    Returns `out` or `(out, lse)`.
    """
    check_qkv(q, k, v)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if check_finite:
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_finite_tensor(name, t)
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend ({backend!r}) must be 'auto' or one of {sorted(BACKENDS)}")
    if score_mod is not None or sink is not None:  # every backend's answer is the reference's
        return attention_reference(q, k, v, mask=mask, scale=scale, score_mod=score_mod,
                                   sink=sink, return_lse=return_lse, q_pos=q_pos,
                                   kv_pos=kv_pos)
    name = choose_backend(q, k, v, mask, q_pos, kv_pos) if backend == "auto" else backend
    if name not in BACKENDS:
        known = sorted(BACKENDS)
        raise ValueError(f"backend ({backend!r}) must be 'auto' or one of {known}")
    return BACKENDS[name](q, k, v, mask=mask, scale=scale, return_lse=return_lse,
                          q_pos=q_pos, kv_pos=kv_pos)
