"""Split-KV decoding as one fused numba kernel (optional `fast` extra; inference only).

Same algorithm and contract as `decode.py` (Flash-Decoding, Dao, Haziza, Massa, Sizov
2023): the cache is cut into chunks, each (batch, kv-head, chunk) work item gives a
partial (o_c, lse_c), and the partials are combined with `merge_many` (conventions §3). What
changes is the chunk kernel: instead of two skinny GEMMs (which pack their operands and
stream the cache at ~half the read bandwidth, kernels_notes.md), each key row is read
once and used at once by the G·Nq query rows of its group — a GEMV-like pass:

    for each block of KB keys:  s[r, j] = scale · q_r · k_j          (R·KB·D FMAs, R = G·Nq)
                                m' = max(m, max_j s);  α = exp(m − m')
                                p = exp(s − m');  l = α·l + Σ_j p;  acc = α·acc + p·V_block

When R == 4 (e.g. Hq 32, Hkv 8, one token) a specialised kernel runs: the 4 dot products
of a key share one pass over its row (4 scalar accumulators, vectorised over d), exp is a
vectorisable range-reduced polynomial over the key block (2^k built from int32 bits;
rel. error < 1e-6, −inf → 0, NaN kept), and p·V updates the 4 accumulator rows in one
pass over each value row (vectorised over e: one load of v, four FMAs; measured faster
than four keys per row pass, which reloads v per row). Register tiles of the accumulator
(scalar locals) do not vectorise here: numba runs LLVM without the SLP vectoriser.
Other R use the generic kernel.
Work items are spread over threads with `numba.prange`. Statistics (running max, sum)
and the accumulator are float32. Masked keys (keep = False) contribute nothing; a row
with no visible key in a chunk gets o = 0, lse = −inf, so `merge_many` treats it as empty.

Cost: O(B·Hq·Nq·Nk·D) time, one read of K and V; O(B·Hkv·chunks·R·Dv) extra memory.
fastmath is restricted to reassociation/contraction (no `nnan`/`ninf`): −inf encodes
masked scores and NaN inputs must propagate to the output check.
"""
from __future__ import annotations

import importlib.util
import math

import torch

from .merge import merge_many

KEY_BLOCK = 32  # keys scored together: R·32 scores stay in registers/L1
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # safe subset: keeps inf/NaN semantics


def available() -> bool:
    """True when numba can be imported (the optional `fast` extra is installed)."""
    return importlib.util.find_spec("numba") is not None


_KERNEL = None
_EXP = None  # the block exp (compiled with the kernels), exposed for its accuracy test


