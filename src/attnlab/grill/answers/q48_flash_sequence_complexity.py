"""Q48: FlashAttention's complexity in N — fitted exponents and traffic vs block size."""
from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch.utils.flop_counter import FlopCounterMode

from ...analysis.allocations import measure_allocations
from ...ops.softmax import attention_reference, flash_attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._context_parallel import add_context_parallel_memory
from ._measure import MatmulOperandBytes


def _slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _scaling_point(n: int, h: int, d: int, g: torch.Generator) -> tuple[int, int, int]:
    """(tiled FLOPs, tiled peak bytes, dense peak bytes) of one forward at length n."""
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    with FlopCounterMode(display=False) as fc:
        flash_attention(q, k, v, q_block=128, kv_block=128)
    tiled = measure_allocations(lambda: flash_attention(q, k, v, q_block=128, kv_block=128))
    dense = measure_allocations(lambda: attention_reference(q, k, v))
    return fc.get_total_flops(), tiled.peak_bytes, dense.peak_bytes


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    h, d = 1, 32
    ns = [256, 512, 1024, 2048, 4096] if ctx.full else [256, 512, 1024, 2048]
    g = torch.Generator().manual_seed(ctx.seed)
    flops, mem, mem_ref = [], [], []
    for n in ns:
        f, m, mr = _scaling_point(n, h, d, g)
        flops.append(f)
        mem.append(m)
        mem_ref.append(mr)
    s_flops, s_mem, s_ref = _slope(ns, flops), _slope(ns, mem), _slope(ns, mem_ref)
    ev.measurements["N"] = ns
    ev.measurements["FLOPs"] = flops
    ev.measurements["peak allocated bytes"] = mem
    ev.measurements["peak allocated bytes, dense reference"] = mem_ref
    ev.measurements["fitted exponent: FLOPs, whole peak memory, dense memory"] = (
        round(s_flops, 3), round(s_mem, 3), round(s_ref, 3))
    # traffic: K and V are re-read once per query block, so bytes ∝ N²·d / B_q
    n = 512
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    traffic, bk = {}, 128
    for bq in (64, 128, 256, 512):
        with MatmulOperandBytes() as t:
            flash_attention(q, k, v, q_block=bq, kv_block=bk)
        traffic[bq] = t.bytes
    ev.measurements[f"matmul operand bytes at N={n} by query block"] = traffic
    # per (B_q × B_k) tile the loop feeds: the q block and a K tile, then P and a V tile.
    # Summed: Q re-read N/B_k times, K and V re-read N/B_q times, P (N²) once — in bytes
    fixed = (n * n * d // bk + n * n) * 4
    kv_meas = {bq: t - fixed for bq, t in traffic.items()}
    kv_pred = {bq: 2 * (n // bq) * n * d * 4 for bq in traffic}
    ev.measurements["K/V part measured (total − Q − P) by B_q"] = kv_meas
    ev.measurements["K/V part predicted 2·(N/B_q)·N·d·4"] = kv_pred
    ev.check("FLOPs grow as N² (fitted exponent 2 ± 0.02)", abs(s_flops - 2) < 0.02, f"{s_flops:.3f}")
    # the part of peak memory that grows with N: increments between doublings
    inc = [b - a for a, b in pairwise(mem)]
    s_inc = _slope(ns[1:], inc) if all(x > 0 for x in inc) else float("nan")
    per_token = [i / (b - a) for i, a, b in zip(inc, ns, ns[1:])]
    expect = h * (d + 1) * 4  # output row (d floats) + one lse per row, fp32, per head
    ev.measurements["peak-memory increment per doubling of N (bytes)"] = inc
    ev.measurements["increment per added token, measured vs (d + 1)·4·H"] = (
        [round(x, 2) for x in per_token], expect)
    ev.measurements["fitted exponent of the growing part of tiled memory"] = round(s_inc, 3)
    ev.check("tiled memory grows by exactly the output and lse, (d + 1)·4·H bytes per token "
             "(the tile workspace is constant)", all(abs(x - expect) < 1e-9 for x in per_token),
             f"{per_token} vs {expect}")
    ev.check("the growing part of tiled memory is O(N) (exponent 1 ± 0.15)",
             abs(s_inc - 1) <= 0.15, f"{s_inc:.3f}")
    ev.check("the dense reference's memory is O(N²) (exponent 2 ± 0.15)", abs(s_ref - 2) <= 0.15,
             f"{s_ref:.3f}")
    ev.check("K/V traffic = 2·(N/B_q)·N·d·4 bytes exactly: it halves as B_q doubles",
             kv_meas == kv_pred, f"{kv_meas} vs {kv_pred}")
    ev.key_figure = (f"FLOPs ∝ N^{s_flops:.2f}; memory = constant + {per_token[-1]:.0f} B/token "
                     f"(growing part ∝ N^{s_inc:.2f}; dense N^{s_ref:.2f}); "
                     f"matmul traffic "
                     f"{traffic[64] / 2**20:.1f} → {traffic[512] / 2**20:.1f} MiB as B_q 64 → 512")
    # beyond one device: the O(N) working set and the O(N²) work split over P ranks
    cp = add_context_parallel_memory(ev, ctx, focus="activations")
    if cp:
        ev.key_figure += f"; {cp}"
    return ev


QUESTION = Question(
    id=48,
    title=TITLES[48],
    short=(
        "Still quadratic in time, O(N²·d), the same FLOPs as standard attention; what "
        "changes is memory: O(N) extra instead of O(N²), and far fewer slow-memory accesses, "
        "Θ(N²·d²/M) for on-chip memory M."
    ),
    rubric=[
        KeyPoint("time stays O(N²·d): same FLOPs", [r"n\s*(²|\^2|\*\*2)", r"quadratic",
                                                  r"same flops"],
                 formula="forward FLOPs = 4·N²·d per head"),
        KeyPoint("extra memory O(N), not O(N²)", [r"o\(\s*n\s*\)\s*(extra |additional )?memory",
                                                 r"linear memory", r"memory.{0,30}linear",
                                                 r"memory.{0,20}o\(\s*n\s*\)"]),
        KeyPoint("HBM traffic Θ(N²d²/M)", [r"n\s*(²|\^2)\s*d\s*(²|\^2)\s*/\s*m",
                                           r"memory access", r"hbm", r"i/?o"],
                 formula="Θ(N²·d²/M) slow-memory accesses (standard: Θ(N·d + N²))"),
    ],
    answer=(
        "Time O(N²·d) — quadratic in sequence length, exactly like standard attention — and "
        "extra memory O(N) instead of O(N²). Its slow-memory traffic is Θ(N²·d²/M) for an "
        "on-chip memory of M elements, because each query block of size ~M/d re-reads all "
        "of K and V; bigger tiles mean fewer re-reads. Across P devices (ring or zigzag "
        "context parallelism) each rank keeps the O(N/P) part — its queries, output and lse "
        "— plus two K/V shards in flight, and does 1/P of the O(N²) work; the evidence "
        "quotes a measured ring run's peak memory per rank against the same ring on one rank."
    ),
    formulas=[
        "time: Θ(N²·d) (forward 4·N²·d FLOPs per head)",
        "extra memory: Θ(N)   (standard: Θ(N²))",
        "slow-memory traffic: Θ(N²·d²/M)   (standard: Θ(N·d + N²))",
        "P devices: time Θ(N²·d/P) each, memory Θ(N/P) + 2 K/V shards in flight",
    ],
    seed_note=(
        "The seed answers a different question ('same FLOPs, lower memory access'); the "
        "sequence complexity itself is O(N²) time and O(N) memory, stated and fitted here."
    ),
    evidence=evidence,
)
