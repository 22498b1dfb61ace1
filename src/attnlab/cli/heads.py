"""`attnlab heads`: head detectors on a real pretrained model (all-MiniLM-L6-v2)."""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from . import app

_SHORT = {"previous": "prev-token", "next": "next-token", "cls": "[CLS] sink",
          "sep": "[SEP] sink", "duplicate": "dup-token"}


@app.command()
def heads(
    sentence: list[str] | None = typer.Option(
        None, "--sentence", "-s", help="A sentence to analyse (repeatable; default: built-in)."),
    top: int | None = typer.Option(None, "--top", min=1,
                                   help="Only the heads among the K strongest per detector."),
    plot: str | None = typer.Option(None, "--plot",
                                    help="Write a layer × head heat map PNG here (viz extra)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Score every head of all-MiniLM-L6-v2: previous/next-token, [CLS]/[SEP] sink, duplicate."""
    from ..analysis.pretrained import DETECTORS, SENTENCES, minilm_head_report, plot_head_table

    try:
        rep = minilm_head_report(sentence or SENTENCES)
    except (ImportError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if plot and plot_head_table(rep.table, plot) is None:
        raise typer.BadParameter("--plot needs matplotlib (pip install attnlab[viz])")
    if as_json:
        out = rep.to_dict()
        out["plot"] = plot
        typer.echo(json.dumps(out))
        return
    L, H = rep.table["previous"].shape
    best = rep.top(1)
    shown = {(ly, h) for v in rep.top(top).values() for ly, h, _ in v} if top else None
    t = Table(title=f"all-MiniLM-L6-v2 on {len(rep.sentences)} sentences: mean attention "
                    "mass on each target (* strongest head)")
    t.add_column("layer.head", no_wrap=True)
    for key in DETECTORS:
        t.add_column(_SHORT[key], justify="right", no_wrap=True)
    for ly in range(L):
        for h in range(H):
            if shown is not None and (ly, h) not in shown:
                continue
            cells = []
            for key in DETECTORS:
                v = f"{float(rep.table[key][ly, h]):.2f}"
                cells.append(f"{v}*" if best[key] and best[key][0][:2] == (ly, h) else f"{v} ")
            t.add_row(f"{ly}.{h}", *cells)
    c = Console()
    c.print(t)
    for key, name in DETECTORS.items():
        if not best[key]:
            c.print(f"{name}: no row to score (no sentence repeats a token)")
            continue
        ly, h, s = best[key][0]
        c.print(f"strongest {name}: layer {ly} head {h} ({s:.3f})")
    cls_heads = [(ly, h) for ly in range(1, 5) for h in range(H)
                 if float(rep.table["cls"][ly, h]) > 0.5]
    c.print(f"heads in layers 1–4 with most of their mass on [CLS] (> 0.5): {len(cls_heads)}")
    if plot:
        c.print(f"heat map: {plot}")
