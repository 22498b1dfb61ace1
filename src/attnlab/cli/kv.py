"""`attnlab kv`: KV-cache memory of a real model at a context, batch and cache dtype."""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from . import app


def _fail(message: str) -> None:
    raise typer.BadParameter(message)


@app.command()
def kv(
    model: str | None = typer.Argument(None, help="Model name or alias (see --list)."),
    context: int | None = typer.Option(None, "--context", "-c", min=1,
                                          help="Tokens per sequence (default: model's max)."),
    batch: int = typer.Option(1, "--batch", "-b", min=1, help="Sequences in the batch."),
    dtype: str = typer.Option("fp16", "--dtype", "-d", help="Cache dtype: fp16, bf16, fp32, int8."),
    compare: bool = typer.Option(False, "--compare", help="Also show MHA / GQA-g / MQA / MLA."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
    encoder_length: int | None = typer.Option(
        None, "--encoder-length", min=1,
        help="Encoder tokens for cross-attention (encoder-decoder models; default: context)."),
    list_models: bool = typer.Option(False, "--list", help="List the known models."),
) -> None:
    """KV-cache bytes per token, per sequence and per batch (formula == real cache nbytes)."""
    from ..analysis.configs import get_config, list_configs
    from ..analysis.memory import compare_variants, format_bytes, kv_memory

    console = Console()
    if list_models:
        _print_list(console, list_configs(), as_json)
        return
    if model is None:
        _fail("MODEL is required (or pass --list to see the known models)")
    try:
        cfg = get_config(model)
        ctx = cfg.max_context if context is None else context
        mem = kv_memory(cfg, ctx, batch, dtype, encoder_length)
        rows = compare_variants(cfg, ctx, batch, dtype, encoder_length) if compare else []
    except (ValueError, TypeError) as exc:
        _fail(str(exc))

    if as_json:
        out = mem.to_dict()
        out.update(source=cfg.source, notes=cfg.notes, max_context=cfg.max_context)
        if compare:
            out["variants"] = [dict(m.to_dict(), released=rel, ratio_to_released=(
                m.bytes_total / mem.bytes_total)) for _, rel, m in rows]
        typer.echo(json.dumps(out))
        return

    table = Table(title=f"KV cache — {cfg.name} ({cfg.label}), context {ctx:,}, batch {batch}, "
                        f"{mem.dtype}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("cached elements / token / layer", f"{mem.cached_elements_per_token_per_layer:,}")
    table.add_row("bytes / token (all layers)",
                  f"{mem.bytes_per_token:,} ({format_bytes(mem.bytes_per_token)})")
    if any(t < ctx for t in mem.tokens_per_layer):
        capped = sum(t < ctx for t in mem.tokens_per_layer)
        table.add_row("window-capped layers", f"{capped} of {cfg.n_layers} hold "
                      f"{min(mem.tokens_per_layer):,} tokens")
    if cfg.is_encoder_decoder:
        table.add_row("cross-attention bytes / encoder token",
                      f"{mem.cross_bytes_per_encoder_token:,}")
        table.add_row("encoder length", f"{mem.encoder_length:,}")
    table.add_row("bytes / sequence",
                  f"{mem.bytes_per_sequence:,} ({format_bytes(mem.bytes_per_sequence)})")
    table.add_row(f"bytes for batch {batch}",
                  f"{mem.bytes_total:,} ({format_bytes(mem.bytes_total)})")
    console.print(table)
    if compare:
        ct = Table(title="same model, other KV sharing")
        for col in ("variant", "elem/tok/layer", "bytes/token", "per seq",
                    f"batch {batch}", "× released"):
            ct.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
        for label, rel, m in rows:
            ct.add_row(label + (" *" if rel else ""),
                       f"{m.cached_elements_per_token_per_layer:,}",
                       f"{m.bytes_per_token:,}", format_bytes(m.bytes_per_sequence),
                       format_bytes(m.bytes_total), f"{m.bytes_total / mem.bytes_total:.3g}")
        console.print(ct)
        console.print("* as released")
    if mem.exceeds_max_context:
        console.print(f"[yellow]note: context exceeds {cfg.name}'s max context "
                      f"({cfg.max_context:,})[/yellow]")
    if cfg.notes:
        console.print(f"note: {cfg.notes}")
    console.print(f"source: {cfg.source}")


def _print_list(console: Console, configs, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"models": [
            {"name": c.name, "aliases": list(c.aliases), "kind": c.kind, "n_layers": c.n_layers,
             "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim,
             "max_context": c.max_context, "window": c.window, "source": c.source}
            for c in configs]}))
        return
    table = Table(title="known models")
    for col in ("model", "kind", "layers", "Hq", "Hkv", "d_head", "context", "window"):
        table.add_column(col, justify="left" if col in ("model", "kind") else "right",
                         no_wrap=col == "model")
    for c in configs:
        hkv = "latent" if c.mla is not None else str(c.n_kv_heads)
        win = "–" if c.window is None else (f"{c.window} alt"
                                            if c.window_pattern == "alternate" else str(c.window))
        layers = f"{c.n_layers}+{c.encoder_layers}e" if c.is_encoder_decoder else str(c.n_layers)
        table.add_row(c.name, c.label, layers, str(c.n_heads), hkv, str(c.head_dim),
                      str(c.max_context), win)
    console.print(table)
    console.print("Names are case-insensitive; aliases: attnlab kv --list --json. "
                  "'alt': window on even layers (layer 0 local); 'e': encoder layers.")
