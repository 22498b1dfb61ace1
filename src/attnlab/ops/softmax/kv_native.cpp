// Split-KV decode work items in every cache dtype: the native path of kv_decode.py.
//
// Same contract as kv_numba.decode_items (see kv_decode.py and kv_numba.py): the cache is
// flat rows, row(b, h, j) = h*hstride + table[b, j / bs]*pstride + j % bs; each work item
// (sequence b, keys j0..j1) and KV head h gives a partial (o, lse) for the Rp query rows
// of that head, rows ordered (group, query); row r sees keys < lim0 + r % nq with
// lim0 = lens[b] - nq + 1 (bottom-right causal). Statistics and accumulators are float32.
//
// Why a native kernel: numba's code keeps one accumulator per dot product and reduces it
// horizontally per key, and cannot hold a register tile (benchmarks/results/
// kernels_notes.md). Here the scores of 4 query rows x 4 keys are 16 vector accumulators
// over the head dim, reduced together by a shuffle tree (15 combines for 16 sums);
// p.V keeps a 4 x 64 accumulator tile in registers over a block of 32 keys. Stored rows
// are widened in registers as they are read (bf16: the 16 bits moved to the top of a
// float32; fp16: the ISA's half->float conversion; int8: code * float32 scale per token or
// per group of >= 16 channels), so nothing of the cache is copied. Written with GCC
// vector extensions: 512-bit vectors on AVX-512, split into AVX2 halves elsewhere.
//
// Non-finite data (docs/conventions.md section 2): a score that is NaN or +-inf, a
// non-finite partial (from a non-finite value row) or an int8 code -128 (a side-table
// entry) marks the work item (flags = 1). The caller recomputes every flagged (sequence,
// KV head) exactly, so this kernel only has to never hide one.
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <atomic>
#include <vector>

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint16_t v16u __attribute__((vector_size(32)));
typedef int16_t v16s __attribute__((vector_size(32)));
typedef int8_t v16b __attribute__((vector_size(16)));
typedef _Float16 v16h __attribute__((vector_size(32)));

static const int KB = 64;  // keys per block (a multiple of 16): 4 x 64 scores stay in L1

static inline v16f splat(float x) { return v16f{} + x; }
static inline v16f loadf(const float* p) { v16f v; memcpy(&v, p, 64); return v; }
static inline void storef(float* p, v16f v) { memcpy(p, &v, 64); }

// Loaders: chunk c (16 channels) of a stored row, widened to float32.
struct F32 {
    typedef float T;
    static const bool ROW = false;
    static const bool DP = false;
    static inline v16f ld(const T* row, const float*, const int*, int c) {
        return loadf(row + 16 * c);
    }
};
struct BF16 {
    typedef uint16_t T;
    static const bool ROW = false;
    static const bool DP = false;
    static inline v16f ld(const T* row, const float*, const int*, int c) {
#if defined(__AVX512F__)
        __m256i w = _mm256_loadu_si256((const __m256i*)(row + 16 * c));
        return (v16f)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16));
#else
        v16u w; memcpy(&w, row + 16 * c, 32);
        v16i i = __builtin_convertvector(w, v16i) << 16;
        return (v16f)i;
#endif
    }
};
// bf16 keys scored against bf16 queries with the ISA's bf16 dot product (AVX512-BF16
// vdpbf16ps: 32 products per instruction, exact bf16 x bf16 products summed in float32):
// used only when q's values are bf16 (q stored in bf16) and D is a multiple of 32.
struct BF16D : BF16 {
    static const bool DP = true;
};
struct F16 {
    typedef _Float16 T;
    static const bool ROW = false;
    static const bool DP = false;
    static inline v16f ld(const T* row, const float*, const int*, int c) {
#if defined(__AVX512F__)
        return (v16f)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(row + 16 * c)));
#else
        v16h h; memcpy(&h, row + 16 * c, 32);
        return __builtin_convertvector(h, v16f);
