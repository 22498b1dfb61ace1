"""Q37: prefill vs decode attention — arithmetic intensity counted on attnlab's decode kernel,
and a measured roofline."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ...analysis.machine import cpu_info, matmul_peak
from ...cache.quantized import quantize_symmetric_int8
from ...ops.softmax import decode_attention
from ...ops.softmax.kv_decode import kv_decode
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._measure import MatmulOperandBytes
from ._timing import median_time


def counted_decode_intensity(q, k, v) -> tuple[int, int]:
    """(FLOPs, matmul operand bytes) of one `decode_attention` call (matmul form), counted."""
    with FlopCounterMode(display=False) as fc, MatmulOperandBytes() as mb:
        decode_attention(q, k, v, impl="matmul", chunk=1024)
    return fc.get_total_flops(), mb.bytes


def _plot(path, peak, bw, points) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [2 ** (i / 4) for i in range(-12, 44)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(xs, [min(peak, bw * x) / 1e9 for x in xs], "k-", label="roofline (measured)")
    for name, (ai, rate) in points.items():
        ax.loglog([ai], [rate / 1e9], "o", label=f"{name}: {rate / 1e9:.1f} GFLOP/s")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    # decode: one token against a cache (Llama-3-8B shape: Hq 32, Hkv 8, D 128; docs/sources.md)
    hq, hkv, dd = 32, 8, 128
    qd = torch.randn(1, hq, 1, dd, generator=g)
    # 1. intensity counted on the real kernel: FLOPs and the bytes its matmuls stream
    kc, vc = (torch.randn(1, hkv, 4096, dd, generator=g) for _ in range(2))
    flops_c, bytes_c = counted_decode_intensity(qd, kc, vc)
    ai_counted = flops_c / bytes_c
    ai_formula = 2 * 1 * (hq / hkv) / 4  # 2·Nq·(Hq/Hkv) / bytes per element (fp32)
    ev.measurements["decode (4096 cached tokens): FLOPs, matmul operand bytes (counted)"] = (
        flops_c, bytes_c)
    ev.measurements["decode intensity: counted, formula 2·Nq·(Hq/Hkv)/bytes"] = (
        round(ai_counted, 3), ai_formula)
    ev.check("decode intensity counted on attnlab's kernel = 2·Nq·(Hq/Hkv)/bytes (within 5%: "
             "the query and score operands add a little)", abs(ai_counted / ai_formula - 1) < 0.05,
             f"{ai_counted:.3f} vs {ai_formula:.3f} FLOP/byte")
    ev.check("the kernel reads each KV head once per step, not once per query head (bytes ≤ "
             "1.05 × K + V)", bytes_c <= 1.05 * (kc.nbytes + vc.nbytes),
             f"{bytes_c:,} B vs K + V {kc.nbytes + vc.nbytes:,} B")

    # 2. a roofline of this machine: matmul peak and streaming bandwidth, medians
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    big = torch.randn(32 * 2 ** 20, generator=g)  # 128 MiB

    def ceilings():
        return (2 * 1024 ** 3 / median_time(lambda: a @ b, repeats=3),
                big.numel() * 4 / median_time(lambda: big.sum(), repeats=3))

    peak, bw = ceilings()
    # prefill: causal self-attention over a whole prompt (H=8, D=64)
    n, h, d = (4096, 8, 64) if ctx.full else (2048, 8, 64)
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    t_pre = median_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                        repeats=3)
    f_pre = 4 * d * h * n * (n + 1) / 2
    b_pre = 4 * n * h * d * 4  # read q, k, v and write o once, fp32
    ctxlen = 65536 if ctx.full else 8192
    kd, vd = (torch.randn(1, hkv, ctxlen, dd, generator=g) for _ in range(2))
    # split-KV decode with torch's fused per-chunk kernel (impl "torch"): the numba kernel
    # is as fast but compiles on first use in each process, seconds the grill need not spend
    t_dec = median_time(lambda: decode_attention(qd, kd, vd, impl="torch"), repeats=5)
    f_dec = 4 * dd * hq * ctxlen
    b_dec = 2 * hkv * ctxlen * dd * 4  # K and V read once (GQA: one read per KV head)
    # ceilings are maxima: measured again after the timings (a shared machine can be busy
    # at either moment), the larger kept
    p2, bw2 = ceilings()
    peak, bw = max(peak, p2), max(bw, bw2)
    ai_pre, ai_dec, ridge = f_pre / b_pre, f_dec / b_dec, peak / bw
    r_pre, r_dec = f_pre / t_pre, f_dec / t_dec
    ev.measurements["measured matmul peak GFLOP/s, read bandwidth GB/s (medians)"] = (
        round(peak / 1e9, 1), round(bw / 1e9, 1))
    ev.measurements["ridge point peak / bandwidth (FLOP/byte)"] = round(ridge, 1)
    ev.measurements[f"prefill N={n}: intensity FLOP/B, GFLOP/s, GB/s"] = (
        round(ai_pre), round(r_pre / 1e9, 1), round(b_pre / t_pre / 1e9, 2))
    ev.measurements[f"decode ctx={ctxlen}: intensity FLOP/B, GFLOP/s, GB/s"] = (
        round(ai_dec, 2), round(r_dec / 1e9, 2), round(b_dec / t_dec / 1e9, 1))
    ev.measurements["fraction of peak: prefill FLOP/s, decode bytes/s"] = (
        round(r_pre / peak, 2), round(b_dec / t_dec / bw, 2))
    att_pre, att_dec = min(peak, ai_pre * bw), min(peak, ai_dec * bw)
    ev.measurements["attainable GFLOP/s on this roofline: prefill, decode"] = (
        round(att_pre / 1e9, 1), round(att_dec / 1e9, 1))
    ev.measurements["measured rate as a fraction of its attainable: prefill, decode"] = (
        round(r_pre / att_pre, 2), round(r_dec / att_dec, 2))
    side = "left of" if ai_dec < ridge else "right of"
    ev.measurements["reading"] = (
        f"this machine's ridge is {ridge:.1f} FLOP/byte, so GQA decode at {ai_dec:.1f} "
        f"FLOP/byte sits {side} it by a factor {max(ridge, ai_dec) / min(ridge, ai_dec):.1f} "
        f"and prefill at {ai_pre:.0f} sits {ai_pre / ridge:.0f}× right of it; a CPU's ridge "
        "is low (modest peak FLOP/s per byte of bandwidth), a data-centre GPU's is far "
        "higher, so the memory-bound argument for decode is much stronger there")
    # 3. per-dtype roofs: the bf16 matmul peak (native or emulated on this CPU) and decode
    # over a cache stored in bf16 / int8 (every-dtype kernel, widened in registers)
    peak16 = matmul_peak(torch.bfloat16, n=1024, repeats=3)
    kb, vb = kd.to(torch.bfloat16), vd.to(torch.bfloat16)
    qb = qd.to(torch.bfloat16)
    (kq, ksc), (vq, vsc) = (quantize_symmetric_int8(x) for x in (kd, vd))
    t32 = median_time(lambda: kv_decode(qd, kd, vd), repeats=5)
    t16 = median_time(lambda: kv_decode(qb, kb, vb), repeats=5)
    t8 = median_time(lambda: kv_decode(qd, kq, vq, k_scale=ksc, v_scale=vsc), repeats=5)
    rows = {"fp32": (t32, b_dec), "bf16": (t16, b_dec / 2),
            "int8": (t8, kq.nbytes + vq.nbytes + ksc.nbytes + vsc.nbytes)}
    ev.measurements["matmul peak GFLOP/s: fp32, bf16 (bf16 native on this CPU)"] = (
        round(peak / 1e9, 1), round(peak16 / 1e9, 1), cpu_info().native_bf16)
    for name, (t, nb) in rows.items():
        ai = f_dec / nb  # FLOP per byte of the stored cache
        att = min(peak, ai * bw)  # the kernel computes in fp32 whatever it stores
        ev.measurements[f"decode ctx={ctxlen}, {name} KV: FLOP/B stored, GB/s, of attainable"] = (
            round(ai, 2), round(nb / t / 1e9, 1), round(f_dec / t / att, 2))
    ev.check("a bf16 KV cache decodes faster than fp32 (half the bytes to stream)",
             t16 < t32, f"{t16 * 1e3:.2f} vs {t32 * 1e3:.2f} ms", timing=True)
    ev.check("prefill runs at ≥ 2× decode's FLOP rate (big matmuls vs a streamed cache)",
             r_pre >= 2 * r_dec, f"{r_pre / 1e9:.1f} vs {r_dec / 1e9:.2f} GFLOP/s",
             timing=True)
    ev.check("decode cannot beat the bandwidth roof: FLOP/s ≤ 1.25 · intensity · bandwidth",
             r_dec <= 1.25 * ai_dec * bw,
             f"{r_dec / 1e9:.2f} vs roof {ai_dec * bw / 1e9:.2f} GFLOP/s", timing=True)
    if ctx.plot_dir:
        try:
            path = os.path.join(ctx.plot_dir, "q37_roofline.png")
            _plot(path, peak, bw, {"prefill": (ai_pre, r_pre), "decode": (ai_dec, r_dec)})
            ev.plots.append(path)
        except ImportError:  # the viz extra is optional
            ev.measurements["plot"] = "matplotlib not installed (pip install attnlab[viz])"
    ev.key_figure = (f"decode intensity counted {ai_counted:.2f} FLOP/B (formula "
                     f"{ai_formula:.0f}); ridge {ridge:.1f}; prefill {ai_pre:.0f} FLOP/B at "
                     f"{r_pre / peak:.0%} of peak, decode at {b_dec / t_dec / bw:.0%} of bandwidth")
    return ev


QUESTION = Question(
    id=37,
    title=TITLES[37],
    short=(
        "Prefill pushes the whole prompt through at once, so attention is big matrix "
        "products that reuse every loaded byte many times: it is compute-bound. Decode "
        "makes one token per step, and that single query has to stream the whole KV cache "
        "(and the weights) for only about one multiply-add per byte, so it is "
        "memory-bandwidth-bound; that is why decode kernels split the cache across workers "
        "(Flash-Decoding) and why GQA, MLA and quantised caches pay off."
    ),
    rubric=[
        KeyPoint("prefill is compute-bound (large matmuls over the prompt)",
                 [r"compute[- ]bound", r"flop[- ]bound", r"arithmetic[- ]bound",
                  r"large mat(rix )?mul", r"gemm"]),
        KeyPoint("decode is memory-bandwidth-bound",
                 [r"memory[- ]bound", r"bandwidth[- ]bound", r"memory[- ]bandwidth",
                  r"io[- ]bound"]),
        KeyPoint("decode streams the whole KV cache for one query token",
                 [r"(read|stream|load)\w*\s.*(kv|cache)", r"kv cache", r"one (new )?token"]),
        KeyPoint("arithmetic intensity / roofline",
                 [r"arithmetic intensity", r"roofline", r"flops? per byte", r"ridge"],
                 formula="decode intensity = 2·Nq·(Hq/Hkv) / bytes FLOP/byte; "
                         "attainable = min(peak, intensity × bandwidth)"),
        KeyPoint("different kernels: FlashAttention for prefill, split-KV Flash-Decoding",
                 [r"flash[- ]?decoding", r"split[- ]?kv", r"split the (kv|cache)",
                  r"paged ?attention"]),
    ],
    answer=(
        "Prefill runs the whole prompt through the model at once: attention multiplies "
        "N×d query blocks by d×N key blocks, so each byte of Q, K, V loaded is used in "
        "O(N) multiply-adds; the work is large matrix products and the phase is limited by "
        "arithmetic throughput (FlashAttention-style kernels). Decode produces one token per "
        "step: the new query (a few rows) meets the whole cached K and V, so each cached "
        "byte is used for about one multiply-add per query head sharing it — the "
        "arithmetic intensity is tiny and the step is limited by how fast the cache (and the "
        "weights) stream from memory. Decode kernels therefore split the cache across many "
        "workers and merge the partial softmaxes (Flash-Decoding), fold all query heads of a "
        "GQA group onto one read of their KV head, and shrink the bytes (GQA/MQA/MLA, "
        "quantised caches); batching many sequences raises the intensity of the weight reads "
        "but not of the per-sequence KV reads. A roofline makes this concrete: attainable "
        "FLOP/s = min(peak, intensity × bandwidth)."
    ),
    formulas=[
        "prefill attention intensity ≈ 4·N²·d·H / (4·N·d·H·bytes) = N / bytes FLOP/byte (causal: half)",
        "decode intensity = 4·L·d·Hq·Nq / (2·L·d·Hkv·bytes) = 2·Nq·(Hq/Hkv) / bytes",
        "attainable FLOP/s = min(peak FLOP/s, intensity × bandwidth);  ridge = peak / bandwidth",
        "decode step time ≥ (KV bytes + weight bytes) / bandwidth",
    ],
    seed_note=(
        "The seed says decode is memory-bound because it reads the full weights for one "
        "token; for the attention part it is the KV cache that dominates, and it grows with "
        "context (weights are shared across a batch, KV is not). The evidence counts the "
        "decode kernel's FLOPs and streamed bytes, and places both phases on this machine's "
        "own measured roofline; the 'reading' line states where its ridge fell in this run. "
        "Each dtype has its own roof: the bf16 matmul peak is measured beside fp32's, and "
        "decode over a cache stored in bf16 or int8 is placed at its own intensity per "
        "stored byte (the kernel widens to fp32, so fp32's compute roof applies). "
        "A CPU's ridge is low, so on it GQA decode sits much closer to the ridge than on a "
        "GPU: the memory-bound argument is strongest on accelerators."
    ),
    evidence=evidence,
    threads=None,  # a roofline of the machine as configured: every torch thread
)
