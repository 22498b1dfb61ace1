"""The continuous-batching engine through the model's own forward: speed against a plain
batched decode loop, throughput per mixer kind, and KV memory per sequence.

1. Batch-B decode: the engine (`serving.Engine`, paged pool read in place by
   `ops.paged.paged_attention`) against the same model decoding the same prompts in one
   plain loop over contiguous caches (`model.new_cache`, `attnlab.attention`).
2. Throughput: generated tokens/s vs batch size for every built-in mixer kind
   (`serving.zoo`), prompt 64, 64 new tokens.
3. KV bytes per sequence vs context, measured from the pools (`serving.measure`), with a
   plot: windowed layers stay flat beyond W; full attention grows linearly.
4. Memory per sequence at 4K and 32K context for MHA, GQA, MLA, window and SSD.

Run alone: `python -m benchmarks.serving_engine [--quick]` (writes
benchmarks/results/serving_engine.md); `python -m benchmarks.serving` includes it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnlab.ops.softmax.dispatch import choose_backend
from attnlab.serving.engine import Engine, EngineConfig, Request
from attnlab.serving.measure import sequence_memory
from attnlab.serving.zoo import MODEL_KINDS, serving_model

from .common import header, matmul_peak_flops, stream_bandwidth, write_results


@torch.no_grad()
def _plain_loop(model, prompt: torch.Tensor, new: int) -> tuple[float, list[float]]:
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + new)
    t0 = time.perf_counter()
    logits = model(prompt, cache)[:, -1]
    steps = []
    for _ in range(new - 1):
        tok = logits.argmax(-1, keepdim=True)  # (B, 1)
        s = time.perf_counter()
        logits = model(tok, cache)[:, -1]
        steps.append(time.perf_counter() - s)
    return time.perf_counter() - t0, steps


def _engine(model, prompts: list[list[int]], new: int, block_size: int = 16,
            chunk: int = 512) -> tuple[float, list[float], Engine]:
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
    t0 = time.perf_counter()
    steps, fwd = [], []
    while not eng.done:
        s, f0 = time.perf_counter(), forward_s[0]
        eng.step()
        if eng.stats.batch_sizes and eng.stats.batch_sizes[-1] == len(prompts) and \
                eng.stats.tokens and all(s_.computed >= len(s_.req.prompt) for s_ in eng.running):
            steps.append(time.perf_counter() - s)
            fwd.append(forward_s[0] - f0)
    eng.decode_forward_s = fwd  # per decode step: the model's forward alone
    return time.perf_counter() - t0, steps, eng


def bench_engine_vs_plain(batches, prompt_len: int, new: int, lines: list[str]) -> dict:
    model = serving_model("gqa", d_model=64, max_seq_len=prompt_len + new)
    a = model.blocks[0].mixer
    q = torch.zeros(16, a.n_heads, 1, a.head_dim)
    kv0 = torch.zeros(16, a.n_kv_heads, prompt_len, a.head_dim)
    kv1 = torch.zeros(16, a.n_kv_heads, prompt_len + new, a.head_dim)
    pos0, pos1 = torch.arange(prompt_len), torch.arange(prompt_len + new)
    picks = sorted({choose_backend(q, kv0, kv0, a.mask, pos0[-1:], pos0),
                    choose_backend(q, kv1, kv1, a.mask, pos1[-1:], pos1)})
    lines += [(f"## Engine vs a plain batched decode loop (tiny GQA LM: 2 layers, d_model 64, "
               f"4 query / 2 KV heads, head_dim 16, fp32; prompt {prompt_len}, {new} new "
               "tokens, greedy)"), "",
              ("Same model, same prompts, same greedy tokens. Peer: one plain loop over "
               "contiguous caches (`model.new_cache`), attention through `attnlab.attention` "
               f"(auto dispatch picks {' / '.join(f'`{p}`' for p in picks)} for these decode "
               "shapes over the run). Engine: scheduler + per-step views + the paged pool read "
               "in place by `ops.paged.paged_attention` (block ranges; consecutive blocks read "
               "as views at batch 1, gathered chunk by chunk at batch > 1; torch's fused CPU "
               "flash kernel per range). Median decode step = steps where every sequence "
               "decodes; the third row is the model's forward inside the engine step (the rest "
               "of the step is scheduling and bookkeeping). At batch > 1 the paged path still "
               "gathers each sequence's blocks per step (the paged decode kernel that reads "
               "block tables directly is separate work)."), "",
              ("| batch | path | total s | median decode step ms | engine / plain (step) | "
               "tokens equal |"), "|---|---|---|---|---|---|"]
    out = {}
    for B in batches:
        prompt = torch.randint(0, 101, (B, prompt_len), generator=torch.Generator().manual_seed(B))
        tp, sp = _plain_loop(model, prompt, new)
        te, se, eng = _engine(model, prompt.tolist(), new)
        with torch.no_grad():  # the engine's tokens == greedy decoding of the same prompts
            from attnlab.models.generate import generate

            ref = generate(model, prompt, new)[:, prompt_len:].tolist()
        same = [eng.results[i].tokens for i in range(B)] == ref
        mp, me = statistics.median(sp), statistics.median(se)
        mf = statistics.median(eng.decode_forward_s)
        lines.append(f"| {B} | plain loop, contiguous caches (peer) | {tp:.2f} | {1e3 * mp:.3f} "
                     f"| 1.00× | — |")
        lines.append(f"| {B} | engine, paged pool | {te:.2f} | {1e3 * me:.3f} | {me / mp:.2f}× | "
                     f"{'yes' if same else 'NO'} |")
        lines.append(f"| {B} | of which the model's forward on the paged views | — | "
                     f"{1e3 * mf:.3f} | {mf / mp:.2f}× | — |")
        print("\n".join(lines[-3:]), flush=True)
        out[B] = me / mp
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
            total, _, eng = _engine(model, prompts, new, chunk=prompt_len)
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
    lines += ["## Engine against the targets", "",
              (f"- engine decode step at batch {B}: {ratio[B]:.2f}× the plain batched loop "
               f"over contiguous caches (target ≤ 1.15×)."),
              (f"- windowed layers: bytes per sequence flat beyond W "
               f"({win['window'][max(win['window'])]['measured']:,} B at the longest context, "
               f"full attention {win['gqa'][max(win['gqa'])]['measured']:,} B)."), ""]
    return {"ratio": ratio, "throughput": thr, "window": win, "memory": mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)
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