#endif
    }
};
static inline v16f codes(const int8_t* p) {  // 16 int8 codes as float32
#if defined(__AVX512F__)
    return (v16f)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#else
    v16b b; memcpy(&b, p, 16);
    return __builtin_convertvector(b, v16f);
#endif
}
struct I8T {  // int8 codes with one float32 scale per token: the scale is applied to the
    typedef int8_t T;  // score (keys) or to the probability (values), not per element
    static const bool ROW = true;
    static const bool DP = false;
    static inline v16f ld(const T* row, const float*, const int*, int c) {
        return codes(row + 16 * c);
    }
};
struct I8G {  // int8 codes with one float32 scale per group of channels (>= 16 of them)
    typedef int8_t T;
    static const bool ROW = false;
    static const bool DP = false;
    static inline v16f ld(const T* row, const float* sc, const int* grp, int c) {
        return codes(row + 16 * c) * sc[grp[c]];
    }
};

typedef int8_t v64b __attribute__((vector_size(64)));
// Running minimum of int8 codes (-128 marks a side-table entry): rows of n codes are
// folded into a 64-lane vector (tail bytes into a scalar), reduced once per work item.
struct MinCode {
    v64b mv = v64b{} + 0;
    int low = 0;
    inline void add(const int8_t* row, int n) {
        int i = 0;
        for (; i + 64 <= n; i += 64) {
            v64b b; memcpy(&b, row + i, 64);
            mv = b < mv ? b : mv;
        }
        for (; i < n; ++i) low = std::min(low, (int)row[i]);
    }
    inline int get() const {
        int m = low;
        for (int u = 0; u < 64; ++u) m = std::min(m, (int)mv[u]);
        return m;
    }
};

// Sum each of 16 vectors: lane l of the result is the sum of x[l]'s lanes (shuffle tree).
static inline v16f pairsum(v16f a, v16f b) {
    const v16i ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const v16i od = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    return __builtin_shuffle(a, b, ev) + __builtin_shuffle(a, b, od);
}
static inline v16f reduce16(const v16f* x) {
    // level k leaves vector i with 2^k partial sums of each of its 2^k sources, in source
    // order (pairsum interleaves as a0+a1, a2+a3, ..., b0+b1, ...): lane l = sum of x[l].
    v16f a0 = pairsum(x[0], x[1]), a1 = pairsum(x[2], x[3]), a2 = pairsum(x[4], x[5]),
         a3 = pairsum(x[6], x[7]), a4 = pairsum(x[8], x[9]), a5 = pairsum(x[10], x[11]),
         a6 = pairsum(x[12], x[13]), a7 = pairsum(x[14], x[15]);
    v16f b0 = pairsum(a0, a1), b1 = pairsum(a2, a3), b2 = pairsum(a4, a5), b3 = pairsum(a6, a7);
    return pairsum(pairsum(b0, b1), pairsum(b2, b3));
}

static inline float hmax(v16f v) {
    float m = v[0];
    for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
    return m;
}
static inline float hsum(v16f v) {
    float s = 0.f;
    for (int i = 0; i < 16; ++i) s += v[i];
    return s;
}

// exp(x) for x <= 0 or -inf (-> 0), NaN kept: 2^k * P(t), k = round(x / ln2), |t| <= ln2/2,
// degree-7 Taylor (relative error < 2e-7).
static inline v16f vexp(v16f x) {
    v16f xc = x > -87.f ? x : splat(-87.f);
    v16i k = __builtin_convertvector(xc * 1.4426950408889634f - 0.5f, v16i);
    v16f kf = __builtin_convertvector(k, v16f);
    v16f t = xc - kf * 0.693145751953125f;
    t = t - kf * 1.428606765330187e-06f;
    v16f e = splat(1.f / 5040.f);
    e = e * t + 1.f / 720.f;
    e = e * t + 1.f / 120.f;
    e = e * t + 1.f / 24.f;
    e = e * t + 1.f / 6.f;
    e = e * t + 0.5f;
    e = e * t + 1.f;
    e = e * t + 1.f;
    v16f two = (v16f)((k + 127) << 23);
    v16f p = e * two;
    p = x >= -87.f ? p : splat(0.f);
    return x != x ? x : p;  // NaN stays NaN
}

struct Args {
    const float* q;  // (B, Hkv, Rp, D)
    const void* k;   // (rows, D) stored
    const void* v;   // (rows, Dv)
    const float* ks;  // (rows, gk) int8 scales
    const float* vs;
    const int64_t* tbl;  // (B, W)
    int64_t W, hstride, pstride, bs;
    const int64_t* items;  // (n, 3)
    const int64_t* lens;   // (B,)
    int64_t n, Hkv, Rp, D, Dv, nq, gk, gv;
    int64_t nblocks;  // > 0: table entries a work item uses must lie in [0, nblocks)
    float scale;
    float* o_part;    // (n, Hkv, Rp, Dv)
    float* lse_part;  // (n, Hkv, Rp)
    uint8_t* flags;   // (n, Hkv)
    std::atomic<int64_t>* next;
    int kgrp[64], vgrp[64];  // chunk of 16 channels -> index of its int8 scale
};

