"""`attnlab receptive-field` and `attnlab scaling`: the sparse family's analyses."""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from . import app
from ._checks import check_output_paths, fail


@app.command("receptive-field")
def receptive_field(
    layers: int = typer.Option(..., "--layers", "-L", min=1, help="Stacked windowed layers."),
    window: int = typer.Option(..., "--window", "-W", min=1,
                               help="Keys each query sees, itself included."),
    measure: bool = typer.Option(False, "--measure",
                                 help="Also measure it by autograd on a random stack "
                                      "(needs L·(W−1) small, e.g. < 2000)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Span of L stacked sliding windows: L·(W−1)+1 positions (optionally measured)."""
    from ..analysis.receptive_field import measured_receptive_field, theoretical_receptive_field
    from ..masks import sliding_window

    span = theoretical_receptive_field(layers, window)
    out = {"layers": layers, "window": window, "receptive_field": span,
           "naive_L_times_W": layers * window}
    if measure:
        if span > 2000:
            raise typer.BadParameter(f"--measure needs L·(W−1)+1 <= 2000, got {span}")
        out["measured"] = measured_receptive_field(sliding_window(window), layers, span + 4)
    if as_json:
        print(json.dumps(out))
        return
    c = Console()
    c.print(f"L = {layers}, W = {window}: receptive field L·(W−1)+1 = [bold]{span:,}[/] "
            f"positions (L·W = {layers * window:,} overcounts by {layers - 1})")
    if measure:
        c.print(f"measured by autograd on a random {layers}-layer stack: {out['measured']:,}")


@app.command()
def scaling(
    lo: int = typer.Option(1024, "--from", min=256, help="Smallest N (>= 256: BigBird blocks)."),
    hi: int = typer.Option(8192, "--to", min=256, help="Largest N (doubling from --from)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per point (fastest kept)."),
    plot: str | None = typer.Option(None, "--plot", help="Write a log-log PNG here (viz extra)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Time full, window, BigBird and LSH attention over N and fit log-log slopes."""
    from ..analysis.scaling import default_mechanisms, geometric, measure_scaling, plot_scaling

    if hi < lo:
        raise typer.BadParameter(f"--to ({hi}) must be >= --from ({lo})")
    ns = geometric(lo, hi)
    if len(ns) < 2:
        raise typer.BadParameter(
            f"--from {lo} --to {hi} gives one length (N doubles from --from); a slope fit needs "
            f"two points, so use --to {2 * lo} or more")
    if plot is not None:
        check_output_paths(plot=plot)
        try:
            import matplotlib  # noqa: F401 — checked before measuring, used by plot_scaling
        except ImportError:
            fail("--plot needs matplotlib (pip install attnlab[viz])")
    res = measure_scaling(default_mechanisms(), ns, repeats, estimator="min")
    if plot and plot_scaling(res, plot) is None:
        fail("--plot needs matplotlib (pip install attnlab[viz])")
    if as_json:
        print(json.dumps([{"name": r.name, "ns": r.ns, "seconds": r.seconds,
                           "slope": r.slope} for r in res]))
        return
    t = Table(title="time vs N (1 thread, fastest of runs)")
    t.add_column("mechanism")
    for n in res[0].ns:
        t.add_column(f"N={n}", justify="right")
    t.add_column("slope", justify="right")
    for r in res:
        t.add_row(r.name, *(f"{s * 1e3:.1f} ms" for s in r.seconds), f"{r.slope:.2f}")
    Console().print(t)
