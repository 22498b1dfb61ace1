"""The continuous-batching engine through the model's own forward: speed against a plain
batched decode loop, throughput per mixer kind, and KV memory per sequence.

1. Batch-B decode: the engine (`serving.Engine`, decode steps reading the paged pool
   through the block tables with `ops.paged.paged_decode`) against the same model
   decoding the same prompts in one plain loop over contiguous caches
   (`model.new_cache`, decode steps through `ops.softmax.kv_decode`): the same compiled
   kernel (native C++, else numba) on both sides; and the two kernels alone on the same
   shapes.
2. Throughput: generated tokens/s vs batch size for every built-in mixer kind
   (`serving.zoo`), prompt 64, 64 new tokens.
3. KV bytes per sequence vs context, measured from the pools (`serving.measure`), with a
   plot: windowed layers stay flat beyond W; full attention grows linearly.
4. Memory per sequence at 4K and 32K context for MHA, GQA, MLA, window and SSD.

Run alone: `python -m benchmarks.serving_engine [--quick]` (writes
benchmarks/results/serving_engine.md); `python -m benchmarks.serving` includes it.
`--ratio-only [B ...]` runs section 1 alone (default batch 16) and only prints it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnlab import attention
from attnlab.models.generate import generate
from attnlab.ops.paged import paged_decode
from attnlab.ops.softmax.kv_decode import choose_impl, kv_decode
from attnlab.serving.engine import Engine, EngineConfig, Request
from attnlab.serving.measure import sequence_memory
from attnlab.serving.zoo import MODEL_KINDS, serving_model

from .common import header, matmul_peak_flops, stream_bandwidth, time_fn, write_results

KERNEL = choose_impl("auto")  # the compiled decode kernel both sides run


class _KVDecodeAttention:
    """The plain loop's attention function (a layer's `attention_fn`): decode steps (one
    query at the last cached position, no window) go to `ops.softmax.kv_decode` over the
    contiguous cache's views, read in place; prefill goes to `attnlab.attention`. The
    engine's decode steps run `ops.paged.paged_decode`, the same compiled kernel reading
    rows through block tables, so the two sides differ only in where rows live."""

    def __init__(self):
        self.decode_calls = 0

    def __call__(self, q, k, v, *, mask, scale, backend, q_pos, kv_pos):
        if q.shape[2] == 1 and q_pos is not None and int(q_pos.reshape(-1)[-1]) == \
                int(kv_pos[-1]):  # causal decode: the last query sees every cached key
            self.decode_calls += 1
            lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.long)  # (B,)
            return kv_decode(q, k, v, lens=lens, scale=scale)
        return attention(q, k, v, mask=mask, scale=scale, backend=backend, q_pos=q_pos,
                         kv_pos=kv_pos)


def _new_engine(model, prompts: list[list[int]], new: int, block_size: int = 16,
                chunk: int = 512) -> tuple[Engine, list[float]]:
    """An engine holding `prompts`, its model forward timed apart (the list's one entry
    accumulates the seconds spent in `Engine._forward`)."""
    need = len(prompts) * (-(-(max(map(len, prompts)) + new) // block_size) + 2)
    eng = Engine(model, EngineConfig(num_blocks=need, block_size=block_size,
                                     max_batch_tokens=max(chunk, len(prompts)),
                                     prefill_chunk=chunk, max_running=len(prompts)))
    for p in prompts:
        eng.add_request(Request(p, new))
    forward_s = [0.0]
    inner = eng._forward

    def timed(items):  # the model's forward inside the step, timed apart from the rest
        t = time.perf_counter()
        out = inner(items)
        forward_s[0] += time.perf_counter() - t
        return out

    eng._forward = timed
    return eng, forward_s


def _engine(model, prompts: list[list[int]], new: int, block_size: int = 16,
            chunk: int = 512) -> tuple[float, Engine]:
    """Wall time of serving `prompts` to the end, and the engine."""
    eng, _ = _new_engine(model, prompts, new, block_size, chunk)
    t0 = time.perf_counter()
    while not eng.done:
        eng.step()
    return time.perf_counter() - t0, eng


@torch.no_grad()
def _lockstep(model, prompt: torch.Tensor, new: int, kernel: _KVDecodeAttention) -> dict:
    """The plain loop and the engine on the same prompts, their decode steps alternated
    one for one, so load drifts of a shared machine hit both sides alike.

    Plain: `model(tok, cache)` over contiguous caches with `kernel` as the layers'
    attention. Engine: its prefill steps first, then one `Engine.step()` after each plain
    step; an engine step counts as a decode step when every sequence decodes in it.
    Returns seconds: totals per side (prefill included), wall time per decode step, the
    thread's CPU time per decode step (`time.thread_time`: blind to the time other jobs
    hold the core, so steadier on a shared machine; torch and the kernel run on this one
    thread), and the model's forward inside each engine decode step."""
    layers = [blk.mixer for blk in model.blocks]
    if any(getattr(a, "window", None) is not None for a in layers):
        raise ValueError("the plain kv_decode loop is for full (unwindowed) attention")
    B, P = prompt.shape
    eng, forward_s = _new_engine(model, prompt.tolist(), new)
    clock, cpu = time.perf_counter, time.thread_time

    def plain(tokens, cache):
        for a in layers:
            a.attention_fn = kernel
        try:
            t, c = clock(), cpu()
            out = model(tokens, cache)[:, -1]  # (B, vocab)
            return out, clock() - t, cpu() - c
        finally:
            for a in layers:
                a.attention_fn = None

    def engine_step() -> tuple[float, float, float, bool]:
        t, c, f0 = clock(), cpu(), forward_s[0]
        eng.step()
        dt, dc = clock() - t, cpu() - c
        decode = eng.stats.batch_sizes[-1] == B and \
            all(s.computed >= len(s.req.prompt) for s in eng.running)
        return dt, dc, forward_s[0] - f0, decode

    cache = model.new_cache(B, P + new)
    logits, tp, _ = plain(prompt, cache)
    te = 0.0
    while any(s.computed < len(s.req.prompt) for s in eng.waiting + eng.running):
        te += engine_step()[0]  # the engine's prefill (chunks, then mixed steps)
    out = {k: [] for k in ("plain_steps", "plain_cpu", "engine_steps", "engine_cpu",
                           "forward_steps")}
    for _ in range(new - 1):
        logits, dt, dc = plain(logits.argmax(-1, keepdim=True), cache)  # greedy, (B, 1)
        tp += dt
        out["plain_steps"].append(dt)
        out["plain_cpu"].append(dc)
        if not eng.done:
            dt, dc, fwd, decode = engine_step()
            te += dt
            if decode:
                out["engine_steps"].append(dt)
                out["engine_cpu"].append(dc)
                out["forward_steps"].append(fwd)
    while not eng.done:
        te += engine_step()[0]
    out.update(plain_s=tp, engine_s=te, engine=eng)
    return out


