"""Sparse family benchmark: sliding window, window + global tokens and BigBird on the
block-sparse executor vs SDPA with the dense mask and compiled FlexAttention with the same
mask; Reformer LSH vs exact attention and reformer-pytorch's LSHAttention; LSH quality
(relative error and top-k recall vs n_hashes).

Run: `python -m benchmarks.sparse` (`--quick` for a short smoke run, `--threads` to
change the intra-op thread count; default 1, see below).
"""
from __future__ import annotations

import argparse
import itertools
from functools import partial

import torch
import torch.nn.functional as F

from attnlab.analysis.lsh_quality import clustered_qk, quality_curve
from attnlab.analysis.scaling import default_mechanisms, geometric, measure_scaling, plot_scaling
from attnlab.masks import EMPTY, bigbird, global_tokens, sliding_window
from attnlab.ops.lsh import default_n_buckets, lsh_attention
from attnlab.ops.softmax import attention
from attnlab.ops.softmax.block_sparse import block_sparse_attention

from .common import header, matmul_peak_flops, time_fn, write_results

B, H, D = 1, 2, 64
WINDOW, N_GLOBAL = 512, 64  # window keys (self included); global positions 0..63
BB = {"block_size": 64, "window_blocks": 3, "global_blocks": (0, 1), "random_blocks": 3}  # ITC base
BUCKET, HASHES = 64, 4  # LSH chunk (= reformer-pytorch bucket_size) and rounds


def masks(n: int) -> dict[str, tuple]:
    """name -> (attnlab Mask, executor block size, flex mask_mod)."""
    win = sliding_window(WINDOW)

    def flex_win(b, h, q, k):
        return (q >= k) & (q - k < WINDOW)

    wg = win | global_tokens(list(range(N_GLOBAL)))

    def flex_wg(b, h, q, k):
        return ((q >= k) & (q - k < WINDOW)) | (q < N_GLOBAL) | (k < N_GLOBAL)

    bb = bigbird(n, **BB, seed=0)
    table = bb.bigbird[1]["all"]
    bs = BB["block_size"]

    def flex_bb(b, h, q, k):
        return table[q // bs, k // bs]

    return {"window": (win, 128, flex_win), "window+global": (wg, 128, flex_wg),
            "bigbird": (bb, bs, flex_bb)}


def visible_block_area(mask, n: int, blk: int) -> int:
    """Score entries inside non-empty blocks: the work a block-sparse kernel performs."""
    lay = mask.block_layout(n, n, blk)
    return int((lay.kind != EMPTY).sum()) * blk * blk


def structured(ns: list[int], peak: float, reps: int, flex_max: int, sdpa_max: int,
               summary: dict) -> list[str]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention)
    rows = [("| mask | N | attnlab block-sparse (s) | GFLOP/s (% peak) | SDPA dense mask (s) | "
            "flex compiled (s) | flex, block = mask block (s) | vs SDPA | vs flex | "
            "max abs diff vs flex |"), "|" + "---|" * 10]
    g = torch.Generator().manual_seed(0)
    for n in ns:
        q, k, v = (torch.randn(B, H, n, D, generator=g) for _ in range(3))
        for name, (m, blk, mod) in masks(n).items():
            ours = partial(block_sparse_attention, q, k, v, mask=m, q_block=blk, kv_block=blk)
            out = ours()
            t = time_fn(ours, reps)
            flops = 4 * D * B * H * visible_block_area(m, n, blk)
            cells = {"sdpa": "–", "flex": "–", "flex_b": "–", "r_sdpa": "–", "r_flex": "–",
                     "diff": "–"}
            if n <= sdpa_max:
                ts = time_fn(partial(attention, q, k, v, mask=m, backend="sdpa"), 1, warmup=0)
                cells["sdpa"], cells["r_sdpa"] = f"{ts.median:.4f}", f"{ts.median / t.median:.2f}x"
            if n <= flex_max:
                bm = create_block_mask(mod, None, None, n, n, device="cpu")
                fo = flex(q, k, v, block_mask=bm)
                tf = time_fn(partial(flex, q, k, v, block_mask=bm), reps)
                cells["flex"], cells["r_flex"] = f"{tf.median:.4f}", f"{tf.median / t.median:.2f}x"
                summary[(name, n, "flex")] = tf.median / t.median
                summary[(name, n, "flex_peak")] = flops / tf.median / peak
                cells["diff"] = f"{float((fo - out).abs().max()):.1e}"
                if blk != 128:  # flex at the mask's own block size (no 128-tile waste)
                    bm2 = create_block_mask(mod, None, None, n, n, device="cpu", BLOCK_SIZE=blk)
                    flex(q, k, v, block_mask=bm2)
                    tf2 = time_fn(partial(flex, q, k, v, block_mask=bm2), reps)
                    cells["flex_b"] = f"{tf2.median:.4f}"
                    summary[(name, n, "flex_b")] = tf2.median / t.median
            row = (f"| {name} | {n} | {t.median:.4f} | {flops / t.median / 1e9:.1f} "
                   f"({100 * flops / t.median / peak:.0f}%) | {cells['sdpa']} | {cells['flex']} | "
                   f"{cells['flex_b']} | {cells['r_sdpa']} | {cells['r_flex']} | {cells['diff']} |")
            rows.append(row)
            print(row, flush=True)
    return rows


