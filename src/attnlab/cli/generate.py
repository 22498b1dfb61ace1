"""`attnlab generate`: continuous-batching greedy generation over a paged KV cache."""
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


@app.command()
def generate(
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", help="A prompt as comma-separated token ids; repeat for several "
                               "requests.")] = None,
    random_requests: int = typer.Option(0, "--random", min=0,
                                        help="Add this many random prompts (lengths 1..64)."),
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
    """Serve requests with the continuous-batching engine on a seeded tiny LM (greedy)."""
    import torch

    from ..grill.answers._tiny import tiny_lm
    from ..serving.engine import Engine, EngineConfig, Request, generate_one

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
    model = tiny_lm(seed=seed, max_seq_len=max(len(p) for p in prompts) + max_new_tokens)
    eng = Engine(model, cfg)
    try:
        results = eng.run([Request(p, max_new_tokens, eos_id=eos) for p in prompts])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    same = None
    if check:
        same = [r.tokens == generate_one(model, r.prompt, max_new_tokens, eos_id=eos)
                for r in results]
    st = eng.stats
    summary = {"steps": st.steps, "preemptions": st.preemptions,
               "swapped_bytes": st.swapped_bytes, "recomputed_tokens": st.recomputed_tokens,
               "peak_blocks": st.peak_blocks, "prefix_hit_tokens": st.prefix_hit_tokens,
               "max_batch": max(st.batch_sizes, default=0)}
    if as_json:
        print(json.dumps({"requests": [
            {"id": r.request_id, "prompt_len": len(r.prompt), "tokens": r.tokens,
             "finish_reason": r.finish_reason, "preemptions": r.preemptions,
             **({"same_as_alone": same[i]} if same is not None else {})}
            for i, r in enumerate(results)], "stats": summary}))
        return
    t = Table(title=f"attnlab generate — {len(results)} requests, block size {block_size}, "
                    f"{num_blocks} blocks, preemption {preemption}")
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