template <class KL, class VL>
struct Kernel {
    typedef typename KL::T KT;
    typedef typename VL::T VT;

    // p.V for rows r0..r0+3: acc[r][e] += sum_j p[r][j] * v[j][e], NV vectors at a time.
    template <int NV>
    static inline void pv(const VT* const* vrow, const float* const* vsrow, const int* grp,
                          int nb, const float (*p)[KB], float* acc, int64_t Dv, int e0) {
        v16f t[4][NV];
        for (int r = 0; r < 4; ++r)
            for (int u = 0; u < NV; ++u) t[r][u] = loadf(acc + r * Dv + e0 + 16 * u);
        for (int jj = 0; jj < nb; ++jj) {
            v16f vv[NV];
            for (int u = 0; u < NV; ++u) vv[u] = VL::ld(vrow[jj], vsrow[jj], grp, e0 / 16 + u);
            for (int r = 0; r < 4; ++r) {
                const float pr = p[r][jj];
                for (int u = 0; u < NV; ++u) t[r][u] += pr * vv[u];
            }
        }
        for (int r = 0; r < 4; ++r)
            for (int u = 0; u < NV; ++u) storef(acc + r * Dv + e0 + 16 * u, t[r][u]);
    }

    static void item(const Args& a, int64_t it, std::vector<float>& accbuf) {
        const int64_t i = it / a.Hkv, h = it - (it / a.Hkv) * a.Hkv;
        const int64_t b = a.items[3 * i], j0 = a.items[3 * i + 1], j1 = a.items[3 * i + 2];
        const int64_t Rp = a.Rp, D = a.D, Dv = a.Dv, nq = a.nq, bs = a.bs;
        const int64_t lim0 = a.lens[b] - nq + 1;
        const int nc = (int)(D / 16);
        const int* kgrp = a.kgrp;  // chunk of 16 channels -> its scale (int8 groups)
        const int* vgrp = a.vgrp;
        const KT* K = (const KT*)a.k;
        const VT* V = (const VT*)a.v;
        const int64_t* tb = a.tbl + b * a.W;
        float* acc = accbuf.data();  // (Rp, Dv), then m (Rp,) and l (Rp,)
        float* m = acc + Rp * Dv;
        float* l = m + Rp;
        std::fill(acc, acc + Rp * Dv, 0.f);
        std::fill(m, m + Rp, -INFINITY);
        std::fill(l, l + Rp, 0.f);
        const float* qb = a.q + (b * a.Hkv + h) * Rp * D;
        uint16_t* qh = (uint16_t*)(l + Rp);  // bf16 words of q (dot-product keys only)
        if (KL::DP) {  // q holds bf16 values: its float32 bits' top half is exact
            for (int64_t e = 0; e < Rp * D; ++e) {
                uint32_t w;
                memcpy(&w, qb + e, 4);
                qh[e] = (uint16_t)(w >> 16);
            }
        }
        const KT* krow[KB];
        const VT* vrow[KB];
        const float* ksrow[KB];
        const float* vsrow[KB];
        float s[4][KB] __attribute__((aligned(64)));
        float p[4][KB] __attribute__((aligned(64)));
        MinCode low;
        v16f chk = v16f{};
        if (a.nblocks > 0 && j1 > j0) {  // the entries this item reads, checked first
            for (int64_t e = j0 / bs; e <= (j1 - 1) / bs; ++e)
                if (tb[e] < 0 || tb[e] >= a.nblocks) {
                    a.flags[it] = 2;  // the caller raises; nothing of this item is read
                    return;
                }
        }
        // rows through the block table, walked incrementally: (page, off) of the next key
        int64_t page = j0 / bs, off = j0 - (j0 / bs) * bs;
        int64_t base = h * a.hstride + tb[page] * a.pstride;
#ifndef KV_LOC
#define KV_LOC 2
#endif
#ifndef KV_PFD
#define KV_PFD 2
#endif
        // prefetch distance in blocks, into L2 (measured: 1 and 2 alike, 6 slower; none,
        // or spread over the block's score groups, alike at 128K contiguous; into L1 or
        // non-temporal slower than into L2)
        const int PFD = KV_PFD;
        // rows of the blocks ahead: block t's rows sit in ring[t % (PFD + 1)]; block t + PFD
        // is looked up and prefetched (into L2) while block t runs, so the misses of
        // scattered pages overlap the work of PFD blocks
        int64_t ring[PFD + 1][KB];
        int ringn[PFD + 1];
        const int klines = (int)((D * sizeof(KT) + 63) / 64);
        const int vlines = (int)((Dv * sizeof(VT) + 63) / 64);
        auto lookup = [&](int64_t js, int64_t* rows) {
            const int nbk = (int)std::max<int64_t>(0, std::min<int64_t>(KB, j1 - js));
            for (int jj = 0; jj < nbk; ++jj) {
                rows[jj] = base + off;
                if (++off == bs && js + jj + 1 < j1) {  // a table entry is read only if used
                    off = 0;
                    base = h * a.hstride + tb[++page] * a.pstride;
                }
            }
            return nbk;
        };
        auto prefetch = [&](const int64_t* rows, int n) {
            for (int jj = 0; jj < n; ++jj) {
                const char* kp = (const char*)(K + rows[jj] * D);
                const char* vp = (const char*)(V + rows[jj] * Dv);
                for (int c = 0; c < klines; ++c) __builtin_prefetch(kp + 64 * c, 0, KV_LOC);
                for (int c = 0; c < vlines; ++c) __builtin_prefetch(vp + 64 * c, 0, KV_LOC);
                if (a.ks) __builtin_prefetch(a.ks + rows[jj] * a.gk, 0, 2);
                if (a.vs) __builtin_prefetch(a.vs + rows[jj] * a.gv, 0, 2);
            }
        };
        for (int t = 0; t < PFD; ++t) {
            ringn[t] = lookup(j0 + t * KB, ring[t]);
            prefetch(ring[t], ringn[t]);
        }
        for (int64_t j = j0, blk = 0; j < j1; j += KB, ++blk) {
            const int cur = (int)(blk % (PFD + 1)), ahead = (int)((blk + PFD) % (PFD + 1));
            const int nb = ringn[cur];
            for (int jj = 0; jj < nb; ++jj) {
                const int64_t row = ring[cur][jj];
                krow[jj] = K + row * D;
                vrow[jj] = V + row * Dv;
                ksrow[jj] = a.ks ? a.ks + row * a.gk : nullptr;
                vsrow[jj] = a.vs ? a.vs + row * a.gv : nullptr;
            }
            ringn[ahead] = lookup(j + PFD * KB, ring[ahead]);
            prefetch(ring[ahead], ringn[ahead]);
            if (sizeof(KT) == 1)  // int8: an entry coded -128 sends the item to the exact path
                for (int jj = 0; jj < nb; ++jj) {
                    low.add((const int8_t*)krow[jj], (int)D);
                    low.add((const int8_t*)vrow[jj], (int)Dv);
                }
            float vsc[KB] __attribute__((aligned(64)));  // per-token value scales
            if (VL::ROW)
                for (int jj = 0; jj < KB; ++jj) vsc[jj] = jj < nb ? vsrow[jj][0] : 0.f;
            for (int64_t r0 = 0; r0 < Rp; r0 += 4) {
                const float* q0 = qb + r0 * D;
                for (int jg = 0; jg < nb; jg += 4) {  // 4 rows x 4 keys per pass over D
                    v16f x[16];
                    for (int u = 0; u < 16; ++u) x[u] = v16f{};
                    const int kk = std::min(4, nb - jg);
                    const KT* kr[4];
                    const float* kq[4];
                    for (int u = 0; u < 4; ++u) {  // a short group repeats its last key
                        kr[u] = krow[jg + std::min(u, kk - 1)];
                        kq[u] = ksrow[jg + std::min(u, kk - 1)];
                    }
                    if constexpr (KL::DP) {
#if defined(__AVX512BF16__)
                        const uint16_t* qh0 = qh + r0 * D;
                        for (int c = 0; c < nc / 2; ++c) {  // 32 channels per instruction
                            __m512i kv[4];
                            for (int u = 0; u < 4; ++u)
                                kv[u] = _mm512_loadu_si512((const void*)(kr[u] + 32 * c));
                            for (int r = 0; r < 4; ++r) {
                                const __m512i qv =
                                    _mm512_loadu_si512((const void*)(qh0 + r * D + 32 * c));
                                for (int u = 0; u < 4; ++u)
                                    x[4 * r + u] = (v16f)_mm512_dpbf16_ps(
                                        (__m512)x[4 * r + u], (__m512bh)qv, (__m512bh)kv[u]);
                            }
                        }
#endif
                    } else {
                        for (int c = 0; c < nc; ++c) {
                            v16f kv[4];
                            for (int u = 0; u < 4; ++u) kv[u] = KL::ld(kr[u], kq[u], kgrp, c);
                            for (int r = 0; r < 4; ++r) {
                                v16f qv = loadf(q0 + r * D + 16 * c);
                                for (int u = 0; u < 4; ++u) x[4 * r + u] += qv * kv[u];
                            }
                        }
                    }
                    v16f sv = reduce16(x) * a.scale;  // lane 4r + u: row r, key jg + u
                    if (KL::ROW) {  // per-token int8 scales multiply the scores
                        const v16f rs = {kq[0][0], kq[1][0], kq[2][0], kq[3][0],
                                         kq[0][0], kq[1][0], kq[2][0], kq[3][0],
                                         kq[0][0], kq[1][0], kq[2][0], kq[3][0],
                                         kq[0][0], kq[1][0], kq[2][0], kq[3][0]};
                        sv *= rs;
                    }
                    chk += sv * 0.f;  // NaN if any score is NaN or +-inf
                    for (int r = 0; r < 4; ++r)
                        for (int u = 0; u < kk; ++u) s[r][jg + u] = sv[4 * r + u];
                }
                if (nb < KB || j + KB > lim0)  // masked slots and the causal tail
                    for (int r = 0; r < 4; ++r) {
                        const int64_t lim = lim0 + (r0 + r) % nq;
                        for (int jj = 0; jj < KB; ++jj)
                            if (jj >= nb || j + jj >= lim) s[r][jj] = -INFINITY;
                    }
                for (int r = 0; r < 4; ++r) {  // online softmax over the block
                    const int64_t R = r0 + r;
                    const int nv = (nb + 15) / 16;  // vectors of scores in use
                    v16f sm = loadf(s[r]);
                    for (int u = 1; u < nv; ++u) {
                        const v16f su = loadf(s[r] + 16 * u);
                        sm = su > sm ? su : sm;
                    }
                    const float mb = hmax(sm);
                    const float mn = std::max(m[R], mb);
                    if (mn == -INFINITY) {
                        for (int u = 0; u < nv; ++u) storef(p[r] + 16 * u, v16f{});
                        continue;
                    }
                    if (mn > m[R]) {
                        const float alpha = expf(m[R] - mn);
                        l[R] *= alpha;
                        float* ar = acc + R * Dv;
                        for (int64_t e = 0; e < Dv; e += 16) storef(ar + e, loadf(ar + e) * alpha);
                        m[R] = mn;
                    }
                    v16f ps = v16f{};
                    for (int u = 0; u < nv; ++u) {
                        v16f pu = vexp(loadf(s[r] + 16 * u) - mn);
                        ps += pu;
                        if (VL::ROW) pu *= loadf(vsc + 16 * u);  // per-token int8 value scales
                        storef(p[r] + 16 * u, pu);
                    }
                    l[R] += hsum(ps);
                }
                float* a4 = acc + r0 * Dv;
                int64_t e0 = 0;
                for (; e0 + 64 <= Dv; e0 += 64) pv<4>(vrow, vsrow, vgrp, nb, p, a4, Dv, (int)e0);
                for (; e0 < Dv; e0 += 16) pv<1>(vrow, vsrow, vgrp, nb, p, a4, Dv, (int)e0);
            }
        }
        // finish: o = acc / l, lse = m + log l; a row with no visible key gets 0 and -inf
        float* o = a.o_part + it * Rp * Dv;
        float* lse = a.lse_part + it * Rp;
        for (int64_t r = 0; r < Rp; ++r) {
            if (m[r] == -INFINITY && l[r] == 0.f) {
                std::fill(o + r * Dv, o + (r + 1) * Dv, 0.f);
                lse[r] = -INFINITY;
            } else {
                const float inv = 1.f / l[r];
                for (int64_t e = 0; e < Dv; ++e) o[r * Dv + e] = acc[r * Dv + e] * inv;
                lse[r] = m[r] + logf(l[r]);
            }
        }
        // flagged: an int8 code -128, a non-finite score, or a non-finite partial (a
        // non-finite value row, or a NaN/+inf lse)
        bool bad = sizeof(KT) == 1 && low.get() == -128;
        for (int u = 0; u < 16; ++u) bad |= chk[u] != chk[u];
        float fin = 0.f;
        for (int64_t r = 0; r < Rp; ++r) {
            bad |= lse[r] != lse[r] || lse[r] == INFINITY;
            for (int64_t e = 0; e < Dv; ++e) fin += o[r * Dv + e] * 0.f;
        }
        bad |= fin != fin;
        a.flags[it] = bad ? 1 : 0;
    }