def lsh_speed(ns: list[int], peak: float, reps: int, summary: dict) -> list[str]:
    try:
        from reformer_pytorch.reformer_pytorch import LSHAttention
    except ImportError:  # optional `bench` extra: the peer column says so
        LSHAttention = None

    rows = [("| N | attnlab LSH dedup (s) | attnlab LSH no dedup (s) | GFLOP/s (% peak) | "
             "attnlab factorised hashing, dedup (s) | reformer-pytorch (s) | exact fused "
             "SDPA (s) | vs reformer-pytorch (no dedup) | vs exact |"), "|" + "---|" * 9]
    g = torch.Generator().manual_seed(1)
    peer = None if LSHAttention is None else \
        LSHAttention(bucket_size=BUCKET, n_hashes=HASHES, causal=False).eval()
    for n in ns:
        qk, v = (torch.randn(B, H, n, D, generator=g) for _ in range(2))
        t1 = time_fn(partial(lsh_attention, qk, v, n_hashes=HASHES, chunk_size=BUCKET), reps)
        t2 = time_fn(partial(lsh_attention, qk, v, n_hashes=HASHES, chunk_size=BUCKET,
                             dedup=False), reps)
        t3 = time_fn(partial(lsh_attention, qk, v, n_hashes=HASHES, chunk_size=BUCKET,
                             n_buckets=factor_pair(default_n_buckets(n, BUCKET))), reps)
        flat_qk, flat_v = qk.reshape(B * H, n, D), v.reshape(B * H, n, D)  # (B·H, N, D)
        tp = None
        if peer is not None:
            with torch.no_grad():
                tp = time_fn(partial(peer, flat_qk, flat_v), reps)
        te = time_fn(partial(F.scaled_dot_product_attention, qk, qk, v),
                     1 if n > 16384 else reps)
        flops = 4 * D * B * H * HASHES * n * 2 * BUCKET
        row = (f"| {n} | {t1.median:.4f} | {t2.median:.4f} | {flops / t2.median / 1e9:.1f} "
               f"({100 * flops / t2.median / peak:.0f}%) | {t3.median:.4f} | "
               f"{'not installed' if tp is None else f'{tp.median:.4f}'} | {te.median:.4f} | "
               f"{'—' if tp is None else f'{tp.median / t2.median:.2f}x'} | "
               f"{te.median / t1.median:.2f}x |")
        rows.append(row)
        print(row, flush=True)
        if tp is not None:
            summary[("lsh", n, "reformer")] = tp.median / t2.median
            summary[("lsh", n, "reformer_dedup")] = tp.median / t1.median
        summary[("lsh", n, "exact")] = te.median / t1.median
    return rows


