"""Decode in every cache dtype, contiguous and paged, single long context and ragged batch.

Workloads (issue 14): one token, Hq=32, Hkv=8, D=128 (4 query heads per KV head) at 128K
context, KV stored in fp32, bf16, fp16 and int8 (per-token scales; per-group g=32 too),
contiguous and paged (block 16, block table shuffled: scattered physical blocks; fp32 and
bf16 also with 128-token blocks, to show the share of the block size); and a
batch of 16 sequences with ragged lengths 1K–32K in one call (fp32, bf16, int8).

Reported per row: median time, GB/s of the bytes actually stored (codes + scales), and the
fraction of the attainable rate min(streaming read bandwidth, fp32 matmul peak ÷ the
kernel's FLOP per stored byte) — 4·Hq·D FLOP per key over 2·Hkv·D·bytes/elem stored:
2 for fp32, 4 for bf16/fp16, ≈8 for int8. Peers in the same run: the numba kernel
(`impl="numba"`, the previous compiled path), attnlab's older decode paths
(`decode_attention`: the fp32 numba kernel, the torch chunk path for bf16/fp16;
`paged_attention`) and SDPA (`enable_gqa`).
Run: `python -m benchmarks.decode_dtypes [--quick]`; writes results/decode_dtypes.md.
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F

from attnlab.analysis.machine import measure
from attnlab.cache.quantized import quantize_symmetric_int8
from attnlab.ops.paged import paged_attention, paged_decode
from attnlab.ops.softmax import kv_native
from attnlab.ops.softmax.decode import decode_attention
from attnlab.ops.softmax.kv_decode import choose_impl, kv_decode, numba_available

from .common import header, md_table, time_fn, write_results

HQ, HKV, D, BS = 32, 8, 128, 16
BS_LARGE = 128  # a second paged layout: scattered reads of 128 rows instead of 16
AUTO = choose_impl("auto")  # the path every row's main figure runs
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
         torch.int8: "int8"}


def quantize(x: torch.Tensor, groups: int = 1):
    """(…, N, D) float -> int8 codes (…, N, D) and float32 scales (…, N, groups)."""
    *lead, n, d = x.shape
    c, s = quantize_symmetric_int8(x.reshape(*lead, n, groups, d // groups))
    return c.reshape(*lead, n, d), s.reshape(*lead, n, groups)


def stored_bytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def intensity(dtype, groups: int) -> float:
    """Kernel FLOP per stored byte: 4·G·D FLOP per key per KV head (G = 4 here) over the
    bytes of one K and one V row (+ 4-byte scales for int8)."""
    per_row = D * (1 if dtype == torch.int8 else torch.empty((), dtype=dtype).element_size())
    per_row += 4 * groups if dtype == torch.int8 else 0
    return 4 * (HQ // HKV) * D / (2 * per_row)


def make_cache(n: int, b: int, dtype, groups: int, gen):
    """Contiguous (b, Hkv, n, D) K/V in `dtype` (int8: codes + scales)."""
    k = torch.randn(b, HKV, n, D, generator=gen)
    v = torch.randn(b, HKV, n, D, generator=gen)
    if dtype == torch.int8:
        (kc, ks), (vc, vs) = quantize(k, groups), quantize(v, groups)
        return kc, vc, ks, vs
    return k.to(dtype), v.to(dtype), None, None


def to_pool(x: torch.Tensor, perm: torch.Tensor, bs: int = BS):
    """(1, Hkv, n, c) -> pool (Hkv, NB, bs, c) with logical block i at physical perm[i]."""
    _, h, n, c = x.shape
    nb = n // bs
    pool = torch.empty(h, nb, bs, c, dtype=x.dtype)
    pool[:, perm] = x[0].reshape(h, nb, bs, c)
    return pool


def row(label, t, nbytes, ai, machine, peer=None):
    bw = nbytes / t
    att = min(machine.read_bw, machine.peak(torch.float32) / ai)
    bound = "memory" if machine.read_bw <= machine.peak(torch.float32) / ai else "compute"
    return [label, f"{t * 1e3:.1f} ms", f"{bw / 1e9:.1f}", f"{ai:.1f}",
            f"{att / 1e9:.1f} ({bound})", f"{bw / att:.0%}", (peer or "").strip().rstrip(";")]


def numba_peer(fn, nbytes: int, t: float, repeats: int) -> str:
    """The same call on the numba kernel (the previous compiled path), when the row ran
    the native one: its rate and its time over the row's."""
    if AUTO != "native" or not numba_available():
        return ""
    tn = time_fn(partial(fn, impl="numba"), max(2, repeats // 2)).median
    return f"numba kernel {nbytes / tn / 1e9:.1f} GB/s ({tn / t:.2f}× the time); "


def in_cache_rates(repeats: int) -> dict:
    """FLOP/s of the kernel alone (no Python around it) on a cache that stays in the
    last-level cache (context 1024, fp32 K+V 8 MiB, 64 work items of 128 keys): the compute
    side of the bound, per stored dtype. Native kernel only (else empty)."""
    if AUTO != "native":
        return {}
    gen = torch.Generator().manual_seed(2)
    n, step = 1024, 128
    q = torch.randn(1, HKV, HQ // HKV, D, generator=gen)  # (B, Hkv, G rows, D)
    items = torch.tensor([[0, j, j + step] for j in range(0, n, step)])
    table = torch.zeros(1, 1, dtype=torch.int64)
    lens = torch.tensor([n])
    shape = (items.shape[0], HKV, HQ // HKV)
    o, lse = torch.empty(*shape, D), torch.empty(*shape)
    flags = torch.zeros(*shape[:2], dtype=torch.uint8)
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int8):
        k, v, ks, vs = make_cache(n, 1, dtype, 1, gen)
        k, v = k.reshape(-1, D), v.reshape(-1, D)
        ks, vs = (None, None) if ks is None else (ks.reshape(-1, 1), vs.reshape(-1, 1))
        t = time_fn(partial(kv_native.run, q, k, v, ks, vs, table, n, HKV * n, n, items,
                            lens, 1, D ** -0.5, o, lse, flags, torch.get_num_threads()),
                    20 * repeats).best
        out[dtype] = 4 * HQ * D * n / t
    return out


def bounds_rows(times: dict, n: int, machine, rates: dict):
    """Per 128K row: the memory floor (stored bytes / read bandwidth), the compute floor
    (FLOP / the kernel's in-cache rate), and the measured time over the larger floor."""
    out = []
    flop = 4 * HQ * D * n
    for (name, layout), (t, nbytes, dtype) in times.items():
        if dtype not in rates:
            continue
        mem = nbytes / machine.read_bw
        comp = flop / rates[dtype]
        bound = "memory" if mem >= comp else "kernel compute"
        out.append([f"{name} {layout}", f"{t * 1e3:.1f} ms", f"{mem * 1e3:.1f} ms",
                    f"{comp * 1e3:.1f} ms ({rates[dtype] / 1e9:.0f} GFLOP/s in cache)",
                    bound, f"{t / max(mem, comp):.2f}×"])
    return out


def targets(times: dict, batch: dict, machine) -> list:
    """The issue-14 decode targets with verdicts."""
    rows = []
    for (name, layout), (t, nbytes, dtype) in times.items():
        if name == "fp16" or " g=" in name:
            continue
        ai = intensity(dtype, 1)
        att = min(machine.read_bw, machine.peak(torch.float32) / ai)
        frac = nbytes / t / att
        rows.append([f"decode 128K {name} {layout}: ≥ 60% of attainable", f"{frac:.0%}",
                     "met" if frac >= 0.6 else "MISSED"])
    for name in ("fp32", "bf16", "fp16", "int8"):
        if (name, "paged") in times:
            r = times[(name, "paged")][0] / times[(name, "contiguous")][0]
            rows.append([f"decode 128K {name}: paged within 10% of contiguous",
                         f"{r:.2f}× the time", "met" if r <= 1.10 else "MISSED"])
    for label, frac in batch.items():
        rows.append([f"batched decode {label}: ≥ 50% of attainable", f"{frac:.0%}",
                     "met" if frac >= 0.5 else "MISSED"])
    t32, t16, t8 = (times[(x, "contiguous")][0] for x in ("fp32", "bf16", "int8"))
    rows.append(["int8 faster than bf16 faster than fp32 (contiguous)",
                 f"{t8 * 1e3:.1f} / {t16 * 1e3:.1f} / {t32 * 1e3:.1f} ms",
                 "met" if t8 < t16 < t32 else "MISSED"])
    return rows


def bench_long(n: int, machine, repeats: int):
    """128K decode, one token, every dtype, contiguous and paged, with peers."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, HQ, 1, D, generator=gen)
    rows, times = [], {}
    for dtype, groups in ((torch.float32, 1), (torch.bfloat16, 1), (torch.float16, 1),
                          (torch.int8, 1), (torch.int8, D // 32)):
        k, v, ks, vs = make_cache(n, 1, dtype, groups, gen)
        qd = q.to(torch.float32 if dtype == torch.int8 else dtype)
        nbytes = stored_bytes(k, v, ks, vs)
        ai = intensity(dtype, groups)
        name = NAMES[dtype] + (f" g={D // groups}" if dtype == torch.int8 and groups > 1 else "")
        t = time_fn(partial(kv_decode, qd, k, v, k_scale=ks, v_scale=vs), repeats).median
        times[(name, "contiguous")] = (t, nbytes, dtype)
        peer = numba_peer(partial(kv_decode, qd, k, v, k_scale=ks, v_scale=vs), nbytes, t,
                          repeats)
        if dtype != torch.int8:
            prior = "auto" if dtype == torch.float32 else "torch"  # what auto ran before
            tp = time_fn(partial(decode_attention, qd, k, v, impl=prior),
                         max(2, repeats // 2)).median
            ts = time_fn(partial(F.scaled_dot_product_attention, qd, k, v, enable_gqa=True),
                         max(2, repeats // 2)).median
            peer += (f"decode_attention impl={prior} {nbytes / tp / 1e9:.1f} GB/s "
                    f"({tp / t:.1f}× the time); "
                    f"SDPA {nbytes / ts / 1e9:.1f} GB/s ({ts / t:.1f}×)")
        rows.append(row(f"{name} contiguous", t, nbytes, ai, machine, peer))
        perm = torch.randperm(n // BS, generator=gen)
        pools = [to_pool(x, perm) if x is not None else None for x in (k, v, ks, vs)]
        tab = perm.reshape(1, -1)
        lens = torch.tensor([n])
        run = partial(paged_decode, qd, pools[0], pools[1], tab, lens, k_scale=pools[2],
                      v_scale=pools[3])
        t2 = time_fn(run, repeats).median
        times[(name, "paged")] = (t2, nbytes, dtype)
        peer = f"paged/contiguous time {t2 / t:.2f}; " + numba_peer(run, nbytes, t2, repeats)
        if dtype == torch.float32:
            tp = time_fn(partial(paged_attention, qd, pools[0], pools[1], tab, lens),
                         max(2, repeats // 2)).median
            peer += f"paged_attention {nbytes / tp / 1e9:.1f} GB/s ({tp / t2:.1f}× the time)"
        rows.append(row(f"{name} paged (shuffled blocks)", t2, nbytes, ai, machine, peer))
        if dtype in (torch.float32, torch.bfloat16):  # the block size's share of the cost
            perm = torch.randperm(n // BS_LARGE, generator=gen)
            pools = [to_pool(x, perm, BS_LARGE) for x in (k, v)]
            t3 = time_fn(partial(paged_decode, qd, pools[0], pools[1], perm.reshape(1, -1),
                                 lens), repeats).median
            rows.append(row(f"{name} paged, {BS_LARGE}-token blocks (shuffled)", t3, nbytes,
                            ai, machine, f"paged/contiguous time {t3 / t:.2f} (16-token "
                            f"blocks: {t2 / t:.2f})"))
    return rows, times


def bench_batch(machine, repeats: int, n_seq: int = 16, lo: int = 1024, hi: int = 32768):
    """16 sequences of ragged lengths in one call, contiguous (lens) and paged."""
    gen = torch.Generator().manual_seed(1)
    lens = torch.randint(lo, hi + 1, (n_seq,), generator=gen)
    q = torch.randn(n_seq, HQ, 1, D, generator=gen)
    rows, fracs = [], {}
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        k, v, ks, vs = make_cache(hi, n_seq, dtype, 1, gen)
        qd = q.to(torch.float32 if dtype == torch.int8 else dtype)
        per_tok = stored_bytes(k, v, ks, vs) / (n_seq * hi)
        nbytes = int(per_tok * int(lens.sum()))
        ai = intensity(dtype, 1)
        run = partial(kv_decode, qd, k, v, lens=lens, k_scale=ks, v_scale=vs)
        t = time_fn(run, repeats).median
        rows.append(row(f"{NAMES[dtype]} contiguous, lens {lo}–{hi}", t, nbytes, ai, machine,
                        numba_peer(run, nbytes, t, repeats)))
        att = min(machine.read_bw, machine.peak(torch.float32) / ai)
        fracs[f"{NAMES[dtype]} contiguous"] = nbytes / t / att
        nbk = hi // BS
        perm = torch.randperm(n_seq * nbk, generator=gen)
        pools = []
        for x in (k, v, ks, vs):
            if x is None:
                pools.append(None)
                continue
            c = x.shape[-1]
            pool = torch.empty(HKV, n_seq * nbk, BS, c, dtype=x.dtype)
            pool[:, perm] = x.transpose(0, 1).reshape(HKV, n_seq * nbk, BS, c)
            pools.append(pool)
        tab = perm.reshape(n_seq, nbk)
        run = partial(paged_decode, qd, pools[0], pools[1], tab, lens, k_scale=pools[2],
                      v_scale=pools[3])
        t2 = time_fn(run, repeats).median
        rows.append(row(f"{NAMES[dtype]} paged, lens {lo}–{hi}", t2, nbytes, ai, machine,
                        f"paged/contiguous time {t2 / t:.2f}; "
                        + numba_peer(run, nbytes, t2, repeats)))
        fracs[f"{NAMES[dtype]} paged"] = nbytes / t2 / att
    return rows, fracs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 16384 if args.quick else 131072
    repeats = 3 if args.quick else 5
    machine = measure((torch.float32, torch.bfloat16))
    path = {"native": "native C++ kernel (kv_native.cpp, built here with -march=native)",
            "numba": "numba kernel (kv_numba.py; the native kernel did not build: "
                     f"{kv_native.why_unavailable()})",
            "torch": "torch fallback (no native kernel, numba not installed)"}[AUTO]
    cols = ["workload", "median", "GB/s stored", "FLOP/byte", "attainable GB/s", "of attainable",
            "peers / notes"]
    long_rows, times = bench_long(n, machine, repeats)
    batch_rows, fracs = bench_batch(machine, repeats)
    rates = in_cache_rates(repeats)
    text = header("Decode in every cache dtype (benchmarks/decode_dtypes.py)", machine=machine)
    text += (f"\nPath: {path}; torch threads {torch.get_num_threads()}. Attainable = min(read "
             "bandwidth, fp32 peak ÷ FLOP per stored byte); the bound named is the smaller "
             "term. Every stored dtype is widened to float32 in registers and computed in fp32 "
             "(the native kernel: bf16 by a 16-bit shift, fp16 by the ISA's half-to-float "
             "conversion, int8 by code · scale).\n\n"
             "## Targets (issue 14)\n\n"
             + md_table(["target", "measured", "verdict"], targets(times, fracs, machine))
             + f"\n\n## Decode, 1 token, Hq={HQ}, Hkv={HKV}, D={D}, context {n}\n\n"
             + md_table(cols, long_rows)
             + "\n\n## Batched decode, 16 sequences, ragged lengths, one call\n\n"
             + md_table(cols, batch_rows)
             + "\n\n## What bounds each 128K row\n\n"
             "Memory floor = stored bytes ÷ the measured read bandwidth; compute floor = the "
             "row's FLOP ÷ the same kernel's rate on a cache that stays in the last-level "
             "cache (context 1024, the kernel alone, best of the repeats): the kernel's own compute ceiling "
             "on this machine, which is below the matmul peak because every key costs a "
             "reduction, the online-softmax bookkeeping and (for stored bf16/fp16/int8) "
             "the widening. A ratio near 1× means the kernel runs at its nearer floor.\n\n"
             + md_table(["row", "measured", "memory floor", "compute floor", "nearer bound",
                         "measured ÷ floor"], bounds_rows(times, n, machine, rates)) + "\n")
    print(text)
    write_results("decode_dtypes" + ("_quick" if args.quick else ""), text)


if __name__ == "__main__":
    main()
