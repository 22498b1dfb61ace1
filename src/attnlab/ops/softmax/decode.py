"""Split-KV decoding (Flash-Decoding, Dao, Haziza, Massa, Sizov 2023).

A few query tokens against a long cache: the cache is cut into chunks, each chunk gives a
partial `(o_c, lse_c)` independently, and the partials are combined exactly with
`merge_many` (conventions §3):  lse = log Σ_c exp(lse_c),  o = Σ_c exp(lse_c − lse) · o_c.

GQA-aware: the G = Hq/Hkv query heads that share a KV head are folded into the rows of one
matmul, q (B, Hq, Nq, D) -> (B, Hkv, G·Nq, D), so every key/value byte is read once per
step, not G times. Decoding is memory-bound: per step it reads 2·Nk·Hkv·D elements and
does ≈ 4·Nk·Hq·Nq·D FLOPs, an arithmetic intensity of about G·Nq/2 FLOP per element.

Cost: O(B·Hq·Nq·Nk·D) time, O(B·Hkv·G·Nq·chunk) extra memory (one chunk's scores).
Chunks whose keys are all masked are skipped unread. Two chunk kernels give the same
answer: torch's fused CPU flash kernel (inference; ≈1.2× faster here) and a plain-torch
matmul/softmax form, differentiable (decode shapes are inference; the tests check the
gradients anyway).
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_positive_int, check_qkv
from . import decode_numba, kv_decode
from .flash import check_result, compute_dtype
from .merge import merge_many
from .reference import dense_mask

DEFAULT_CHUNK = 8192  # measured: 4K–16K chunks stream alike on this CPU (kernels.md)


def _chunk_partial(qg, kc, vc, scale, keep):
    """One chunk: (o_c, lse_c) over its keys; keep (…, G·Nq, c) bool or None."""
    s = torch.matmul(qg, kc.transpose(-1, -2)).mul_(scale)  # (B, Hkv, G·Nq, c)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    nonempty = l != 0  # NaN stays NaN (and is reported), never 'empty'
    l_safe = torch.where(nonempty, l, torch.ones_like(l))
    o = torch.matmul(p, vc) / l_safe  # (B, Hkv, G·Nq, Dv); 0 on empty rows (p = 0)
    lse = torch.where(nonempty, m + torch.log(l_safe), float("-inf")).squeeze(-1)
    return o, lse.float()


_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
IMPLS = ("auto", "torch", "fused", "matmul", "numba")


def _chunk_partial_fused(qg, kc, vc, scale, keep):
    """One chunk through torch's fused CPU flash kernel (returns lse); same contract as
    `_chunk_partial`. Measured 1.2× the matmul form on the 128K decode (kernels_notes.md)."""
    # the aten kernel silently misreads K/V whose last dim is strided (measured: wrong
    # output for k.transpose(-1, -2).contiguous().transpose(-1, -2)); give it unit stride
    kc = kc if kc.stride(-1) == 1 else kc.contiguous()
    vc = vc if vc.stride(-1) == 1 else vc.contiguous()
    add = None
    if keep is not None:
        add = torch.zeros(keep.shape, dtype=qg.dtype).masked_fill_(~keep, float("-inf"))
    o, lse = _FLASH(qg, kc, vc, attn_mask=add, scale=scale)
    lse = lse.float()
    if keep is not None:
        empty = ~keep.any(-1)  # the kernel reports lse = 0 on rows with no key
        if bool(empty.any()):
            e = empty.expand_as(lse)
            lse = lse.masked_fill(e, float("-inf"))
            o = o.masked_fill(e.unsqueeze(-1), 0.0)
    return o, lse


def decode_attention(q, k, v, *, mask=None, scale: float | None = None,
                     chunk: int = DEFAULT_CHUNK, impl: str = "auto", return_lse: bool = False,
                     q_pos=None, kv_pos=None):
    """Exact split-KV attention for decode shapes (few queries, long cache).

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); `chunk` keys per split (the
    number of splits is ceil(Nk / chunk)). `mask`: `Mask` or bool tensor, evaluated densely
    on (Nq, Nk) — cheap because Nq is small. `impl`: "matmul" (two matmuls and a softmax
    per chunk, the readable form), "fused" (torch's CPU flash kernel per chunk; Dv == D),
    "torch" (fused when Dv == D and no gradient is needed, else matmul), "numba" (one fused
    numba kernel, `decode_numba.py`: float32 contiguous CPU inputs, no gradient, the `fast`
    extra installed), "auto" (numba where it applies, else as "torch"). float16/bfloat16
    inputs are computed in float32 chunk by chunk. Returns `out` or `(out, lse)`; rows with no visible key give 0
    and lse = -inf. Raises ValueError if a NaN/inf input reaches the output.
    """
    B, Hq, Hkv, Nq, Nk, D, Dv = check_qkv(q, k, v)
    check_positive_int("chunk", chunk)
    if impl not in IMPLS:
        raise ValueError(f"impl ({impl!r}) must be one of {IMPLS}")
    if impl == "fused" and Dv != D:
        raise ValueError(f"impl 'fused' needs v head_dim ({Dv}) == q head_dim ({D})")
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if impl == "fused" and grad:  # the kernel's autograd ignores the lse output merge uses
        raise ValueError("impl 'fused' is inference-only (q, k or v requires grad); "
                         "use impl='matmul' or 'auto'")
    use_numba = impl == "numba" or (impl == "auto" and decode_numba.supports(q, k, v))
    if impl == "numba" and not decode_numba.supports(q, k, v):
        raise ValueError("impl 'numba' needs numba installed (extra 'fast') and float32, "
                         "contiguous CPU q, k, v without grad; use impl='auto' or 'torch'")
    if impl == "auto" and not grad and mask is None and Nq == 1 and kv_decode.numba_available() \
            and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == v.dtype == q.dtype:
        return kv_decode.kv_decode(q, k, v, scale=scale, return_lse=return_lse)  # widens in-kernel
    fused = impl == "fused" or (impl in ("auto", "torch") and Dv == D and not grad)
    partial = _chunk_partial_fused if fused else _chunk_partial
    cd = compute_dtype(q)
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qg = q.to(cd).reshape(B, Hkv, G * Nq, D)  # (B, Hkv, G·Nq, D): group rows share one KV read
    keep = None
    if mask is not None:
        if q_pos is None:
            q_pos = torch.arange(Nq) + (Nk - Nq)
        m = dense_mask(mask, B, Hq, Nq, Nk, q_pos=q_pos, kv_pos=kv_pos)  # (B|1, Hq|1, Nq, Nk)
        Bm, Hm = m.shape[0], m.shape[1]
        if Hm == 1:
            keep = m.unsqueeze(2).expand(Bm, 1, G, Nq, Nk).reshape(Bm, 1, G * Nq, Nk)
        else:
            keep = m.reshape(Bm, Hkv, G * Nq, Nk)
    outs, lses = [], []
    if use_numba:  # every chunk in one parallel kernel call
        o, lse = decode_numba.decode_numba(qg, k, v, scale, chunk, keep)
        outs, lses = [o], [lse]
    else:
        for c0 in range(0, Nk, chunk):
            c1 = min(c0 + chunk, Nk)
            kc = keep[..., c0:c1] if keep is not None else None
            if kc is not None and not bool(kc.any()):
                continue  # every key of this chunk is masked: not read
            o, lse = partial(qg, k[:, :, c0:c1].to(cd), v[:, :, c0:c1].to(cd), scale, kc)
            outs.append(o)
            lses.append(lse)
    if outs:
        o, lse = merge_many(outs, lses)
    else:
        o = qg.new_zeros(B, Hkv, G * Nq, Dv)
        lse = torch.full((B, Hkv, G * Nq), float("-inf"))
    out = o.reshape(B, Hq, Nq, Dv)  # rows were ordered (group, query)
    lse = lse.reshape(B, Hq, Nq)
    check_result(out.detach(), lse.detach())
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
