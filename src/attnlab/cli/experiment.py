"""`attnlab experiment NAME [--quick|--full] [--out DIR] [--seed N]`."""
from __future__ import annotations

import json

import typer

from . import app


@app.command()
def experiment(
    name: str = typer.Argument(..., help="induction | kv-sharing | sinks | redundancy"),
    quick: bool = typer.Option(True, "--quick/--full", help="seconds-long sizes or the full "
                               "run (≤ 15 min on 2 cores, 3 seeds)"),
    out: str = typer.Option("experiments/results", "--out", help="folder for JSON + PNG"),
    seed: int = typer.Option(0, "--seed", help="first seed (full runs use seed..seed+2)"),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest for these "
                                "small models on a shared machine)"),
) -> None:
    """Run a head-analysis training experiment and write its results."""
    import torch

    from ..experiments import get

    try:
        mod = get(name)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="NAME") from None
    if threads < 1:
        raise typer.BadParameter(f"threads ({threads}) must be >= 1", param_hint="--threads")
    torch.set_num_threads(threads)
    res = mod.run(quick=quick, out_dir=out, seed=seed)
    summary = {k: res[k] for k in ("experiment", "mode", "seconds") if k in res}
    for k in ("summary", "markdown", "uniform_key0_mass"):
        if k in res:
            summary[k] = res[k]
    if "variants" in res:
        summary["mean_key0_mass"] = {v: d["mean_key0_mass"] for v, d in res["variants"].items()}
        summary["streaming"] = res.get("streaming")
    typer.echo(res.get("markdown") or json.dumps(summary, indent=1, default=float))
    typer.echo(f"wrote {out}")
