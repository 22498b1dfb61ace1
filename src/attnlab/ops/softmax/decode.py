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
answer: torch's fused CPU flash kernel (inference) and a plain-torch matmul/softmax form,
differentiable (also through lse). Timings: benchmarks/results/kernels.md.

Non-finite values (docs/conventions.md §2) without re-reading the cache: q is probed
(O(Nq·D)); the result is checked (O(Nq·Dv)): a NaN/inf in out, a NaN/+inf lse, or a chunk
row with lse 0 and out 0 (what torch's fused tile returns when every score of a row is
NaN) sends the call to the exact tiled engine. A score_mod also runs there. The numba
kernel is checked once for keeping a NaN score that a masked key follows in its key
block; while it does not, k is probed (one sum, O(Nk·D)) before it is used.
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_positive_int
from . import decode_numba, kv_decode, kv_native
from .backends import Backend, register_backend
from .contract import Call, finish, nonfinite, validate
from .flash import degenerate
from .merge import merge_many
from .reference import dense_mask
from .tiles import TilePlan, compute_dtype, run_tiles

DEFAULT_CHUNK = 8192  # 4K–16K chunks streamed alike in the kernels benchmark (results/kernels.md)


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
    return o, lse


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
    o, lse = _FLASH(qg, kc, vc, attn_mask=add, scale=scale)[:2]
    lse = lse.to(torch.float64 if qg.dtype == torch.float64 else torch.float32)
    if keep is not None:
        empty = ~keep.any(-1)  # the kernel reports lse = 0 on rows with no key
        if bool(empty.any()):
            e = empty.expand_as(lse)
            lse = lse.masked_fill(e, float("-inf"))
            o = o.masked_fill(e.unsqueeze(-1), 0.0)
    return o, lse


_NUMBA_KEEPS_NAN: bool | None = None


def numba_keeps_nan() -> bool:
    """Whether the numba kernel keeps a NaN score that a masked key follows in its key
    block (checked once on a 2-key case, for the generic and the 4-row kernel)."""
    global _NUMBA_KEEPS_NAN
    if _NUMBA_KEEPS_NAN is None:
        ok = True
        for r in (1, 4):
            q = torch.ones(1, 1, r, 4)
            k = torch.tensor([[[[math.nan] * 4, [1.0] * 4]]])
            keep = torch.tensor([True, False]).expand(1, 1, r, 2)
            _, lse = decode_numba.decode_numba(q, k, torch.ones(1, 1, 2, 4), 0.5, 2, keep)
            ok = ok and bool(torch.isnan(lse).all())
        _NUMBA_KEEPS_NAN = ok
    return _NUMBA_KEEPS_NAN


def _every_dtype_kernel(dtype, D: int, Dv: int) -> bool:
    """Whether `kv_decode`'s compiled kernel serves a single-token decode in `dtype`:
    bf16/fp16 with the native or the numba kernel; fp32 with the native one (numba's fp32
    case is `decode_numba`)."""
    if dtype in (torch.bfloat16, torch.float16):
        return kv_native.available() or kv_decode.numba_available()
    return dtype == torch.float32 and kv_native.available() and kv_native.supports(D, Dv)


def _exact(call: Call, chunk: int):
    """The exact tiled engine over (all queries) × (chunks of keys)."""
    plan = TilePlan.dense(call.Nq, call.Nk, call.Nq, chunk, masked=call.mask is not None)
    return run_tiles(call, plan)


