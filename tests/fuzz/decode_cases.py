"""Shared cases of the decode kernels (`kv_decode`, `paged_decode`): stored K/V in every
dtype, the float64 reference, the docs/conventions.md §5 check, paged copies with shuffled
blocks. Used by tests/test_kv_decode.py and the fuzz property in this folder."""
import torch

from attnlab import masks as M
from attnlab.cache.quantized import NONFINITE_CODE, quantize_symmetric_int8
from attnlab.ops.softmax import attention_reference, kv_native
from attnlab.ops.softmax.kv_decode import numba_available

TOL = {"atol": 1e-5, "rtol": 1e-4}
FLOOR = {torch.bfloat16: 1e-3, torch.float16: 2e-4}
IMPLS = (["native"] if kv_native.available() else []) + \
    (["numba"] if numba_available() else []) + ["torch"]
KINDS = ["fp32", "bf16", "fp16", "int8", "int8g"]  # int8g: per-group scales (see store)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def store(x, kind):
    """float (…, N, D) -> (stored tensor, scales or None, float64 value it stands for)."""
    if kind in ("int8", "int8g"):  # int8g: 2 groups of D/2 channels if D ≥ 32, else of 4
        d = x.shape[-1]
        groups = 1 if kind == "int8" else (2 if d >= 32 and d % 32 == 0 else d // 4)
        *lead, n, d = x.shape
        c, s = quantize_symmetric_int8(x.reshape(*lead, n, groups, d // groups))
        c, s = c.reshape(*lead, n, d), s.reshape(*lead, n, groups)
        val = c.double() * s.double().repeat_interleave(d // groups, -1)
        return c, s, val.masked_fill(c == NONFINITE_CODE, float("nan"))
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    return x.to(dt), None, x.to(dt).double()


def q_dtype(kind):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind, torch.float32)


def reference(q, kval, vval, lens, starts=None):
    """float64 reference per sequence: bottom-right causal over keys [start, len)."""
    B, _, Nq, _ = q.shape
    outs, lses = [], []
    for b in range(B):
        L, S = int(lens[b]), 0 if starts is None else int(starts[b])
        o, lse = attention_reference(q[b:b + 1].double(), kval[b:b + 1, :, S:L],
                                     vval[b:b + 1, :, S:L], mask=M.causal(),
                                     q_pos=torch.arange(Nq) + L - Nq,
                                     kv_pos=torch.arange(S, L), return_lse=True)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def naive_error(q, kval, vval, lens, ref):
    """Max error of a naive path doing its matmuls in q's dtype (the §5 yardstick)."""
    dt = q.dtype
    err = 0.0
    G = q.shape[1] // kval.shape[1]
    for b in range(q.shape[0]):
        L, Nq = int(lens[b]), q.shape[2]
        k = kval[b, :, :L].to(dt).repeat_interleave(G, 0)
        v = vval[b, :, :L].to(dt).repeat_interleave(G, 0)
        s = (q[b] @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        vis = torch.arange(L)[None] <= (torch.arange(Nq) + L - Nq)[:, None]
        p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1)
        o = (p.to(dt) @ v).double()
        err = max(err, float((o - ref[b]).abs().nan_to_num(0).max()))
    return err


def check(out, lse, ref, ref_lse, q, kval, vval, lens):
    torch.testing.assert_close(lse, ref_lse.float(), **TOL, equal_nan=True)
    if q.dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, **TOL, equal_nan=True)
        return
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    err = float((out.double() - ref).abs().nan_to_num(0).max())
    bound = 2 * naive_error(q, kval, vval, lens, ref) + FLOOR[q.dtype]
    assert err <= bound, (err, bound)


def case(kind, B, Hq, Hkv, Nq, N, D, lens, seed=0):
    g = gen(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(q_dtype(kind))
    k, ks, kval = store(torch.randn(B, Hkv, N, D, generator=g), kind)
    v, vs, vval = store(torch.randn(B, Hkv, N, D, generator=g), kind)
    return q, (k, ks, kval), (v, vs, vval), torch.tensor(lens)


def to_paged(x, lens, bs, g):
    """(B, H, N, c) -> pool (H, NB, bs, c) with each sequence's blocks scattered, and the
    (B, W) table; free blocks hold NaN (never read)."""
    B, H, N, c = x.shape
    W = -(-N // bs)
    NB = B * W + 3
    perm = torch.randperm(NB, generator=g)[: B * W].reshape(B, W)
    fill = float("nan") if x.is_floating_point() else NONFINITE_CODE
    pool = torch.full((H, NB, bs, c), fill, dtype=x.dtype)
    xp = torch.nn.functional.pad(x, (0, 0, 0, W * bs - N)) if x.is_floating_point() else \
        torch.cat([x, x.new_zeros(B, H, W * bs - N, c)], 2)
    for b in range(B):
        nblk = -(-int(lens[b]) // bs)
        pool[:, perm[b, :nblk]] = xp[b, :, : nblk * bs].reshape(H, nblk, bs, c)
    return pool, perm
