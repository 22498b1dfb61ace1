"""Linear family benchmark: time vs N for parallel / chunked / recurrent linear attention and
Mamba-2 SSD, the crossover against softmax attention (SDPA causal), Performer error vs m
(against exact softmax, and against performer-pytorch's FastAttention in the same run), and
the chunked forms' FLOP/s as a fraction of this machine's measured fp32 matmul peak.

Run: `python -m benchmarks.linear` (add `--quick` for a short smoke run).
"""
from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from attnlab.masks import causal as causal_mask
from attnlab.ops.linear import draw_random_features, linear_attention_features, performer_attention
from attnlab.ops.softmax import attention_reference
from attnlab.ops.ssd import ssd

from .common import Timing, header, matmul_peak_flops, time_fn, write_results

DRAWS = 5  # feature draws per Performer error figure
B, H, D = 1, 8, 64  # batch, heads, head_dim (= feature width F = value width = SSD P and S)


def lin_inputs(N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = F.elu(torch.randn(B, H, N, D, generator=g)) + 1  # already feature-mapped (elu+1)
    k = F.elu(torch.randn(B, H, N, D, generator=g)) + 1
    v = torch.randn(B, H, N, D, generator=g)
    return q, k, v


def ssd_inputs(N: int, seed: int = 0, strong: bool = False):
    """Mild decays (Δ ≈ 0.02, A ∈ [−4, −1]): chunk-local log decays stay above −60 and the
    factorised path runs. Strong (Δ ≈ 0.3, A ∈ [−16, −1], Mamba-2's A init range): the exact
    per-head mask path runs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, N, D, generator=g)
    dt = F.softplus(torch.randn(B, H, N, generator=g) - (1.0 if strong else 4.0))
    A = -torch.linspace(1.0, 16.0 if strong else 4.0, H)
    Bm = torch.randn(B, 1, N, D, generator=g) / math.sqrt(D)
    Cm = torch.randn(B, 1, N, D, generator=g) / math.sqrt(D)
    return x, dt, A, Bm, Cm


def lin_flops(N: int, C: int) -> tuple[float, float]:
    """(executed, useful) FLOPs of chunked normalised linear attention.

    Per token and head: QKᵀ 2·C·F, A·V 2·C·Dv, row sums C, chunk state 2·F·Dv + F, read-out
    2·F·Dv + 2·F. Useful counts only the causal half of each chunk's C×C block.
    """
    per_state = 4 * D * D + 3 * D
    executed = B * H * N * (2 * C * D + 2 * C * D + C + per_state)
    useful = B * H * N * ((C + 1) / 2 * (4 * D + 1) + per_state)
    return executed, useful


def ssd_flops(N: int, C: int) -> tuple[float, float]:
    """(executed, useful) FLOPs of chunked SSD (one B/C group): C Bᵀ 2·C·S per token,
    mask·X 2·C·P, chunk state 2·S·P and readout 2·S·P per token and head."""
    executed = B * N * 2 * C * D + B * H * N * (2 * C * D + 4 * D * D)
    useful = B * N * (C + 1) * D + B * H * N * ((C + 1) * D + 4 * D * D)
    return executed, useful


REPS = 5  # timed runs per measurement (after one warm-up)


def measure(fn, *args, reps: int = REPS, **kwargs) -> Timing:
    """Median and best wall time of fn(*args, **kwargs)."""
    return time_fn(lambda: fn(*args, **kwargs), repeats=reps, warmup=1 if reps > 1 else 0)


def run(quick: bool, threads: int) -> str:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    peak = matmul_peak_flops()
    Ns = [1024, 4096, 16384] if quick else [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    rec_max = 4096 if quick else 16384
    par_max = 4096
    ssd_quad_max = 2048  # the segsum table is (H, N, N) with several passes
    sdpa_max = 16384
    C_lin, C_ssd = 256, 256
    out = [header("Linear family: linear attention, SSD, Performer", peak_flops=peak)]
    out.append(f"Config: B={B}, H={H}, head_dim=F=Dv={D} (SSD: P=S={D}, one B/C group), fp32, "
               f"no grad; chunk {C_lin} (linear) / {C_ssd} (SSD); median and best of {REPS} "
               f"runs (recurrent: 1 run); {threads} torch thread(s), peak measured with the same "
               "count. The machine's 2 cores were shared with other jobs while this ran, so "
               "timings carry load noise; with 2 threads on busy cores an OpenMP region stalls "
               "whenever its partner thread is descheduled (we saw 10–100× jitter on single "
               "calls), hence the default of 1 thread.\n")
    print(out[-1])

    times: dict[int, dict[str, Timing]] = {}
    with torch.no_grad():
        for N in Ns:
            q, k, v = lin_inputs(N)
            x, dt, A, Bm, Cm = ssd_inputs(N)
            t = {"lin chunked": measure(linear_attention_features, q, k, v, chunk_size=C_lin),
                 "ssd chunked": measure(ssd, x, dt, A, Bm, Cm, chunk_size=C_ssd)}
            if N <= par_max:
                t["lin parallel"] = measure(linear_attention_features, q, k, v, mode="parallel")
            if N <= ssd_quad_max:
                t["ssd quadratic"] = measure(ssd, x, dt, A, Bm, Cm, mode="quadratic")
            if N <= rec_max:  # one run each: the Python token loop is the slow one
                t["lin recurrent"] = measure(linear_attention_features, q, k, v,
                                             mode="recurrent", reps=1)
                t["ssd recurrent"] = measure(ssd, x, dt, A, Bm, Cm, mode="recurrent", reps=1)
            if N <= sdpa_max:
                qs, ks, vs = (torch.randn(B, H, N, D) for _ in range(3))
                t["SDPA causal"] = measure(F.scaled_dot_product_attention, qs, ks, vs,
                                           is_causal=True)
            if N == 16384 or (quick and N == Ns[-1]):
                xs_, dts_, As_, Bs_, Cs_ = ssd_inputs(N, strong=True)
                t["ssd chunked (strong decay)"] = measure(ssd, xs_, dts_, As_, Bs_, Cs_,
                                                          chunk_size=C_ssd)
                t["ssd recurrent (strong decay)"] = measure(ssd, xs_, dts_, As_, Bs_, Cs_,
                                                            mode="recurrent", reps=1)
            times[N] = t
            print(N, {k_: round(v_.median * 1e3, 2) for k_, v_ in t.items()})
    cols = ["lin parallel", "lin chunked", "lin recurrent", "ssd quadratic", "ssd chunked",
            "ssd recurrent", "SDPA causal"]
    out.append("## Time vs N (ms, median / best)\n")
    out.append("| N | " + " | ".join(cols) + " |")
    out.append("|---" * (len(cols) + 1) + "|")
    for N in Ns:
        out.append(f"| {N} | " + " | ".join(
            (f"{times[N][c].median * 1e3:.1f} / {times[N][c].best * 1e3:.1f}"
             if c in times[N] else "–") for c in cols) + " |")
    out.append("\n– = not run: the parallel/quadratic forms hold an N×N table per head "
               f"(linear skipped above N={par_max}, SSD above {ssd_quad_max}), the Python token "
               f"loop above N={rec_max}, SDPA above {sdpa_max} (quadratic time). SSD here uses "
               "mild decays (see below for strong ones).\n")

    def slope(name):  # log-log fit of the best times over N ≥ 4096
        pts = [(math.log(N), math.log(times[N][name].best)) for N in Ns
               if name in times[N] and N >= 4096]
        if len(pts) < 2:
            return float("nan")
        X = torch.tensor([[p[0], 1.0] for p in pts], dtype=torch.float64)
        y = torch.tensor([[p[1]] for p in pts], dtype=torch.float64)
        return float(torch.linalg.lstsq(X, y).solution[0, 0])

    out.append("Log-log slope of best time vs N (N ≥ 4096): " + ", ".join(
        f"{c} {slope(c):.2f}" for c in ("lin chunked", "ssd chunked", "lin recurrent",
                                         "ssd recurrent", "SDPA causal")) + "\n")

    out.append("## Crossover against softmax attention (SDPA causal, same shapes, best times)\n")
    cross = []
    for N in Ns:
        if "SDPA causal" in times[N]:
            sd = times[N]["SDPA causal"].best
            r_l, r_s = sd / times[N]["lin chunked"].best, sd / times[N]["ssd chunked"].best
            if r_l > 1:
                cross.append(N)
            out.append(f"- N={N}: SDPA / chunked linear = {r_l:.2f}×, SDPA / chunked SSD = "
                       f"{r_s:.2f}×")
    slower = [N for N in Ns if "SDPA causal" in times[N] and N not in cross]
    out.append(f"\nChunked linear attention is faster than SDPA causal at N = {cross or 'none'} "
               f"and slower at {slower or 'none'} among the lengths measured, so the crossover "
               f"lies {'below ' + str(min(cross)) if cross and not slower else 'between the two'}"
               ".\n")

    N16 = 16384 if 16384 in times else Ns[-1]
    t16 = times[N16]
    out.append(f"## Chunked forms at N = {N16} against the fp32 matmul peak "
               f"({peak / 1e9:.1f} GFLOP/s, {threads} thread(s))\n")
    out.append("| form | median (ms) | best (ms) | executed GFLOP/s (best) | % of peak | useful "
               "GFLOP/s (best) | % of peak | recurrent loop (ms) | speed-up (best) |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    res = {}
    for name, key, rec, flops in (
            ("linear attention", "lin chunked", "lin recurrent", lin_flops(N16, C_lin)),
            ("SSD, mild decays (factorised path)", "ssd chunked", "ssd recurrent",
             ssd_flops(N16, C_ssd)),
            ("SSD, strong decays (exact-mask path)", "ssd chunked (strong decay)",
             "ssd recurrent (strong decay)", ssd_flops(N16, C_ssd))):
        tm = t16[key]
        ex, us = flops
        sp = t16[rec].best / tm.best if rec in t16 else float("nan")
        rec_ms = f"{t16[rec].best * 1e3:.0f}" if rec in t16 else "–"
        res[name] = (ex / tm.best / peak, sp)
        out.append(f"| {name} | {tm.median * 1e3:.1f} | {tm.best * 1e3:.1f} | "
                   f"{ex / tm.best / 1e9:.1f} | {100 * ex / tm.best / peak:.0f}% | "
                   f"{us / tm.best / 1e9:.1f} | {100 * us / tm.best / peak:.0f}% | {rec_ms} | "
                   f"{sp:.0f}× |")
    out.append("\nExecuted FLOPs count every multiply-add the chunked algorithm performs "
               "(including the masked upper half of each chunk's C×C block); useful FLOPs "
               "count the causal half only. Fractions use the best of the runs: on a shared "
               "machine the minimum is the run least disturbed by other jobs (medians are in "
               "the time table).\n")
    out.append("Targets (issue): chunked forms ≥ 40% of fp32 matmul peak at N = 16K and ≥ 20× "
               "faster than the recurrent loop: " + "; ".join(
                   f"{n}: {100 * f:.0f}% of peak ({'met' if f >= 0.4 else 'NOT met'}), "
                   f"{s:.0f}× ({'met' if s >= 20 else 'NOT met'})" for n, (f, s) in res.items())
               + ".\n")

    # chunk-size sweep at N16: FLOP/s favours large chunks, wall time may not
    out.append(f"### Chunk size sweep at N = {N16} (best of {REPS})\n")
    out.append("| form | C | best (ms) | executed GFLOP/s | % of peak | speed-up vs recurrent |")
    out.append("|---|---|---|---|---|---|")
    q, k, v = lin_inputs(N16)
    x, dt, A, Bm, Cm = ssd_inputs(N16)
    with torch.no_grad():
        for C in (64, 128, 256):
            for name, fn, args, rec, fl in (
                    ("linear attention", linear_attention_features, (q, k, v), "lin recurrent",
                     lin_flops(N16, C)[0]),
                    ("SSD (mild)", ssd, (x, dt, A, Bm, Cm), "ssd recurrent",
                     ssd_flops(N16, C)[0])):
                tb = measure(fn, *args, chunk_size=C).best
                sp = t16[rec].best / tb if rec in t16 else float("nan")
                out.append(f"| {name} | {C} | {tb * 1e3:.1f} | {fl / tb / 1e9:.1f} | "
                           f"{100 * fl / tb / peak:.0f}% | {sp:.1f}× |")
    out.append(
        "\nWhy the 20× target is out of reach here: the recurrent form does *less* arithmetic "
        "than the chunked one — 4·F·Dv FLOPs per token and head (state update + read-out) "
        "against 2·C·F + 2·C·Dv + 4·F·Dv for chunk C (≈ 5× more at C = 256) — and at "
        "B = 1, H = 8 its state (H·F·Dv·4 B ≈ 130 KB) stays in cache, so each Python step "
        "costs ~60 µs of mostly fixed overhead. On one CPU core the chunked form wins by "
        "turning that overhead into GEMMs, not by doing less work; the large speed-ups "
        "quoted for GPUs come from the recurrent loop being latency-bound there.\n")

    out.append(performer_section(quick))
    return "\n".join(out)


def performer_section(quick: bool) -> str:
    """Performer error vs m against exact softmax; performer-pytorch in the same run."""
    lines = ["## Performer (FAVOR+) error vs number of features m\n"]
    N, Hp = (256, 2) if quick else (1024, 4)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, Hp, N, D, generator=g) * 0.5
    k = torch.randn(1, Hp, N, D, generator=g) * 0.5
    v = torch.randn(1, Hp, N, D, generator=g)
    exact = attention_reference(q, k, v)
    exact_c = attention_reference(q, k, v, mask=causal_mask())
    try:
        from performer_pytorch import FastAttention
    except ImportError:  # optional `bench` extra
        FastAttention = None
    ms = [16, 64, 256, 1024] if quick else [16, 32, 64, 128, 256, 512, 1024, 2048]
    lines.append(f"Inputs: q, k ~ 0.5·N(0, 1), v ~ N(0, 1), N={N}, H={Hp}, head_dim={D}; error = "
                 "‖approx − exact‖_F / ‖exact‖_F against exact softmax attention (scale 1/√d); "
                 f"median over {DRAWS} feature draws (the estimator is heavy-tailed: a single "
                 "feature aligned with a key can weigh e^15, so means are dominated by rare "
                 "draws).\n")
    lines.append("| m | iid | orthogonal (sign fix) | orthogonal, no sign fix | causal (ORF) "
                 "| performer-pytorch FastAttention |")
    lines.append("|---|---|---|---|---|---|")

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    errs = {}
    for m in ms:
        row = {}
        for label, orth, fix in (("iid", False, True), ("orf", True, True), ("nofix", True, False)):
            row[label] = statistics.median(rel(performer_attention(q, k, v, draw_random_features(
                m, D, orthogonal=orth, sign_fix=fix, generator=torch.Generator().manual_seed(s)),
                causal=False), exact) for s in range(DRAWS))
        row["causal"] = statistics.median(rel(performer_attention(q, k, v, draw_random_features(
            m, D, generator=torch.Generator().manual_seed(s))), exact_c) for s in range(DRAWS))
        if FastAttention is not None:
            errs_peer = []
            for s in range(DRAWS):
                torch.manual_seed(s)  # performer-pytorch draws its features from the global RNG
                errs_peer.append(rel(FastAttention(dim_heads=D, nb_features=m)(q, k, v), exact))
            row["peer"] = statistics.median(errs_peer)
        errs[m] = row
        lines.append(f"| {m} | {row['iid']:.4f} | {row['orf']:.4f} | {row['nofix']:.4f} | "
                     f"{row['causal']:.4f} | " + (f"{row['peer']:.4f}" if "peer" in row else "–")
                     + " |")
        print("performer", m, row)
    X = torch.tensor([[math.log(m), 1.0] for m in ms], dtype=torch.float64)
    y = torch.tensor([[math.log(errs[m]["iid"])] for m in ms], dtype=torch.float64)
    sl = float(torch.linalg.lstsq(X, y).solution[0, 0])
    lines.append(f"\nLog-log slope of the iid error vs m: {sl:.2f} (1/√m predicts −0.5).\n")

    # speed against the peer, same shapes, non-causal and causal
    if FastAttention is None:
        lines.append("performer-pytorch is not installed (optional `bench` extra): no peer "
                     "timing.\n")
    else:
        Nt, m = (1024, 128) if quick else (4096, 256)
        qs, ks, vs = (torch.randn(1, H, Nt, D) * 0.5 for _ in range(3))
        om = draw_random_features(m, D, generator=torch.Generator().manual_seed(0))
        lines.append(f"Timing at N={Nt}, H={H}, head_dim={D}, m={m} (median of 3, ms):\n")
        lines.append("| | attnlab | performer-pytorch | ratio (peer / attnlab) |")
        lines.append("|---|---|---|---|")
        with torch.no_grad():
            for causal in (False, True):
                fa = FastAttention(dim_heads=D, nb_features=m, causal=causal)
                ta = measure(performer_attention, qs, ks, vs, om, causal=causal, reps=3).median
                tp = measure(fa, qs, ks, vs, reps=3).median
                lines.append(f"| {'causal' if causal else 'non-causal'} | {ta * 1e3:.1f} | "
                             f"{tp * 1e3:.1f} | {tp / ta:.2f}× |")
        lines.append("\nperformer-pytorch's causal path on CPU is its 'memory inefficient "
                     "non-cuda version' (a cumulative sum over N of m×d outer products).\n")
    lines.append("Other peers: flash-linear-attention 0.6 needs triton even for its naive "
                 "references (`fla.ops` imports triton), and the `rwkv` package's WKV lives "
                 "inside its checkpoint-loading model class; neither ran here on CPU.\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    text = run(args.quick, args.threads)
    if not args.quick:
        print("wrote", write_results("linear", text))
    else:
        print(text)


if __name__ == "__main__":
    main()
