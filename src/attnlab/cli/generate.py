"""`attnlab generate`: continuous-batching greedy generation through the model's own
forward, over paged pools and state slots, for every built-in mixer kind."""
from __future__ import annotations

import json
import random
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import app


def _parse_prompt(text: str) -> list[int]:
    try:
        toks = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise typer.BadParameter(f"--prompt ({text!r}) must be comma-separated token ids, "
                                 "e.g. '1,2,3'") from exc
    if not toks:
        raise typer.BadParameter(f"--prompt ({text!r}) holds no token ids")
    return toks


def _run(eng, requests, show_progress: bool):
    """Step the engine to the end, with a progress bar of generated tokens."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    ids = [eng.add_request(r) for r in requests]
    total = sum(r.max_new_tokens for r in requests)
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), disable=not show_progress,
                  transient=True) as bar:
        task = bar.add_task("gen", total=total, info="")
        while not eng.done:
            eng.step()
            st = eng.stats
            bar.update(task, completed=st.generated,
                       info=f"batch {st.batch_sizes[-1] if st.batch_sizes else 0}, "
                            f"preemptions {st.preemptions}")
    return [eng.results[i] for i in ids]


@app.command()
def generate(
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", help="A prompt as comma-separated token ids; repeat for several "
                               "requests.")] = None,
    random_requests: int = typer.Option(0, "--random", min=0,
                                        help="Add this many random prompts (lengths 1..64)."),
    model_kind: str = typer.Option("gqa", "--model", "-m",
                                   help="Built-in model: mha, gqa, mqa, window, mla, linear, "
                                        "ssd, rwkv, hybrid-window, hybrid-ssd."),
    window: int = typer.Option(16, "--window", min=1,
                               help="Sliding window (keys, self included) of windowed layers."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", "-n", min=1),
    num_blocks: int = typer.Option(256, "--num-blocks", min=1, help="KV pool size in blocks."),
    block_size: int = typer.Option(16, "--block-size", min=1, help="Tokens per block."),
    max_batch_tokens: int = typer.Option(256, "--max-batch-tokens", min=1),
    preemption: str = typer.Option("swap", "--preemption", help="swap or recompute."),
    eos: int | None = typer.Option(None, "--eos", help="Token id that ends a request."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tiny model and random prompts."),
    check: bool = typer.Option(False, "--check",
                               help="Also generate each request alone and compare."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Serve requests with the continuous-batching engine on a seeded tiny LM of any
    built-in mixer kind (greedy); prints throughput, batch occupancy, preemptions and
    KV memory in use."""
    import time

    import torch

    from ..serving.engine import Engine, EngineConfig, Request, generate_one
    from ..serving.zoo import MODEL_KINDS, serving_model

    if model_kind not in MODEL_KINDS:
        raise typer.BadParameter(f"--model ({model_kind!r}) must be one of {list(MODEL_KINDS)}")
    prompts = [_parse_prompt(p) for p in prompt or []]
    rng = random.Random(seed)
    prompts += [[rng.randrange(101) for _ in range(rng.randint(1, 64))]
                for _ in range(random_requests)]
    if not prompts:
        raise typer.BadParameter("give at least one --prompt or --random N")
    try:
        cfg = EngineConfig(num_blocks=num_blocks, block_size=block_size,
                           max_batch_tokens=max_batch_tokens, preemption=preemption)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    torch.set_num_threads(1)
    model = serving_model(model_kind, window=window, seed=seed,
                          max_seq_len=max(len(p) for p in prompts) + max_new_tokens)
    eng = Engine(model, cfg)
    t0 = time.perf_counter()
    try:
        results = _run(eng, [Request(p, max_new_tokens, eos_id=eos) for p in prompts],
                       show_progress=not as_json)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    seconds = time.perf_counter() - t0
    same = None
    if check:
        same = [r.tokens == generate_one(model, r.prompt, max_new_tokens, eos_id=eos)
                for r in results]
    st = eng.stats
    summary = {"model": model_kind, "steps": st.steps, "preemptions": st.preemptions,
               "swapped_bytes": st.swapped_bytes, "recomputed_tokens": st.recomputed_tokens,
               "peak_blocks": st.peak_blocks, "prefix_hit_tokens": st.prefix_hit_tokens,
               "max_batch": max(st.batch_sizes, default=0),
               "mean_batch": round(sum(st.batch_sizes) / max(1, len(st.batch_sizes)), 2),
               "batch_occupancy": round(sum(st.batch_sizes) / max(1, len(st.batch_sizes))
                                        / cfg.max_running, 3),
               "generated_tokens": st.generated,
               "tokens_per_s": round(st.generated / seconds, 1) if seconds > 0 else None,
               "kv_peak_in_use_bytes": st.peak_used_nbytes,
               "kv_pool_bytes": eng.cache.nbytes}
    if as_json:
        print(json.dumps({"requests": [
            {"id": r.request_id, "prompt_len": len(r.prompt), "tokens": r.tokens,
             "finish_reason": r.finish_reason, "preemptions": r.preemptions,
             **({"same_as_alone": same[i]} if same is not None else {})}
            for i, r in enumerate(results)], "stats": summary}))
        return
    t = Table(title=f"attnlab generate — {model_kind}, {len(results)} requests, block size "
                    f"{block_size}, {num_blocks} blocks, preemption {preemption}")
    for col in ("id", "prompt len", "generated", "finish", "preempted") + \
            (("same as alone",) if same is not None else ()):
        t.add_column(col)
    for i, r in enumerate(results):
        shown = ",".join(map(str, r.tokens[:12])) + ("…" if len(r.tokens) > 12 else "")
        row = [str(r.request_id), str(len(r.prompt)), shown, r.finish_reason, str(r.preemptions)]
        if same is not None:
            row.append("yes" if same[i] else "NO")
        t.add_row(*row)
    console = Console()
    console.print(t)
    console.print(", ".join(f"{k} {v}" for k, v in summary.items()))
    if same is not None and not all(same):
        raise typer.Exit(1)