def _kernel_only(B: int, L: int, a, block_size: int = 16, repeats: int = 21) -> tuple:
    """The two kernels alone on one layer's decode shapes: kv_decode over a contiguous
    (B, Hkv, L, D) cache vs paged_decode over the same rows in shuffled blocks."""
    g = torch.Generator().manual_seed(0)
    Hkv, D, nb = a.n_kv_heads, a.head_dim, -(-L // block_size)
    q = torch.randn(B, a.n_heads, 1, D, generator=g)
    k, v = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    perm = torch.randperm(B * nb, generator=g)
    tables = perm.view(B, nb)  # (B, nb) shuffled physical blocks

    def pool(x):  # (B, Hkv, L, D) -> (Hkv, B·nb, bs, D) at the tables' blocks
        x = torch.nn.functional.pad(x, (0, 0, 0, nb * block_size - L))
        x = x.view(B, Hkv, nb, block_size, D).permute(1, 0, 2, 3, 4).reshape(Hkv, B * nb,
                                                                            block_size, D)
        out = torch.empty_like(x)
        out[:, perm] = x
        return out

    kp, vp = pool(k), pool(v)
    lens = torch.full((B,), L, dtype=torch.long)
    torch.testing.assert_close(paged_decode(q, kp, vp, tables, lens),
                               kv_decode(q, k, v, lens=lens), atol=1e-5, rtol=1e-4)
    tc = time_fn(lambda: kv_decode(q, k, v, lens=lens), repeats=repeats, warmup=3)
    tp = time_fn(lambda: paged_decode(q, kp, vp, tables, lens), repeats=repeats, warmup=3)
    return tc.median, tp.median


def bench_engine_vs_plain(batches, prompt_len: int, new: int, lines: list[str],
                          repeats: int = 3) -> dict:
    if KERNEL == "torch":
        raise RuntimeError("the engine-vs-plain section compares compiled decode kernels: "
                           "a C++ compiler (native kernel) or the 'fast' extra (numba)")
    if KERNEL == "native":
        return _engine_vs_plain(batches, prompt_len, new, lines, repeats)
    import numba

    threads = torch.get_num_threads()
    before = numba.get_num_threads()  # launches numba's pool; with its OpenMP layer that
    torch.set_num_threads(threads)  # resets torch's thread count (shared runtime): restore
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return _engine_vs_plain(batches, prompt_len, new, lines, repeats)
    finally:
        numba.set_num_threads(before)
        torch.set_num_threads(threads)


def _engine_vs_plain(batches, prompt_len: int, new: int, lines: list[str],
                     repeats: int) -> dict:
    if KERNEL == "native":
        kernel = "the native C++ kernel (kv_native.cpp)"
        threads = f"Both kernels run on {torch.get_num_threads()} thread(s), as many as torch's."
    else:
        import numba
        kernel = "the numba kernel (kv_numba.py)"
        threads = (f"Both kernels run on {numba.get_num_threads()} numba thread(s), as many "
                   f"as torch's ({torch.get_num_threads()}).")
    model = serving_model("gqa", d_model=64, max_seq_len=prompt_len + new)
    a = model.blocks[0].mixer
    lines += [(f"## Engine vs a plain batched decode loop, same kernel family (tiny GQA LM: "
               f"2 layers, d_model 64, 4 query / 2 KV heads, head_dim 16, fp32; prompt "
               f"{prompt_len}, {new} new tokens, greedy; {repeats} repeats)"), "",
              ("Same model, same prompts, same greedy tokens. Peer: one plain loop over "
               "contiguous caches (`model.new_cache`) whose decode steps run "
               f"`ops.softmax.kv_decode` ({kernel}) on the cache's views, read in place; "
               "prefill through `attnlab.attention`. Engine: scheduler + per-step views + the "
               "paged pool, decode steps through `ops.paged.paged_decode` — the same kernel, "
               "rows found through the block tables, the whole batch in one call per layer, "
               "no gather. The two run in lock step: after both prefilled, one plain decode "
               "step, then one engine step, and so on, so load drifts hit both alike. Decode "
               "step = a step where every sequence decodes; per repeat the median over its "
               "steps, the table gives the median over repeats and the "
               "engine / plain ratio of those medians (min–max of the per-repeat ratios "
               "beside it), and the same ratio in the thread's CPU time per step (steadier "
               "when other jobs share the cores). The third row is the model's forward inside the engine step (the "
               "rest is scheduling and bookkeeping). The last column checks that the plain "
               "loop's decode steps really ran kv_decode (2 layers × steps). " + threads), "",
              ("| batch | path | total s | median decode step ms | engine / plain (step) | "
               "per-repeat ratios | engine / plain (CPU time) | tokens equal / kv_decode "
               "calls |"),
              "|---|---|---|---|---|---|---|---|"]
    out = {}
    for B in batches:
        prompt = torch.randint(0, 101, (B, prompt_len), generator=torch.Generator().manual_seed(B))
        with torch.no_grad():  # the engine's tokens == greedy decoding of the same prompts
            ref = generate(model, prompt, new)[:, prompt_len:].tolist()
        rp, re_, rf, tps, tes, ratios, cpu, same, calls = [], [], [], [], [], [], [], True, 0
        for _ in range(repeats):
            kern = _KVDecodeAttention()
            r = _lockstep(model, prompt, new, kern)
            eng = r["engine"]
            same &= [eng.results[i].tokens for i in range(B)] == ref
            calls = kern.decode_calls
            mp, me = statistics.median(r["plain_steps"]), statistics.median(r["engine_steps"])
            rp.append(mp)
            re_.append(me)
            rf.append(statistics.median(r["forward_steps"]))
            tps.append(r["plain_s"])
            tes.append(r["engine_s"])
            ratios.append(me / mp)
            cpu.append(statistics.median(r["engine_cpu"]) / statistics.median(r["plain_cpu"]))
        mp, me, mf = (statistics.median(x) for x in (rp, re_, rf))
        rr = f"{min(ratios):.2f}–{max(ratios):.2f}×"
        rc = f"{statistics.median(cpu):.2f}× ({min(cpu):.2f}–{max(cpu):.2f}×)"
        lines.append(f"| {B} | plain loop, contiguous caches, kv_decode (peer) | "
                     f"{statistics.median(tps):.2f} | {1e3 * mp:.3f} | 1.00× | — | — | "
                     f"{calls} calls |")
        lines.append(f"| {B} | engine, paged pool, paged_decode | {statistics.median(tes):.2f} "
                     f"| {1e3 * me:.3f} | {me / mp:.2f}× | {rr} | {rc} | "
                     f"{'yes' if same else 'NO'} |")
        lines.append(f"| {B} | of which the model's forward on the paged views | — | "
                     f"{1e3 * mf:.3f} | {mf / mp:.2f}× | — | — | — |")
        print("\n".join(lines[-3:]), flush=True)
        out[B] = (me / mp, statistics.median(cpu))  # wall, thread CPU time
    L = prompt_len + new // 2
    lines += ["", (f"Kernels alone, one layer's decode at context {L} (median of 21 calls): "
                   "`kv_decode` on a contiguous cache vs `paged_decode` on the same rows in "
                   "shuffled 16-token blocks (outputs equal)."), "",
              "| batch | kv_decode µs | paged_decode µs | paged / contiguous |",
              "|---|---|---|---|"]
    for B in batches:
        tc, tp = _kernel_only(B, L, a)
        lines.append(f"| {B} | {1e6 * tc:.1f} | {1e6 * tp:.1f} | {tp / tc:.2f}× |")
        print(lines[-1], flush=True)
    lines.append("")
    return out


def bench_throughput(batches, lines: list[str], prompt_len: int = 64, new: int = 64) -> dict:
    lines += [(f"## Throughput per mixer kind (engine, d_model 64, fp32, prompt {prompt_len}, "
               f"{new} new tokens per request, all requests at once; window 16)"), "",
              "generated tokens / wall time of the whole run (prefill included).", "",
              "| kind | layers | " + " | ".join(f"batch {b} tok/s" for b in batches) + " |",
              "|---|---|" + "---|" * len(batches)]
    out = {}
    for kind in MODEL_KINDS:
        model = serving_model(kind, d_model=64, max_seq_len=prompt_len + new + 1)
        row = []
        for B in batches:
            g = torch.Generator().manual_seed(B)
            prompts = torch.randint(0, 101, (B, prompt_len), generator=g).tolist()
            total, eng = _engine(model, prompts, new, chunk=prompt_len)
            row.append(eng.stats.generated / total)
        out[kind] = row
        names = "+".join(sorted({type(b.mixer).__name__ for b in model.blocks}))
        lines.append(f"| {kind} | {model.cfg.n_layers}× {names} | " +
                     " | ".join(f"{r:,.0f}" for r in row) + " |")
        print(lines[-1], flush=True)
    lines.append("")
    return out


def bench_window_memory(contexts, lines: list[str], window: int = 256,
                        png: str | None = None) -> dict:
    kinds = ("gqa", "window", "hybrid-window", "mla", "ssd")
    lines += [(f"## KV bytes per sequence vs context (d_model 64, fp32, block 16, prefill "
               f"chunk 64, window W = {window}), measured from the pools"), "",
              ("`ServingCache.sequence_nbytes`: the sequence's live blocks in every layer "
               "group + its state slot, its peak over the run; every figure equals the "
               "layout formula (`serving.measure.formula_bytes`). A windowed group releases "
               "blocks that leave the window, so it holds W − 1 + one chunk positions."), "",
              "| context | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    res = {k: sequence_memory(k, contexts, window=window, prefill_chunk=64) for k in kinds}
    for c in contexts:
        lines.append(f"| {c:,} | " + " | ".join(f"{res[k][c]['measured']:,}" for k in kinds)
                     + " |")
    bad = [(k, c) for k in kinds for c in contexts
           if res[k][c]["measured"] != res[k][c]["formula"]]
    lines += ["", f"measured == formula: {'all' if not bad else bad}", ""]
    print("\n".join(lines[-len(contexts) - 4:]), flush=True)
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            lines += ["(matplotlib missing: plot skipped)", ""]
        else:
            fig, ax = plt.subplots(figsize=(6, 4))
            for k in kinds:
                ax.plot(contexts, [res[k][c]["measured"] / 1024 for c in contexts], "o-", label=k)
            ax.axvline(window, ls=":", c="gray")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel("KiB held by one sequence")
            ax.set_title(f"KV memory per sequence (window {window})")
            ax.legend()
            fig.tight_layout()
            fig.savefig(png, dpi=110)
            lines += [f"![KV bytes per sequence]({png.split('/')[-1]})", ""]
    return res


def bench_memory_4k_32k(lines: list[str], contexts=(4096, 32768), window: int = 4096) -> dict:
    kinds = ("mha", "gqa", "mla", "window", "ssd")
    lines += [(f"## Memory per sequence at {', '.join(f'{c // 1024}K' for c in contexts)} "
               f"context (d_model 64, 2 layers, fp32, block 16, prefill chunk 512, window "
               f"{window}), measured from the pools"), "",
              "| kind | " + " | ".join(f"{c // 1024}K bytes | vs MHA" for c in contexts) + " |",
              "|---|" + "---|---|" * len(contexts)]
    res = {k: sequence_memory(k, contexts, window=window, prefill_chunk=512) for k in kinds}
    for k in kinds:
        cells = []
        for c in contexts:
            m = res[k][c]["measured"]
            cells.append(f"{m:,} | {m / res['mha'][c]['measured']:.3f}×")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines.append("")
    return res


def run(lines: list[str], quick: bool, png: str | None) -> dict:
    if quick:
        ratio = bench_engine_vs_plain([1, 4], 64, 32, lines)
        thr = bench_throughput([1, 4], lines, prompt_len=16, new=16)
        win = bench_window_memory([64, 256, 1024], lines, window=128, png=png)
        mem = bench_memory_4k_32k(lines, contexts=(1024, 2048), window=512)
    else:
        ratio = bench_engine_vs_plain([1, 16], 512, 256, lines)
        thr = bench_throughput([1, 4, 16], lines)
        win = bench_window_memory([128, 256, 512, 1024, 2048, 4096, 8192], lines, png=png)
        mem = bench_memory_4k_32k(lines)
    B = max(ratio)
    wall, cpu = ratio[B]
    lines += ["## Engine against the targets", "",
              (f"- engine decode step at batch {B}: {wall:.2f}× the plain batched loop "
               f"over contiguous caches in wall time ({cpu:.2f}× in the thread's CPU time), "
               f"both through the same numba decode kernel (paged_decode / kv_decode; "
               f"target ≤ 1.15×)."),
              (f"- windowed layers: bytes per sequence flat beyond W "
               f"({win['window'][max(win['window'])]['measured']:,} B at the longest context, "
               f"full attention {win['gqa'][max(win['gqa'])]['measured']:,} B)."), ""]
    return {"ratio": ratio, "throughput": thr, "window": win, "memory": mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--ratio-only", type=int, nargs="*", metavar="B",
                    help="only the engine-vs-plain decode section at these batch sizes "
                         "(default 16), printed, no results file: quick iterations")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.ratio_only is not None:
        bench_engine_vs_plain(args.ratio_only or [16], 512, 256, [])
        return
    lines = [header("Serving engine: every mixer kind through the model's forward",
                    matmul_peak_flops(), stream_bandwidth()),
             ("Timings with 1 torch thread on a 2-core machine shared with other jobs (see "
              "the load line); ratios within one run are more reliable than absolute "
              "times."), ""]
    name = "serving_engine" if not args.quick else "serving_engine_quick"
    run(lines, args.quick, png=f"benchmarks/results/{name}_window.png")
    print(f"wrote {write_results(name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
