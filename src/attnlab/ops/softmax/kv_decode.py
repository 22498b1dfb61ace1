"""Split-KV decode in every cache dtype: fp32, bf16, fp16 and int8 K/V, contiguous or
paged, many sequences of ragged lengths in one call (Flash-Decoding, Dao, Haziza, Massa,
Sizov 2023; PagedAttention, Kwon et al. SOSP 2023).

The cache is described once as flat rows plus a block table (`KVRows`); a contiguous
cache `(B, Hkv, N, D)` is one block per sequence, a paged pool `(Hkv, num_blocks, bs, D)`
is read through its block tables directly (no gather of the history). Each sequence's keys
[start, len) are cut into chunks; every (chunk, KV head) work item yields a partial
(o_c, lse_c), merged with `merge_many` (docs/conventions.md §3). Query i of sequence b
sits at position len_b − Nq + i and sees keys start_b ≤ j ≤ that position (bottom-right
causal, §2); slots outside are never read.

Stored dtypes are widened inside the kernel, a key block at a time: bf16/fp16 from their
raw 16-bit words, int8 as code · float32 scale (per token `(…, N, 1)` or per group
`(…, N, D/g)`, the §4 layout) — the dequantised history is never materialised. Statistics
are float32. Paths: the numba kernel (`kv_numba.py`, extra `fast`) and a torch form of the
same chunks (used when numba is missing; tested equal).

Non-finite data follow §2 exactly: a work item whose partial comes out non-finite, or that
met an int8 code −128 (an entry kept in the side table), is recomputed for its whole
(sequence, KV head) by the float64 reference on the exact values (side table restored;
without a side table a −128 code reads as NaN, as `dequantize_symmetric_int8` gives).
Cost: O(Σ_b len_b·Hq·Nq·D) time, one read of each visible K/V row; extra memory
O(items·Hkv·G·Nq·Dv).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch

from ..._checks import check_positive_int, check_tensor
from .merge import merge_many

DEFAULT_CHUNK = 8192  # keys per work item at most; fewer when items would not fill threads
STORED = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
IMPLS = ("auto", "native", "numba", "torch")


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


@dataclass
class KVRows:
    """A KV cache as flat rows: row(b, h, j) = h·hstride + table[b, j // bs]·pstride + j % bs.

    k (rows, D), v (rows, Dv) in the stored dtype; k_scale (rows, gk), v_scale (rows, gv)
    float32 for int8 codes; side tables (flat row (n,), column (n,), value (n,)) of the
    non-finite entries of int8 codes, or None."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None
    table: torch.Tensor  # (B, W) int64
    hstride: int
    pstride: int
    bs: int
    k_side: tuple | None = None
    v_side: tuple | None = None
    nblocks: int = 0  # > 0: the native kernel checks the entries it reads lie in [0, nblocks)

    def rows(self, b: int, h: int, j0: int, j1: int) -> torch.Tensor:
        """Flat row ids of keys j0..j1-1 of sequence b, head h: (j1 − j0,) int64."""
        j = torch.arange(j0, j1)
        return h * self.hstride + self.table[b, j // self.bs] * self.pstride + j % self.bs

    def read(self, which: str, rows: torch.Tensor, exact: bool = False):
        """Rows widened to float32 (float64 when exact, side-table values restored) and the
        count of int8 codes −128 among them."""
        raw = getattr(self, which).index_select(0, rows)  # (n, D)
        sc = getattr(self, which + "_scale")
        dt = torch.float64 if exact else torch.float32
        if raw.dtype != torch.int8:
            return raw.to(dt), 0
        s = sc.index_select(0, rows).to(dt)  # (n, g)
        g = raw.shape[1] // s.shape[1]
        x = raw.to(dt) * s.repeat_interleave(g, dim=1)  # (n, D)
        bad = raw == -128
        x = x.masked_fill(bad, float("nan"))
        side = getattr(self, which + "_side")
        if exact and side is not None and bool(bad.any()):
            srow, scol, sval = side
            order = torch.argsort(rows)
            pos = torch.searchsorted(rows[order], srow).clamp_(max=rows.numel() - 1)
            hit = rows[order][pos] == srow
            x[order[pos[hit]], scol[hit]] = sval[hit].to(dt)
        return x, int(bad.sum())


def as_numpy_rows(x: torch.Tensor):
    """(rows, D) tensor -> numpy array the kernel reads: bf16 as uint16 words, fp16 as
    int16 words, float32/int8 as is."""
    import numpy as np
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    if x.dtype == torch.float16:
        return x.view(torch.int16).numpy()
    return x.numpy()


def check_kv_dtypes(k, v, k_scale, v_scale, names=("k", "v")):
    """Stored dtypes: one of STORED, the same for k and v; int8 needs float32 scales whose
    group count divides the head dim."""
    if k.dtype not in STORED or v.dtype != k.dtype:
        raise TypeError(f"{names[0]} ({k.dtype}) and {names[1]} ({v.dtype}) must share one "
                        f"stored dtype of {[str(d) for d in STORED]}")
    if k.dtype != torch.int8:
        if k_scale is not None or v_scale is not None:
            raise ValueError("k_scale/v_scale are for int8 codes; got float "
                             f"{names[0]}/{names[1]} ({k.dtype})")
        return
    for name, x, sc in ((names[0], k, k_scale), (names[1], v, v_scale)):
        if sc is None:
            raise ValueError(f"{name} holds int8 codes: {name}_scale (float32, shape "
                             f"{tuple(x.shape[:-1])} + (groups,)) is required")
        check_tensor(f"{name}_scale", sc, x.ndim)
        if sc.dtype != torch.float32:
            raise TypeError(f"{name}_scale dtype ({sc.dtype}) must be float32")
        if sc.shape[:-1] != x.shape[:-1] or sc.shape[-1] < 1 or x.shape[-1] % sc.shape[-1]:
            raise ValueError(f"{name}_scale shape {tuple(sc.shape)} must be "
                             f"{tuple(x.shape[:-1])} + (groups,) with groups dividing "
                             f"{x.shape[-1]}")


def _items(lens, starts, chunk, hkv, threads):
    """Work items (sequence, first key, end key) over each sequence's keys [start, len),
    at most `chunk` keys each, boundaries at multiples of the chunk; the chunk shrinks
    (to 512) until the items fill the threads 8 times. (n, 3) int64, items of a sequence
    consecutive and in key order."""
    ls, ss = lens.tolist(), starts.tolist()  # a loop over Python ints: no small tensor ops
    total = sum(max(e - b, 0) for b, e in zip(ss, ls))
    while chunk > 512 and hkv * -(-total // chunk) < 8 * threads:
        chunk //= 2
    out = []
    for b, (j, e) in enumerate(zip(ss, ls)):
        while j < e:
            j1 = min((j // chunk + 1) * chunk, e)
            out.append((b, j, j1))
            j = j1
    return torch.tensor(out, dtype=torch.int64).reshape(-1, 3)


def _torch_item(qb, kv: KVRows, b, j0, j1, lim0, nq, scale):
    """The kernel's work item in torch: qb (Hkv, R, D) float32 -> (o (Hkv, R, Dv),
    lse (Hkv, R), flags (Hkv,)) over keys j0..j1-1; row r sees keys < lim0 + r % nq."""
    Hkv, R, _ = qb.shape
    os, ls, fl = [], [], []
    vis = torch.arange(j0, j1)[None, :] < (lim0 + torch.arange(R) % nq)[:, None]  # (R, n)
    for h in range(Hkv):
        rows = kv.rows(b, h, j0, j1)
        k, kbad = kv.read("k", rows)
        v, vbad = kv.read("v", rows)
        s = (qb[h] @ k.T) * scale  # (R, n)
        s = s.masked_fill(~vis, float("-inf"))
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # NaN/+inf stay
        p = torch.exp(s - m)
        l = p.sum(-1, keepdim=True)
        empty = l == 0
        o = (p @ v) / torch.where(empty, torch.ones_like(l), l)
        lse = torch.where(empty, float("-inf"), m + torch.log(l)).squeeze(-1)
        os.append(o)
        ls.append(lse)
        fl.append(kbad + vbad > 0)
    return torch.stack(os), torch.stack(ls), torch.tensor(fl)


def _exact(q_rows, kv: KVRows, b, h, start, length, nq, scale):
    """(o (R, Dv), lse (R,)) of one (sequence, KV head) by the float64 reference."""
    from ...masks import causal
    from .reference import attention_reference
    rows = kv.rows(b, h, start, length)
    k, _ = kv.read("k", rows, exact=True)
    v, _ = kv.read("v", rows, exact=True)
    G = q_rows.shape[0] // nq
    qd = q_rows.double().reshape(1, G, nq, -1)  # rows ordered (group, query)
    q_pos = torch.arange(nq) + (length - nq)
    o, lse = attention_reference(qd, k[None, None], v[None, None], mask=causal(),
                                 scale=scale, q_pos=q_pos, kv_pos=torch.arange(start, length),
                                 return_lse=True)
    return o.reshape(G * nq, -1).float(), lse.reshape(-1).float()


def decode_rows(q: torch.Tensor, kv: KVRows, lens: torch.Tensor, starts: torch.Tensor, *,
                hkv: int, scale: float, chunk: int, impl: str):
    """The shared core: q (B, Hq, Nq, D) against a KVRows cache. Returns (out (B, Hq, Nq,
    Dv) in q's dtype, lse (B, Hq, Nq) float32). Callers validate."""
    B, Hq, Nq, D = q.shape
    Dv = kv.v.shape[1]
    G = Hq // hkv
    R = G * Nq
    Rp = -(-R // 4) * 4  # rows padded to the kernel's 4-row tiles
    qg = torch.zeros(B, hkv, Rp, D)
    qg[:, :, :R] = q.float().reshape(B, hkv, R, D)  # (B, Hkv, G·Nq, D) rows (group, query)
    items = _items(lens, starts, chunk, hkv, torch.get_num_threads())
    n = items.shape[0]
    lim0 = lens - Nq + 1
    if impl == "native" and not _native_ok(kv):
        impl = "numba" if numba_available() else "torch"  # a shape the C++ kernel refuses
    if impl == "native":
        from . import kv_native
        o_part = torch.empty(n, hkv, Rp, Dv)  # (items, Hkv, Rp, Dv)
        lse_part = torch.empty(n, hkv, Rp)
        flags = torch.zeros(n, hkv, dtype=torch.uint8)
        if n and not kv_native.run(qg, kv.k, kv.v, kv.k_scale, kv.v_scale, kv.table,
                                   int(kv.hstride), int(kv.pstride), int(kv.bs), items, lens,
                                   int(Nq), float(scale), o_part, lse_part, flags,
                                   torch.get_num_threads(), q.dtype == torch.bfloat16,
                                   kv.nblocks):
            raise RuntimeError("the native decode kernel refused a shape _native_ok accepted")
        if kv.nblocks and bool((flags == 2).any()):
            check_table_entries(kv.table, lens, kv.bs, kv.nblocks)  # raises, naming the range
        flags = flags.bool()
    elif impl == "numba":
        import numpy as np

        from .kv_numba import decode_items
        o_part = torch.empty(n, hkv, Rp, Dv)  # (items, Hkv, Rp, Dv)
        lse_part = torch.empty(n, hkv, Rp)
        flags = torch.zeros(n, hkv, dtype=torch.uint8)
        dummy = torch.ones(1, 1)
        if n:
            decode_items(qg.numpy(), as_numpy_rows(kv.k), as_numpy_rows(kv.v),
                         (kv.k_scale if kv.k_scale is not None else dummy).numpy(),
                         (kv.v_scale if kv.v_scale is not None else dummy).numpy(),
                         kv.table.numpy(), int(kv.hstride), int(kv.pstride), int(kv.bs),
                         items.numpy(), lens.numpy().astype(np.int64), int(Nq), float(scale),
                         o_part.numpy(), lse_part.numpy(), flags.numpy(),
                         torch.empty(n, hkv).numpy())
        flags = flags.bool()
    else:
        parts = [_torch_item(qg[b], kv, b, j0, j1, int(lim0[b]), Nq, scale)
                 for b, j0, j1 in items.tolist()]
        o_part = torch.stack([x[0] for x in parts]) if parts else torch.empty(0, hkv, Rp, Dv)
        lse_part = torch.stack([x[1] for x in parts]) if parts else torch.empty(0, hkv, Rp)
        flags = torch.stack([x[2] for x in parts]) if parts else torch.zeros(0, hkv, dtype=bool)
    # items of one sequence are consecutive: place them as (C, B, …) slots and merge
    seq = items[:, 0]
    counts = torch.bincount(seq, minlength=B)
    if n == B and bool((counts == 1).all()):  # one item per sequence: nothing to merge
        o, lse = o_part, lse_part
    else:
        first = torch.zeros(B + 1, dtype=torch.int64)
        first[1:] = counts.cumsum(0)
        slot = torch.arange(n) - first[seq]
        C = max(int(slot.max()) + 1, 1) if n else 1
        O = torch.zeros(C, B, hkv, Rp, Dv)
        L = torch.full((C, B, hkv, Rp), float("-inf"))
        O[slot, seq] = o_part
        L[slot, seq] = lse_part
        o, lse = merge_many(list(O.unbind(0)), list(L.unbind(0)))  # (B, Hkv, Rp, Dv), (B, Hkv, Rp)
    # exact recomputation where a partial went non-finite or met an int8 −128 code (the
    # native kernel flags both itself)
    bad = flags if impl == "native" else flags | torch.isnan(lse_part[..., :R]).any(-1) | (
        lse_part[..., :R] == float("inf")).any(-1) | ~torch.isfinite(
        o_part[:, :, :R]).all(-1).all(-1)  # (items, Hkv)
    if bool(bad.any()):
        if o is o_part:
            o, lse = o.clone(), lse.clone()
        for b, h in sorted({(int(seq[i]), int(h)) for i, h in bad.nonzero().tolist()}):
            o[b, h, :R], lse[b, h, :R] = _exact(qg[b, h, :R], kv, b, h, int(starts[b]),
                                                int(lens[b]), Nq, scale)
    out = o[:, :, :R].reshape(B, Hq, Nq, Dv).to(q.dtype)  # (B, Hkv, G, Nq, Dv) -> heads
    return out, lse[:, :, :R].reshape(B, Hq, Nq)


def _side_flat(side, shape, name):
    """Side table (idx (n, ndim) int, values (n,)) in the codes' coordinates -> flat
    (row (n,), column (n,), value (n,))."""
    if side is None:
        return None
    idx, val = side
    idx = torch.as_tensor(idx).long()
    if idx.ndim != 2 or idx.shape[1] != len(shape) or val.shape != (idx.shape[0],):
        raise ValueError(f"{name} must be (indices (n, {len(shape)}), values (n,)), got "
                         f"{tuple(idx.shape)} and {tuple(val.shape)}")
    row = torch.zeros(idx.shape[0], dtype=torch.int64)
    for dim, size in enumerate(shape[:-1]):
        row = row * size + idx[:, dim]
    return row, idx[:, -1], val.float()


def check_table_entries(tables: torch.Tensor, lens: torch.Tensor, bs: int, nblocks: int):
    """Block-table entries a sequence uses (its first ceil(len / bs)) must lie in
    [0, nblocks): ValueError naming the range found otherwise."""
    W = tables.shape[1]
    used = torch.arange(W)[None, :] < (-(-lens // bs))[:, None]  # (B, W)
    if bool((used & ((tables < 0) | (tables >= nblocks))).any()):  # one pass, one sync
        raise ValueError(f"block_tables entries in use must lie in [0, {nblocks}), got range "
                         f"[{int(tables[used].min())}, {int(tables[used].max())}]")


def native_path(impl: str, kv: KVRows) -> bool:
    """Whether `decode_rows` will run the native kernel for this resolved impl and cache."""
    return impl == "native" and _native_ok(kv)


def _native_ok(kv: KVRows) -> bool:
    """Whether the C++ kernel takes this cache (head dims multiples of 16; int8 groups of
    ≥ 16 channels) with rows it can address (unit-stride rows, contiguous scales)."""
    from . import kv_native
    int8 = kv.k.dtype == torch.int8
    if not kv_native.supports(kv.k.shape[1], kv.v.shape[1],
                              kv.k_scale.shape[1] if int8 else 1,
                              kv.v_scale.shape[1] if int8 else 1, int8):
        return False
    ts = [kv.k, kv.v] + ([kv.k_scale, kv.v_scale] if int8 else [])
    return all(t.stride() == (t.shape[1], 1) for t in ts)


def choose_impl(impl: str) -> str:
    """'auto' → native (C++, built on first use) if it builds here, else numba if
    installed, else torch."""
    if impl not in IMPLS:
        raise ValueError(f"impl ({impl!r}) must be one of {IMPLS}")
    if impl == "numba" and not numba_available():
        raise ValueError("impl 'numba' needs numba installed (extra 'fast'); use 'auto'")
    if impl == "native":
        from . import kv_native
        if not kv_native.available():
            raise ValueError(f"impl 'native' is unavailable here ({kv_native.why_unavailable()})"
                             "; use 'auto'")
    if impl != "auto":
        return impl
    from . import kv_native
    if kv_native.available():
        return "native"
    return "numba" if numba_available() else "torch"


def _flat_view(x: torch.Tensor):
    """(B, H, N, D) whose rows are unit-stride -> ((rows, D) flat tensor, rows per (b, h)
    slab, i.e. the N' ≥ N of the buffer the view was cut from), copying only if needed."""
    B, H, N, D = x.shape
    st = x.stride()
    if st[3] == 1 and st[2] == D and st[1] >= N * D and st[1] % D == 0 \
            and (B == 1 or st[0] == H * st[1]) and B * H * N:
        n_full = st[1] // D
        flat = torch.as_strided(x, (B * H * n_full, D), (D, 1))  # the buffer's rows
        return flat, n_full
    x = x.contiguous()
    return x.reshape(-1, D), N


def kv_decode(q, k, v, *, lens=None, starts=None, k_scale=None, v_scale=None,
              k_nonfinite=None, v_nonfinite=None, scale: float | None = None,
              chunk: int = DEFAULT_CHUNK, impl: str = "auto", return_lse: bool = False):
    """Decode attention of q (B, Hq, Nq, D) over a contiguous cache k (B, Hkv, N, D),
    v (B, Hkv, N, Dv) stored in float32, bfloat16, float16 or int8 codes.

    lens (B,) keys held per sequence (default N; ragged batches), starts (B,) first key a
    sequence's queries see (default 0: left padding or a window). int8 codes need
    k_scale (B, Hkv, N, gk), v_scale (B, Hkv, N, gv) float32 (gk = 1: per token; else
    groups of D/gk channels) and may come with side tables `k_nonfinite` = (indices (n, 4)
    as (b, h, t, d), values (n,)) of the entries coded −128. Views cut from a larger
    cache buffer along N (e.g. `cache[:, :, :L]`) are read in place. Returns out (B, Hq,
    Nq, Dv) in q's dtype, or (out, lse) with lse (B, Hq, Nq) float32.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 4)
    B, Hq, _, D = q.shape
    Bk, Hkv, N, Dk = k.shape
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"q dtype ({q.dtype}) must be float32, bfloat16 or float16")
    if Bk != B or v.shape[:3] != k.shape[:3] or Dk != D:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (B={B}, Hkv, N, "
                         f"D={D}) with one (B, Hkv, N)")
    if Hq == 0 or Hkv == 0 or D == 0 or Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a positive multiple of k/v heads ({Hkv}); "
                         f"head_dim ({D}) must be positive")
    check_kv_dtypes(k, v, k_scale, v_scale)
    chunk = check_positive_int("chunk", chunk)
    impl = choose_impl(impl)
    lens = _lengths("lens", lens, B, N, N)
    starts = _lengths("starts", starts, B, N, 0)
    if bool((starts > lens).any()):
        raise ValueError(f"starts {starts.tolist()} must not exceed lens {lens.tolist()}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale ({scale}) must be a finite float > 0")
    ts = (k, v) if k.dtype != torch.int8 else (k, v, k_scale, v_scale)  # one row layout
    flat = [_flat_view(t) for t in ts]
    if len({n for _, n in flat}) > 1:  # views of differently sized buffers: copy them
        flat = [(t.contiguous().reshape(-1, t.shape[3]), N) for t in ts]
    kf, vf = flat[0][0], flat[1][0]
    ks, vs = (flat[2][0], flat[3][0]) if len(flat) == 4 else (None, None)
    nk = flat[0][1]
    kv = KVRows(kf, vf, ks, vs, torch.arange(B).reshape(B, 1), nk, Hkv * nk, nk,
                _side_flat(k_nonfinite, (B, Hkv, nk, D), "k_nonfinite"),
                _side_flat(v_nonfinite, (B, Hkv, nk, v.shape[3]), "v_nonfinite"))
    out, lse = decode_rows(q, kv, lens, starts, hkv=Hkv, scale=scale, chunk=chunk, impl=impl)
    return (out, lse) if return_lse else out


def _lengths(name, x, B, hi, default):
    """Integer (B,) tensor in [0, hi]; `default` when x is None."""
    if x is None:
        return torch.full((B,), default, dtype=torch.int64)
    x = torch.as_tensor(x)
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.shape != (B,):
        raise ValueError(f"{name} must be an integer tensor of shape ({B},), got "
                         f"{x.dtype} {tuple(x.shape)}")
    x = x.long()
    if B and (int(x.min()) < 0 or int(x.max()) > hi):
        raise ValueError(f"{name} must lie in [0, {hi}], got {x.tolist()}")
    return x