def _kernel():
    """Compile (or load from the on-disk cache) the chunk kernel on first use."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import numba
    import numpy as np

    # the block exp and the finishing step are shared with the every-dtype kernel
    from .kv_numba import dot4, finish, vexp

    @numba.njit(inline="always")
    def coords(item, Hkv, C, Bm, Hm):
        # work item -> (batch, kv head, chunk) and the mask's (batch, head) index
        b = item // (Hkv * C)
        h = (item // C) % Hkv
        return b, h, item % C, (b if Bm > 1 else 0), (h if Hm > 1 else 0)

    @numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
    def chunks4(q, k, v, keep, has_mask, scale, chunk, o_part, lse_part):
        # R == 4 path; same arguments as `chunks`. Row r's scores in s[r], its
        # accumulator in acc[r]; all 4 rows are updated from one read of each K/V row.
        B, Hkv = q.shape[0], q.shape[1]  # R == 4
        Nk = k.shape[2]
        Dv = v.shape[3]
        C = o_part.shape[2]
        Bm, Hm = keep.shape[0], keep.shape[1]
        neg_inf = np.float32(-np.inf)
        sc = np.float32(scale)
        for item in numba.prange(B * Hkv * C):
            b, h, c, bm, hm = coords(item, Hkv, C, Bm, Hm)
            acc = np.zeros((4, Dv), dtype=np.float32)
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            m = np.full(4, neg_inf, dtype=np.float32)
            l = np.zeros(4, dtype=np.float32)
            s = np.empty((4, KEY_BLOCK), dtype=np.float32)
            p = np.empty((4, KEY_BLOCK), dtype=np.float32)
            ib = np.empty(KEY_BLOCK, dtype=np.int32)
            fb = ib.view(np.float32)
            q0, q1, q2, q3 = q[b, h, 0], q[b, h, 1], q[b, h, 2], q[b, h, 3]
            c0 = c * chunk
            c1 = min(c0 + chunk, Nk)
            for j0 in range(c0, c1, KEY_BLOCK):
                nb = min(KEY_BLOCK, c1 - j0)
                for jj in range(nb):  # 4 dot products from one pass over the key row
                    dot4(q0, q1, q2, q3, k[b, h, j0 + jj], sc, s, jj)
                if has_mask:  # masked scores become −inf (a NaN key there is dropped)
                    for r in range(4):
                        kr = keep[bm, hm, r]
                        for jj in range(nb):
                            if kr[j0 + jj] == 0:
                                s[r, jj] = neg_inf
                for r in range(4):  # online softmax: block max, rescale, p = exp(s − m)
                    pr = p[r]
                    mb = neg_inf
                    if math.isnan(m[r]):
                        mb = m[r]
                    else:
                        for jj in range(nb):
                            sj = s[r, jj]
                            if sj > mb or sj != sj:  # noqa: PLR0124 — a NaN sticks: nothing replaces it
                                mb = sj
                                if sj != sj:  # noqa: PLR0124 (NaN test in numba)
                                    break
                    if math.isnan(mb):  # poisoned row: p = 0 from here on, stats NaN
                        m[r] = mb
                        l[r] = mb
                        pr[:nb] = 0.0
                        continue
                    m_new = max(m[r], mb)
                    if m_new == neg_inf:
                        pr[:nb] = 0.0  # no visible key yet for row r
                        continue
                    if m_new > m[r]:
                        alpha = np.float32(math.exp(m[r] - m_new))  # exp(-inf) = 0 at start
                        l[r] *= alpha
                        ar = acc[r]
                        for e in range(Dv):
                            ar[e] *= alpha
                        m[r] = m_new
                    sr = s[r]
                    for jj in range(nb):
                        sr[jj] = sr[jj] - m_new
                    vexp(sr, nb, ib, fb, pr)
                    t = np.float32(0.0)
                    for jj in range(nb):
                        t += pr[jj]
                    l[r] += t
                for jj in range(nb):  # p·V: one pass over each value row updates the 4 rows
                    if has_mask and (s[0, jj] == neg_inf and s[1, jj] == neg_inf
                                     and s[2, jj] == neg_inf and s[3, jj] == neg_inf):
                        continue  # a key no row sees: its value row is not read
                    p0, p1, p2, p3 = p[0, jj], p[1, jj], p[2, jj], p[3, jj]
                    vj = v[b, h, j0 + jj]
                    for e in range(Dv):  # vectorised over e: 1 load of v, 4 FMAs
                        ve = vj[e]
                        a0[e] += p0 * ve
                        a1[e] += p1 * ve
                        a2[e] += p2 * ve
                        a3[e] += p3 * ve
            finish(acc, m, l, o_part[b, h, c], lse_part[b, h, c])

    @numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
    def chunks(q, k, v, keep, has_mask, scale, chunk, o_part, lse_part):
        # q (B, Hkv, R, D); k (B, Hkv, Nk, D); v (B, Hkv, Nk, Dv); keep (Bm, Hm, R, Nk) u8
        # o_part (B, Hkv, C, R, Dv), lse_part (B, Hkv, C, R) — C = ceil(Nk / chunk)
        B, Hkv, R, D = q.shape
        Nk = k.shape[2]
        Dv = v.shape[3]
        C = o_part.shape[2]
        Bm, Hm = keep.shape[0], keep.shape[1]
        neg_inf = np.float32(-np.inf)
        sc = np.float32(scale)
        for item in numba.prange(B * Hkv * C):
            b, h, c, bm, hm = coords(item, Hkv, C, Bm, Hm)
            acc = np.zeros((R, Dv), dtype=np.float32)
            m = np.full(R, neg_inf, dtype=np.float32)
            l = np.zeros(R, dtype=np.float32)
            s = np.empty((R, KEY_BLOCK), dtype=np.float32)
            c0 = c * chunk
            c1 = min(c0 + chunk, Nk)
            for j0 in range(c0, c1, KEY_BLOCK):
                nb = min(KEY_BLOCK, c1 - j0)
                for jj in range(nb):  # scores of this key block, key row read once
                    kj = k[b, h, j0 + jj]
                    for r in range(R):
                        if has_mask and keep[bm, hm, r, j0 + jj] == 0:
                            s[r, jj] = neg_inf
                            continue
                        qr = q[b, h, r]
                        t = np.float32(0.0)
                        for d in range(D):
                            t += qr[d] * kj[d]
                        s[r, jj] = t * sc
                for r in range(R):  # online softmax update, then p·V
                    if math.isnan(m[r]):
                        continue  # row already poisoned by a NaN score
                    mb = neg_inf
                    for jj in range(nb):
                        sj = s[r, jj]
                        if sj > mb or sj != sj:  # noqa: PLR0124 — a NaN sticks: nothing replaces it
                            mb = sj
                            if sj != sj:  # noqa: PLR0124 (NaN test in numba)
                                break
                    if math.isnan(mb):  # a NaN/inf input reached a visible score: poison the row
                        m[r] = mb
                        l[r] = mb
                        continue
                    if mb == neg_inf:
                        continue  # no visible key of this block for row r
                    m_new = max(m[r], mb)
                    if m_new > m[r]:
                        alpha = np.float32(math.exp(m[r] - m_new))  # exp(-inf) = 0 at start
                        l[r] *= alpha
                        for e in range(Dv):
                            acc[r, e] *= alpha
                        m[r] = m_new
                    for jj in range(nb):
                        if s[r, jj] == neg_inf:
                            continue  # masked key: its value row is not read (may be NaN)
                        p = np.float32(math.exp(s[r, jj] - m_new))
                        l[r] += p
                        vj = v[b, h, j0 + jj]
                        for e in range(Dv):
                            acc[r, e] += p * vj[e]
            finish(acc, m, l, o_part[b, h, c], lse_part[b, h, c])

    global _EXP
    _EXP = vexp
    _KERNEL = (chunks4, chunks)
    return _KERNEL


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the numba kernel applies: numba importable, float32 CPU tensors, contiguous,
    no gradient needed (the kernel has no backward)."""
    if not available():
        return False
    ts = (q, k, v)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()
           for t in ts):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def decode_numba(qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 chunk: int, keep: torch.Tensor | None):
    """Split-KV attention of grouped queries qg (B, Hkv, R, D) against k (B, Hkv, Nk, D),
    v (B, Hkv, Nk, Dv); keep (B|1, Hkv|1, R, Nk) bool or None. Returns (o (B, Hkv, R, Dv),
    lse (B, Hkv, R) float32), merged over ceil(Nk / chunk) chunks. Callers check inputs
    (`decode_attention` is the public boundary)."""
    B, Hkv, R = qg.shape[:3]
    Nk, Dv = k.shape[2], v.shape[3]
    C = -(-Nk // chunk)
    o_part = torch.empty(B, Hkv, C, R, Dv)  # (B, Hkv, C, R, Dv)
    lse_part = torch.empty(B, Hkv, C, R)  # (B, Hkv, C, R)
    if keep is None:
        keep_u8 = torch.ones(1, 1, 1, 1, dtype=torch.uint8)  # unread: has_mask is False
    else:
        keep_u8 = keep.to(torch.uint8).contiguous()  # (B|1, Hkv|1, R, Nk)
    fast, generic = _kernel()
    kern = fast if R == 4 else generic
    kern(qg.contiguous().numpy(), k.numpy(), v.numpy(), keep_u8.numpy(), keep is not None,
         float(scale), int(chunk), o_part.numpy(), lse_part.numpy())
    return merge_many(list(o_part.unbind(2)), list(lse_part.unbind(2)))