def factor_pair(n_buckets: int) -> int | tuple[int, int]:
    """Two even factors of `n_buckets` as close to √n_buckets as possible (1024 → (32, 32));
    `n_buckets` itself when it has no split into two even factors."""
    best: int | tuple[int, int] = n_buckets
    f = 2
    while f * f <= n_buckets:
        if n_buckets % f == 0 and (n_buckets // f) % 2 == 0:
            best = (f, n_buckets // f)
        f += 2
    return best


def verdicts(summary: dict, curve_errors: list[float]) -> list[str]:
    """The issue's targets against this run's measurements."""
    def fmt(key):
        return f"{summary[key]:.2f}x" if key in summary else "not measured"

    def ok(key, bound):
        return "met" if summary.get(key, 0) >= bound else "NOT met"

    falling = all(a > b for a, b in itertools.pairwise(curve_errors))
    return [
        "| target | measured | verdict |", "|---|---|---|",
        (f"| BigBird ≥ 2x faster than compiled FlexAttention at N = 16384 | "
         f"{fmt(('bigbird', 16384, 'flex'))} (flex default block); "
         f"{fmt(('bigbird', 16384, 'flex_b'))} (flex at block 64) | "
         f"{ok(('bigbird', 16384, 'flex'), 2)} / {ok(('bigbird', 16384, 'flex_b'), 2)} |"),
        (f"| window + global ≥ 2x faster than compiled FlexAttention at N = 16384 | "
         f"{fmt(('window+global', 16384, 'flex'))} | {ok(('window+global', 16384, 'flex'), 2)} |"),
        (f"| LSH at N = 65536 faster than exact attention | {fmt(('lsh', 65536, 'exact'))} "
         f"(dedup on) | {ok(('lsh', 65536, 'exact'), 1)} |"),
        (f"| LSH at N = 65536 faster than reformer-pytorch | {fmt(('lsh', 65536, 'reformer'))} "
         f"(both without dedup); {fmt(('lsh', 65536, 'reformer_dedup'))} (ours with dedup) | "
         f"{ok(('lsh', 65536, 'reformer'), 1)} |"),
        (f"| LSH error falls as n_hashes grows | clustered: "
         f"{' → '.join(f'{e:.3f}' for e in curve_errors)} | {'met' if falling else 'NOT met'} |"),
        "",
        ("Reading: a 2x margin over compiled FlexAttention needs FlexAttention to waste half "
        "its work. For the window it does not: counting the same non-empty-block FLOPs, "
        f"FlexAttention ran at {100 * summary.get(('window', 16384, 'flex_peak'), 0):.0f}% "
        "of the measured peak at N = 16384, so a 2x faster exact kernel would have to run "
        f"at {200 * summary.get(('window', 16384, 'flex_peak'), 0):.0f}% of peak. "
        "BigBird's 64-token random blocks leave many of FlexAttention's default 128x128 "
        "tiles largely masked (a lone 64x64 block fills a quarter of its tile), which is where attnlab's executor (tiling at the "
        "mask's own 64-token blocks) gains; given the same 64-token block, FlexAttention's "
        "generated kernel is faster than the executor's per-run calls."),
    ]


def lsh_quality(n: int, errors: list[float]) -> list[str]:
    rows = ["| inputs | n_hashes | relative error | top-8 recall |", "|---|---|---|---|"]
    for label, (qk, v) in (("clustered", clustered_qk(n, D, seed=0)),
                           ("i.i.d. Gaussian", (torch.randn(1, 1, n, D), torch.randn(1, 1, n, D)))):
        curve = quality_curve(qk, v, [1, 2, 4, 8, 16], chunk_size=BUCKET,
                              n_buckets=n // BUCKET, k=8)
        for r, c in curve.items():
            rows.append(f"| {label} | {r} | {c['relative_error']:.3f} | {c['topk_recall']:.3f} |")
            if label == "clustered":
                errors.append(c["relative_error"])
            print(rows[-1], flush=True)
    return rows


def scaling(quick: bool, threads: int) -> list[str]:
    ns = geometric(1024, 4096 if quick else 16384)
    res = measure_scaling(default_mechanisms(head_dim=D, window=WINDOW, block=64, chunk=BUCKET,
                                             n_hashes=2), ns, repeats=3, estimator="min",
                          threads=threads)
    rows = ["| mechanism | " + " | ".join(f"N={n} (s)" for n in ns) + " | fitted slope | "
            "max log residual |", "|" + "---|" * (len(ns) + 3)]
    for r in res:
        rows.append(f"| {r.name} | " + " | ".join(f"{t:.4f}" for t in r.seconds)
                    + f" | {r.slope:.2f} | {r.max_residual:.2f} |")
        print(rows[-1], flush=True)
    if not quick:
        from .common import RESULTS_DIR

        path = plot_scaling(res, str(RESULTS_DIR / "sparse_scaling.png"))
        rows.append("" if path is None else "\n![time vs N, log-log](sparse_scaling.png)")
    return rows


def run(quick: bool, threads: int) -> str:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    peak = matmul_peak_flops()
    reps = 2 if quick else 5
    ns = [4096] if quick else [4096, 16384, 65536]
    out = [header("Sparse family: window, window + global, BigBird, Reformer LSH", peak_flops=peak)]
    out.append(
        f"Config: B={B}, H={H}, head_dim={D}, fp32, no grad, {threads} torch thread(s); median "
        f"of {reps} runs (dense-mask SDPA and exact attention at N > 16384: 1 run). Window W={WINDOW} (self included); globals: "
        f"positions 0..{N_GLOBAL - 1}; BigBird ITC bidirectional, block {BB['block_size']}, "
        f"{BB['window_blocks']} window + {len(BB['global_blocks'])} global + "
        f"{BB['random_blocks']} random blocks; LSH chunk {BUCKET} (= reformer-pytorch "
        f"bucket_size), {HASHES} rounds, bidirectional. One thread because the machine was "
        "shared with other jobs while this ran: with two threads, many-op workloads stall "
        "on a preempted worker and timings swing by 10x; everything here, the peak included, "
        "uses the same thread count. Timings still carry load noise (see the load line).\n")
    print(out[-1])
    out.append("## Structured masks: block-sparse executor vs SDPA (dense mask) and compiled "
               "FlexAttention\n")
    out.append("GFLOP/s counts 4·D FLOPs per score entry in non-empty blocks (QKᵀ and PV). "
               "'vs' columns: peer time / attnlab time (> 1 means attnlab is faster). "
               "FlexAttention uses its default 128 block; for BigBird (64-token blocks) it is "
               "also run with BLOCK_SIZE=64. Dense-mask SDPA and FlexAttention's block-mask "
               "construction materialise N² entries, so they stop at 16384.\n")
    summary: dict = {}
    out += structured(ns, peak, reps, flex_max=16384, sdpa_max=16384, summary=summary)
    out.append("\n## Reformer LSH: attnlab vs reformer-pytorch LSHAttention vs exact attention\n")
    out.append("Same chunk/bucket size and rounds. reformer-pytorch's default "
               "(allow_duplicate_attention=True) merges rounds without the duplicate "
               "correction, so it is compared with attnlab's dedup=False; dedup=True is the "
               "exact union (more work). Factorised hashing: the same N/64 buckets as a "
               "product of two rotations (e.g. 32·32 at N = 65536), which cuts the hashing "
               "term (N·d·n_buckets/2 per round, quadratic in N) to N·d·(n1+n2)/2. "
               "Exact = fused SDPA, non-causal, shared QK. GFLOP/s counts the chunked "
               "attention only (4·d per score, no hashing).\n")
    out += lsh_speed(ns, peak, reps, summary)
    out.append("\n## Measured complexity: log-log slope of time vs N "
               "(`attnlab.analysis.scaling`)\n")
    out.append(f"One head, d = {D}, causal everywhere: full = fused SDPA; window W={WINDOW} and "
               "BigBird (block 64) on the block-sparse executor; LSH 2 rounds, chunk "
               f"{BUCKET}. Fastest of 3 runs per point. Expected slopes: 2 (full), 1 (window, "
               "BigBird), 1–1.2 (LSH).\n")
    out += scaling(quick, threads)
    nq = 1024 if quick else 2048
    out.append(f"\n## LSH quality vs n_hashes (N = {nq}, chunk {BUCKET}, dedup on)\n")
    out.append("Relative error = ‖o_lsh − o_exact‖/‖o_exact‖ against exact shared-QK "
               "attention; top-8 recall = share of each query's 8 highest-scoring keys that "
               "LSH attends to. Clustered inputs have about one chunk of tokens per cluster.\n")
    errors: list[float] = []
    out += lsh_quality(nq, errors)
    out.append("\n## Against the targets\n")
    out += verdicts(summary, errors)
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads < 1:
        raise SystemExit(f"--threads ({args.threads}) must be >= 1")
    text = run(args.quick, args.threads)
    if not args.quick:
        path = write_results("sparse", text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