    static void* worker(void* p) {
        const Args& a = *(const Args*)p;
        std::vector<float> acc(a.Rp * a.Dv + 2 * a.Rp + (a.Rp * a.D + 1) / 2);
        const int64_t total = a.n * a.Hkv;
        for (;;) {
            const int64_t it = a.next->fetch_add(1);
            if (it >= total) break;
            item(a, it, acc);
        }
        return nullptr;
    }
};

template <class KL, class VL>
static void run(Args& a, int threads) {
    std::atomic<int64_t> next(0);
    a.next = &next;
    const int64_t total = a.n * a.Hkv;
    threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, total));
    std::vector<pthread_t> tid(threads - 1);
    int started = 0;
    for (int t = 0; t < threads - 1; ++t)
        if (pthread_create(&tid[t], nullptr, &Kernel<KL, VL>::worker, &a) == 0) ++started;
    Kernel<KL, VL>::worker(&a);  // the calling thread works too
    for (int t = 0; t < started; ++t) pthread_join(tid[t], nullptr);
}

extern "C" int attnlab_kv_decode(int dtype, const float* q, const void* k, const void* v,
                                 const float* ks, const float* vs, const int64_t* tbl,
                                 int64_t W, int64_t hstride, int64_t pstride, int64_t bs,
                                 const int64_t* items, int64_t n, const int64_t* lens,
                                 int64_t Hkv, int64_t Rp, int64_t D, int64_t Dv, int64_t nq,
                                 int64_t gk, int64_t gv, int64_t nblocks, float scale,
                                 float* o_part,
                                 float* lse_part, uint8_t* flags, int threads) {
    // dtype: 0 float32, 1 bfloat16, 2 float16, 3 int8, 4 bfloat16 with q holding bf16
    // values (the ISA's bf16 dot product where present). nblocks > 0: a work item whose
    // table entries leave [0, nblocks) is not computed and gets flags = 2. Returns 0, or -1 on a shape the
    // kernel does not take (head dims not multiples of 16, int8 groups under 16 channels).
    if (D % 16 || Dv % 16 || Rp % 4 || D <= 0 || Dv <= 0 || D > 1024 || Dv > 1024) return -1;
    if (dtype == 3 && (gk <= 0 || gv <= 0 || D % gk || Dv % gv || (D / gk) % 16 ||
                       (Dv / gv) % 16))
        return -1;
    Args a{q, k, v, ks, vs, tbl, W, hstride, pstride, bs, items, lens, n, Hkv, Rp, D, Dv, nq,
           gk, gv, nblocks, scale, o_part, lse_part, flags, nullptr, {}, {}};
    for (int c = 0; c < 64; ++c) {
        a.kgrp[c] = (int)(16 * c / (D / std::max<int64_t>(gk, 1)));
        a.vgrp[c] = (int)(16 * c / (Dv / std::max<int64_t>(gv, 1)));
    }
    switch (dtype) {
        case 0: run<F32, F32>(a, threads); return 0;
        case 1: run<BF16, BF16>(a, threads); return 0;
        case 4:  // bf16 cache, q holding bf16 values
#if defined(__AVX512BF16__)
            if (D % 32 == 0) {
                run<BF16D, BF16>(a, threads);
                return 0;
            }
#endif
            run<BF16, BF16>(a, threads);
            return 0;
        case 2: run<F16, F16>(a, threads); return 0;
        case 3:
            if (gk == 1 && gv == 1) run<I8T, I8T>(a, threads);
            else if (gk == 1) run<I8T, I8G>(a, threads);
            else if (gv == 1) run<I8G, I8T>(a, threads);
            else run<I8G, I8G>(a, threads);
            return 0;
    }
    return -1;
}
