"""numba kernels of the every-dtype split-KV decode (`kv_decode.py`); imported only when
numba is installed (the optional `fast` extra).

One kernel body serves every cache dtype and both cache layouts. The cache is seen as flat
rows `(rows, D)` and a key's row is found through a block table,

    row(b, h, j) = h·hstride + table[b, j // bs]·pstride + j mod bs,

which is a paged pool `(Hkv, num_blocks, bs, D)` (hstride = num_blocks·bs, pstride = bs)
or a contiguous cache `(B, Hkv, N, D)` (one block per sequence: bs = N, table[b, 0] = b,
pstride = Hkv·N, hstride = N). Keys are scored in blocks of KEY_BLOCK keys whose rows
are looked up one by one (a block may span physical blocks: paged and contiguous caches run
the same inner loops).

Each key block is widened to float32 once (`load_rows`, specialised by the stored dtype):
float32 rows are used in place; bf16 rows (raw uint16 words) are shifted left 16 bits into
float32 bits; fp16 rows (raw int16 words) are rebuilt bit by bit (normal, subnormal, inf,
NaN); int8 codes are multiplied by their float32 scale (per token: one per row; per group:
one per `D / groups` channels) — a block of KEY_BLOCK rows in L1, never the history.
Then the G·Nq query rows of the KV head are processed four at a time (q zero-padded to a
multiple of 4): four dot products per key row in one pass, a range-reduced polynomial exp
over the block, and p·V updating four accumulator rows per value row (the scheme of
`decode_numba.py`). Statistics and accumulators are float32.

Non-finite data (docs/conventions.md §2): any NaN/inf that reaches a partial makes that
partial non-finite (a NaN score sticks in the running max, +inf gives NaN, 0·inf = NaN),
and an int8 code −128 (a non-finite entry kept in a side table) raises the work item's flag;
the caller recomputes exactly every (sequence, KV head) with a flag or a non-finite
partial. Slots past a sequence's length or before its start are never read.
Cost: O(L·Hq·Nq·D) per sequence, one read of its K and V; O(items·Hkv·R·Dv) extra memory.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba.extending import overload

KEY_BLOCK = 32  # keys scored together: 4·32 scores and two 32-row blocks stay in L1
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # keeps inf/NaN semantics (no nnan/ninf)
NEG_INF = np.float32(-np.inf)


@numba.njit(inline="always", fastmath=FASTMATH)
def vexp(x, n, ib, fb, p):
    """p[j] = exp(x[j]) for j < n, x ≤ 0 or −inf (→ 0 exactly); ib (≥n,) int32 and
    fb = ib.view(float32) hold 2^k. exp(x) = 2^k·exp(t), k = round(x/ln2), t = x − k·ln2
    (two-part ln2), |t| ≤ ln2/2: degree-7 Taylor, rel. error < 2e-7; NaN stays NaN."""
    for j in range(n):
        xj = max(x[j], np.float32(-87.0))  # 2^k stays normal (k ≥ −126)
        kf = np.float32(np.int32(xj * np.float32(1.4426950408889634) - np.float32(0.5)))
        t = xj - kf * np.float32(0.693145751953125)
        t = t - kf * np.float32(1.428606765330187e-06)
        e = np.float32(1.0 / 5040.0)
        e = e * t + np.float32(1.0 / 720.0)
        e = e * t + np.float32(1.0 / 120.0)
        e = e * t + np.float32(1.0 / 24.0)
        e = e * t + np.float32(1.0 / 6.0)
        e = e * t + np.float32(0.5)
        e = e * t + np.float32(1.0)
        e = e * t + np.float32(1.0)
        ib[j] = (np.int32(kf) + np.int32(127)) << np.int32(23)
        xo = x[j]  # below −87 (and −inf) → 0; NaN stays NaN
        p[j] = e if xo >= np.float32(-87.0) else (np.float32(0.0) if xo < 0 else xo)
    for j in range(n):
        p[j] = p[j] * fb[j]


@numba.njit(inline="always", fastmath=FASTMATH)
def finish(acc, m, l, o, lse):
    """acc (R, Dv), m, l (R,) -> o = acc / l, lse = m + log l; a row with no visible key
    gets 0 and −inf; NaN stays NaN."""
    for r in range(acc.shape[0]):
        if not (m[r] == NEG_INF and l[r] == 0.0):
            inv = np.float32(1.0) / l[r]
            for e in range(acc.shape[1]):
                o[r, e] = acc[r, e] * inv
            lse[r] = m[r] + np.float32(math.log(l[r]))
        else:
            for e in range(acc.shape[1]):
                o[r, e] = 0.0
            lse[r] = NEG_INF


def load_rows(raw, sc, rows, nb, buf, bufi, ident):
    """Rows rows[0..nb) of `raw` as float32: returns (array, index, bad) with row i of the
    block at array[index[i]], and whether an int8 code −128 was met; specialised by raw's
    dtype below (numba overloads). buf (KEY_BLOCK, D) float32, bufi its int32 view,
    ident = 0..KEY_BLOCK−1."""
    raise NotImplementedError("compiled only: called from the numba kernel")


@overload(load_rows, fastmath=FASTMATH)
def _load_rows(raw, sc, rows, nb, buf, bufi, ident):
    dt = raw.dtype
    if dt == numba.float32:
        def impl(raw, sc, rows, nb, buf, bufi, ident):  # in place, no copy
            return raw, rows, 0
    elif dt == numba.uint16:  # bfloat16 words: the top half of a float32
        def impl(raw, sc, rows, nb, buf, bufi, ident):
            D = raw.shape[1]
            for i in range(nb):
                src = raw[rows[i]]
                dst = bufi[i]
                for d in range(D):  # ×2^16, not <<: numba's checked shift does not vectorise
                    dst[d] = np.int32(src[d]) * np.int32(65536)
            return buf, ident, 0
    elif dt == numba.int16:  # float16 words, widened exactly (subnormals, inf, NaN)
        def impl(raw, sc, rows, nb, buf, bufi, ident):
            D = raw.shape[1]
            for i in range(nb):
                src = raw[rows[i]]
                dst = bufi[i]
                for d in range(D):  # exponent+mantissa moved to float32's place (×2^13)
                    dst[d] = (np.int32(src[d]) & np.int32(0x7FFF)) * np.int32(8192)
                f = buf[i]
                for d in range(D):  # rebias: ×2^112 (also turns subnormals normal)
                    f[d] = f[d] * np.float32(5.192296858534828e33)
                for d in range(D):  # inf/NaN (exponent 31): all-ones exponent
                    em = (np.int32(src[d]) & np.int32(0x7FFF)) * np.int32(8192)
                    top = -np.int32(em >= np.int32(0x0F800000))  # all ones on inf/NaN
                    dst[d] = (dst[d] & ~top) | ((em | np.int32(0x7F800000)) & top)
                for d in range(D):  # the sign bit (a negative int16 word)
                    f[d] = -f[d] if src[d] < 0 else f[d]
            return buf, ident, 0
    elif dt == numba.int8:  # codes · float32 scale (per token or per group of channels)
        def impl(raw, sc, rows, nb, buf, bufi, ident):
            D = raw.shape[1]
            ng = sc.shape[1]
            g = D // ng
            low = np.int32(0)
            for i in range(nb):
                src = raw[rows[i]]
                dst = buf[i]
                srow = sc[rows[i]]
                for d in range(D):  # the smallest code: −128 marks a side-table entry
                    low = min(low, np.int32(src[d]))
                if ng == 1:  # per token: one scale for the row
                    s = srow[0]
                    for d in range(D):
                        dst[d] = np.float32(src[d]) * s
                else:
                    for gi in range(ng):  # per group of g channels
                        sgi = srow[gi]
                        sg = src[gi * g:gi * g + g]
                        dg = dst[gi * g:gi * g + g]
                        for d in range(g):
                            dg[d] = np.float32(sg[d]) * sgi
            return buf, ident, np.int32(low == np.int32(-128))
    else:
        return None
    return impl


@numba.njit(inline="always", fastmath=FASTMATH)
def dot4(q0, q1, q2, q3, kj, sc, s, jj):
    """s[r, jj] = sc · (q_r · kj) for r < 4: the 4 dot products from one pass over the key
    row (4 scalar accumulators, vectorised over d)."""
    t0 = np.float32(0.0)
    t1 = np.float32(0.0)
    t2 = np.float32(0.0)
    t3 = np.float32(0.0)
    for d in range(kj.shape[0]):
        kd = kj[d]
        t0 += q0[d] * kd
        t1 += q1[d] * kd
        t2 += q2[d] * kd
        t3 += q3[d] * kd
    s[0, jj] = t0 * sc
    s[1, jj] = t1 * sc
    s[2, jj] = t2 * sc
    s[3, jj] = t3 * sc


@numba.njit(inline="always", fastmath=FASTMATH)
def update4(qb, r0, kb, kix, vb, vix, nb, j, lim0, nq, sc, s, p, ib, fb, acc, m, l):
    """Online-softmax update of query rows r0..r0+3 with the key block (keys j..j+nb at
    rows kb[kix[i]], vb[vix[i]]). Row r sees keys below lim0 + (r mod nq) (bottom-right
    causal)."""
    Dv = vb.shape[1]
    q0, q1, q2, q3 = qb[r0], qb[r0 + 1], qb[r0 + 2], qb[r0 + 3]
    a0, a1, a2, a3 = acc[r0], acc[r0 + 1], acc[r0 + 2], acc[r0 + 3]
    for jj in range(nb):
        dot4(q0, q1, q2, q3, kb[kix[jj]], sc, s, jj)
    if j + nb > lim0:  # the causal tail: a key past a row's own position is masked
        for rr in range(4):
            lim = lim0 + (r0 + rr) % nq
            for jj in range(nb):
                if j + jj >= lim:
                    s[rr, jj] = NEG_INF
    for rr in range(4):  # online softmax: block max, rescale, p = exp(s − m)
        r = r0 + rr
        pr = p[rr]
        sr = s[rr]
        mb = NEG_INF
        if math.isnan(m[r]):
            mb = m[r]
        else:
            for jj in range(nb):
                sj = sr[jj]
                if sj > mb or math.isnan(sj):  # a NaN sticks: nothing replaces it
                    mb = sj
                    if math.isnan(sj):
                        break
        if math.isnan(mb):  # poisoned row: stats NaN, p = 0 from here on
            m[r] = mb
            l[r] = mb
            pr[:nb] = 0.0
            continue
        m_new = max(m[r], mb)
        if m_new == NEG_INF:
            pr[:nb] = 0.0  # no visible key yet for row r
            continue
        if m_new > m[r]:
            alpha = np.float32(math.exp(m[r] - m_new))  # exp(−inf) = 0 at the start
            l[r] *= alpha
            ar = acc[r]
            for e in range(Dv):
                ar[e] *= alpha
            m[r] = m_new
        for jj in range(nb):
            sr[jj] = sr[jj] - m_new
        vexp(sr, nb, ib, fb, pr)
        t = np.float32(0.0)
        for jj in range(nb):
            t += pr[jj]
        l[r] += t
    for jj in range(nb):  # p·V: one pass over each value row updates the 4 rows
        p0, p1, p2, p3 = p[0, jj], p[1, jj], p[2, jj], p[3, jj]
        vj = vb[vix[jj]]
        for e in range(Dv):  # vectorised over e: 1 load of v, 4 FMAs
            ve = vj[e]
            a0[e] += p0 * ve
            a1[e] += p1 * ve
            a2[e] += p2 * ve
            a3[e] += p3 * ve


@numba.njit(inline="always")
def block_len(j, j1, lim0):
    """Keys in the block starting at j: up to KEY_BLOCK, stopping at the item's end and at
    the start of the causal tail (a block is all-visible or all in the tail); 0 past j1."""
    if j >= j1:
        return 0
    n = min(KEY_BLOCK, j1 - j)
    return min(n, lim0 - j) if j < lim0 else n


@numba.njit(inline="always")
def lookup(rows, n, j, j1, page, off, base, h, hstride, pstride, bs, tbl_b):
    """Rows of keys j..j+n through the block table; (page, off, base) is the position of
    key j, returned advanced to key j+n (a table entry is read only while keys remain)."""
    for jj in range(n):
        rows[jj] = base + off
        off += 1
        if off == bs and j + jj + 1 < j1:
            page += 1
            off = 0
            base = h * hstride + tbl_b[page] * pstride
    return page, off, base


@numba.njit(parallel=True, cache=True, fastmath=FASTMATH)
def decode_items(q, kraw, vraw, ksc, vsc, tbl, hstride, pstride, bs, items, lens, nq, scale,
                 o_part, lse_part, flags, sink):
    """q (B, Hkv, Rp, D) float32, Rp a multiple of 4 (rows ordered (group, query));
    kraw (rows, D), vraw (rows, Dv) stored rows (float32 / uint16 bf16 / int16 fp16 /
    int8); ksc (rows, gk), vsc (rows, gv) float32 scales of int8 rows (unused otherwise);
    tbl (B, W) int64 block table; items (n, 3) int64 (sequence, first key, end key);
    lens (B,) int64. Writes o_part (n, Hkv, Rp, Dv), lse_part (n, Hkv, Rp), flags (n, Hkv)
    (int8 codes −128 met), sink (n, Hkv) float32 (a sum of the touched elements: the next
    key block's rows are loaded once ahead of use, so on a paged pool the misses of up to
    2·KEY_BLOCK scattered rows are in flight together)."""
    Hkv, Rp, D = q.shape[1], q.shape[2], q.shape[3]
    Dv = vraw.shape[1]
    n = items.shape[0]
    sc = np.float32(scale)
    for it in numba.prange(n * Hkv):
        i = it // Hkv
        h = it - i * Hkv
        b, j, j1 = items[i, 0], items[i, 1], items[i, 2]
        lim0 = lens[b] - nq + 1  # keys below lim0 are visible to every query row
        acc = np.zeros((Rp, Dv), dtype=np.float32)
        m = np.full(Rp, NEG_INF, dtype=np.float32)
        l = np.zeros(Rp, dtype=np.float32)
        s = np.empty((4, KEY_BLOCK), dtype=np.float32)
        p = np.empty((4, KEY_BLOCK), dtype=np.float32)
        ib = np.empty(KEY_BLOCK, dtype=np.int32)
        fb = ib.view(np.float32)
        kbf = np.empty((KEY_BLOCK, D), dtype=np.float32)  # widened rows (read as C arrays)
        vbf = np.empty((KEY_BLOCK, Dv), dtype=np.float32)
        kbi = kbf.view(np.int32)  # the same memory, written bit by bit for bf16/fp16
        vbi = vbf.view(np.int32)
        qb = q[b, h]
        bad = 0
        rows = np.empty(KEY_BLOCK, dtype=np.int64)
        nxt = np.empty(KEY_BLOCK, dtype=np.int64)
        ident = np.arange(KEY_BLOCK)
        page = j // bs
        off = j - page * bs
        base = h * hstride + tbl[b, page] * pstride
        touch = np.float32(0.0)
        nb = block_len(j, j1, lim0)
        page, off, base = lookup(rows, nb, j, j1, page, off, base, h, hstride, pstride, bs,
                                 tbl[b])
        while j < j1:
            jn = j + nb
            nn = block_len(jn, j1, lim0)
            page, off, base = lookup(nxt, nn, jn, j1, page, off, base, h, hstride, pstride,
                                     bs, tbl[b])
            for jj in range(nn):  # touch the next block's rows: their misses overlap
                touch += np.float32(kraw[nxt[jj], 0]) + np.float32(vraw[nxt[jj], 0])
            kb, kix, kbad = load_rows(kraw, ksc, rows, nb, kbf, kbi, ident)
            vb, vix, vbad = load_rows(vraw, vsc, rows, nb, vbf, vbi, ident)
            bad += kbad + vbad
            for r0 in range(0, Rp, 4):
                update4(qb, r0, kb, kix, vb, vix, nb, j, lim0, nq, sc, s, p, ib, fb, acc, m,
                        l)
            rows, nxt = nxt, rows
            j = jn
            nb = nn
        sink[i, h] = touch  # keeps the touches (their value is unused)
        finish(acc, m, l, o_part[i, h], lse_part[i, h])
        flags[i, h] = 1 if bad > 0 else 0