def decode_run(call: Call, chunk: int = DEFAULT_CHUNK, impl: str = "auto"):
    """`attention()`'s "decode" backend on a validated call: (out, lse)."""
    if call.Nq == 0 or call.Nk == 0:
        return degenerate(call)
    q, k, v = call.q, call.k, call.v
    B, Hq, Hkv, Nq, Nk, D, Dv = call.B, call.Hq, call.Hkv, call.Nq, call.Nk, call.D, call.Dv
    if call.score_mod is not None or nonfinite(q):
        return _exact(call, chunk)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if impl == "auto" and not grad and call.mask is None and call.sink is None and Nq == 1 \
            and k.dtype == v.dtype == q.dtype and _every_dtype_kernel(q.dtype, D, Dv):
        # the every-dtype kernel (native C++ or numba): bf16/fp16 widened inside it,
        # non-finite data recomputed exactly there; out in q's dtype, lse float32
        return kv_decode.kv_decode(q, k, v, scale=call.scale, chunk=chunk, return_lse=True)
    use_numba = impl == "numba" or (impl == "auto" and decode_numba.supports(q, k, v))
    if use_numba and not numba_keeps_nan() and nonfinite(k):
        return _exact(call, chunk)
    # torch's fused tile keeps float32 statistics: float64 takes the matmul form
    fused = impl == "fused" or (impl in ("auto", "torch") and Dv == D and not grad
                                and q.dtype != torch.float64)
    partial = _chunk_partial_fused if fused else _chunk_partial
    cd = compute_dtype(q)
    G = Hq // Hkv
    # (B, Hkv, G·Nq, D): group rows share one KV read; unit stride for the fused kernels
    qg = q.to(cd).reshape(B, Hkv, G * Nq, D).contiguous()
    keep = None
    if call.mask is not None:
        q_pos = torch.arange(Nq) + (Nk - Nq) if call.q_pos is None else call.q_pos
        m = dense_mask(call.mask, B, Hq, Nq, Nk, q_pos=q_pos, kv_pos=call.kv_pos)
        Bm, Hm = m.shape[0], m.shape[1]  # (B|1, Hq|1, Nq, Nk)
        if Hm == 1:
            keep = m.unsqueeze(2).expand(Bm, 1, G, Nq, Nk).reshape(Bm, 1, G * Nq, Nk)
        else:
            keep = m.reshape(Bm, Hkv, G * Nq, Nk)
    outs, lses, suspect = [], [], False
    if use_numba:  # every chunk in one parallel kernel call
        o, lse = decode_numba.decode_numba(qg, k, v, call.scale, chunk, keep)
        outs, lses = [o], [lse]
    else:
        for c0 in range(0, Nk, chunk):
            c1 = min(c0 + chunk, Nk)
            kc = keep[..., c0:c1] if keep is not None else None
            if kc is not None and not bool(kc.any()):
                continue  # every key of this chunk is masked: not read
            o, lse = partial(qg, k[:, :, c0:c1].to(cd), v[:, :, c0:c1].to(cd), call.scale, kc)
            if fused:  # all-NaN scores come back as (0, 0) from the fused tile
                zero = lse == 0
                suspect = suspect or (bool(zero.any()) and bool((o.abs().sum(-1) == 0)[zero].any()))
            outs.append(o)
            lses.append(lse)
    if not outs:  # every key masked: out 0, lse -inf (through the engine when grads flow)
        if grad:
            return _exact(call, chunk)
        return (q.new_zeros(B, Hq, Nq, Dv),
                torch.full((B, Hq, Nq), float("-inf"), dtype=call.stat_dtype))
    o, lse = merge_many(outs, lses)
    out = o.reshape(B, Hq, Nq, Dv)  # rows were ordered (group, query)
    lse = lse.reshape(B, Hq, Nq)
    if suspect or nonfinite(out) or bool((torch.isnan(lse) | (lse == math.inf)).any()):
        return _exact(call, chunk)  # a NaN/inf reached the result: recompute exactly
    return out, lse  # compute dtype: `finish` rounds once


def decode_attention(q, k, v, *, mask=None, scale: float | None = None, score_mod=None,
                     sink=None, chunk: int = DEFAULT_CHUNK, impl: str = "auto",
                     return_lse: bool = False, q_pos=None, kv_pos=None,
                     check_finite: bool = False):
    """Exact split-KV attention for decode shapes (few queries, long cache).

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); `chunk` keys per split (the
    number of splits is ceil(Nk / chunk)). `mask`: `Mask` or bool tensor, evaluated densely
    on (Nq, Nk) — cheap because Nq is small. `impl`: "matmul" (two matmuls and a softmax
    per chunk, the readable form), "fused" (torch's CPU flash kernel per chunk; Dv == D),
    "torch" (fused when Dv == D and no gradient is needed, else matmul), "numba" (one fused
    numba kernel, `decode_numba.py`: float32 contiguous CPU inputs, no gradient, the `fast`
    extra installed), "auto" (numba where it applies, else as "torch"). float16/bfloat16
    inputs are computed in float32 chunk by chunk. Returns `out` or `(out, lse)`; rows with
    no visible key give 0 and lse = -inf; non-finite inputs follow docs/conventions.md §2.
    """
    call = validate(q, k, v, mask=mask, scale=scale, score_mod=score_mod, sink=sink,
                    return_lse=return_lse, q_pos=q_pos, kv_pos=kv_pos,
                    check_finite_values=check_finite)
    check_positive_int("chunk", chunk)
    if impl not in IMPLS:
        raise ValueError(f"impl ({impl!r}) must be one of {IMPLS}")
    if impl == "fused" and call.Dv != call.D:
        raise ValueError(f"impl 'fused' needs v head_dim ({call.Dv}) == q head_dim ({call.D})")
    if impl == "fused" and call.grad:  # the kernel's autograd ignores the lse output merge uses
        raise ValueError("impl 'fused' is inference-only (q, k or v requires grad); "
                         "use impl='matmul' or 'auto'")
    if impl == "numba" and not decode_numba.supports(q, k, v):
        raise ValueError("impl 'numba' needs numba installed (extra 'fast') and float32, "
                         "contiguous CPU q, k, v without grad; use impl='auto' or 'torch'")
    return finish(call, *decode_run(call, chunk, impl))


# decode shapes: at most this many queries against at least this many keys (a step of
# generation or a short speculative burst against a long cache)
DECODE_MAX_Q = 16
DECODE_MIN_K = 2048

register_backend(Backend(
    "decode", decode_run, rank=10, score_mod=True, sink=True, return_lse=True,
    prefers=lambda call: call.Nq <= DECODE_MAX_Q and call.Nk >= DECODE_MIN_K,
    doc="split-KV (Flash-Decoding): chunks merged with merge_many; numba kernel optional"))
