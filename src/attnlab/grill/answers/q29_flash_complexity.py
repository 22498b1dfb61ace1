"""Q29: FlashAttention keeps the FLOPs and changes the memory — counted and measured."""
from __future__ import annotations

import itertools
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from ...analysis.allocations import measure_allocations
from ...ops.softmax import attention_reference, flash_attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _measure(n: int, h: int, d: int, blk: int, g: torch.Generator):
    """(forward FLOPs, fwd+bwd FLOPs, fwd+bwd peak bytes), each as (tiled, dense)."""
    q, k, v = (torch.randn(1, h, n, d, generator=g, requires_grad=True) for _ in range(3))

    def tiled():
        return flash_attention(q, k, v, q_block=blk, kv_block=blk)

    def dense():
        return attention_reference(q, k, v)

    fwd = (_flops(tiled), _flops(dense))
    train = (_flops(lambda: tiled().sum().backward()), _flops(lambda: dense().sum().backward()))
    mem = (measure_allocations(lambda: tiled().sum().backward()).peak_bytes,
           measure_allocations(lambda: dense().sum().backward()).peak_bytes)
    return fwd, train, mem


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    h, d, blk = 1, 16, 128
    ns = (256, 512, 1024, 2048) if ctx.full else (256, 512, 1024)
    g = torch.Generator().manual_seed(ctx.seed)
    fwd, train, mem = {}, {}, {}
    for n in ns:
        fwd[n], train[n], mem[n] = _measure(n, h, d, blk, g)
    n0, n1 = ns[0], ns[-1]
    formula = 4 * n1 * n1 * d * h  # QKᵀ and PV: 2 matmuls of 2·N²·d FLOPs per head
    ev.measurements["forward matmul FLOPs tiled / dense by N"] = fwd
    ev.measurements["forward FLOPs formula 4·N²·d·H at largest N"] = formula
    ev.measurements["fwd+bwd FLOPs tiled / dense by N"] = train
    ev.measurements["fwd+bwd peak allocated bytes tiled / dense by N"] = mem
    grow = (n1 / n0)
    mem_t = mem[n1][0] / mem[n0][0]
    mem_d = mem[n1][1] / mem[n0][1]
    ev.measurements[f"memory growth N {n0}→{n1} (×{grow:.0f}): tiled / dense"] = (
        round(mem_t, 2), round(mem_d, 2))
    # exponents of the part of peak memory that grows with N (the tile workspace is fixed)
    inc_t = [mem[b][0] - mem[a][0] for a, b in itertools.pairwise(ns)]
    inc_d = [mem[b][1] - mem[a][1] for a, b in itertools.pairwise(ns)]
    e_t = math.log(inc_t[-1] / inc_t[0], ns[-1] / ns[1]) if min(inc_t) > 0 else float("nan")
    e_d = math.log(inc_d[-1] / inc_d[0], ns[-1] / ns[1]) if min(inc_d) > 0 else float("nan")
    ev.measurements["fitted exponent of the growing part of fwd+bwd memory: tiled, dense"] = (
        round(e_t, 3), round(e_d, 3))
    ratio_train = train[n1][0] / train[n1][1]
    ev.measurements["fwd+bwd FLOPs tiled ÷ dense"] = round(ratio_train, 4)
    ev.check("forward FLOPs identical at every N", all(a == b for a, b in fwd.values()), str(fwd))
    ev.check("forward FLOPs = 4·N²·d·H exactly", fwd[n1][0] == formula, f"{fwd[n1][0]} vs {formula}")
    ev.check("backward recomputes QKᵀ: fwd+bwd is 7/6 of the dense count",
             abs(ratio_train - 7 / 6) < 1e-9, f"{ratio_train:.4f}")
    ev.check("dense fwd+bwd memory grows as N² (exponent 2 ± 0.15)", abs(e_d - 2) <= 0.15,
             f"{e_d:.3f}")
    ev.check("tiled fwd+bwd memory grows as N (exponent 1 ± 0.15 beyond a fixed workspace)",
             abs(e_t - 1) <= 0.15, f"{e_t:.3f}")
    ev.key_figure = (f"N={n1}: forward FLOPs equal ({fwd[n1][0] / 1e6:.0f} MFLOP), fwd+bwd ×"
                     f"{ratio_train:.3f}; peak memory {mem[n1][0] / 2**20:.1f} vs "
                     f"{mem[n1][1] / 2**20:.1f} MiB")
    return ev


QUESTION = Question(
    id=29,
    title=TITLES[29],
    short=(
        "No: it still computes every score, Θ(N²·d) FLOPs like standard attention (the "
        "backward even recomputes a little more). What it cuts is memory: extra storage "
        "from Θ(N²) to Θ(N), and slow-memory traffic from Θ(N·d + N²) to Θ(N²·d²/M) for "
        "on-chip size M — it is faster because attention was memory-bound."
    ),
    rubric=[
        KeyPoint("no: FLOPs stay Θ(N²·d)", [r"same (flops|arithmetic)", r"quadratic",
                                            r"n\s*(²|\^2)"],
                 formula="forward FLOPs = 4·N²·d per head"),
        KeyPoint("memory traffic falls to Θ(N²d²/M)", [r"memory access", r"hbm", r"traffic",
                                                       r"i/?o", r"d\s*(²|\^2)\s*/\s*m"],
                 formula="Θ(N·d + N²) → Θ(N²·d²/M)"),
        KeyPoint("extra memory Θ(N) instead of Θ(N²)", [r"(o|θ)\(\s*n\s*\)", r"linear memory",
                                                        r"memory.{0,20}linear", r"storage"]),
        KeyPoint("backward recomputes (slightly more FLOPs)", [r"recomput", r"backward"]),
    ],
    answer=(
        "No. The forward pass still computes every score q_i·k_j and every weighted sum, so "
        "its arithmetic is Θ(N²·d) per head, the same multiply count as the naive "
        "algorithm; only the order changes. The backward pass even does a little more: it "
        "recomputes the scores from Q, K and the saved log-sum-exp instead of reading a stored "
        "N×N probability matrix, adding one N×N×d matmul to the four the naive backward "
        "needs (7 matmuls for forward + backward instead of 6). What changes is memory: the "
        "extra storage goes from Θ(N²) (scores and probabilities, kept for the backward) to "
        "Θ(N) (the output and one log-sum-exp per row), and traffic to slow memory goes from "
        "Θ(N·d + N²) to Θ(N²·d²/M) for a fast memory of M elements — a large constant-factor "
        "saving for realistic d and M, proven optimal up to constants over a range of M. "
        "Wall-clock time improves because attention was memory-bound, not because less "
        "arithmetic is done."
    ),
    formulas=[
        "forward FLOPs = 2·N²·d (QKᵀ) + 2·N²·d (PV) = 4·N²·d per head, naive and tiled alike",
        "fwd+bwd matmuls: naive 2 + 4 = 6;  FlashAttention 2 + 5 = 7 (QKᵀ recomputed)",
        "extra memory: naive Θ(N²);  tiled Θ(N) (O and lse)",
        "slow-memory accesses: naive Θ(N·d + N²);  FlashAttention Θ(N²·d²/M)",
    ],
    seed_note=(
        "The seed's 'from … to …' lost both expressions; they are Θ(N·d + N²) and Θ(N²d²/M) "
        "memory accesses (FlashAttention paper, Theorem 2). 'Same FLOPs' is exact for the "
        "forward only: the recomputing backward adds one matmul, measured here as 7/6."
    ),
    evidence=evidence,
)
