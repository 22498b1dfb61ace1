"""`attnlab kv`: KV-cache memory of a real model at a context, batch and cache dtype."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import app


def _fail(message: str) -> None:
    raise typer.BadParameter(message)


@app.command()
def kv(
    model: str | None = typer.Argument(
        None, help="Model name or alias (see --list), or a Hugging Face config.json (or its "
                   "folder)."),
    context: int | None = typer.Option(None, "--context", "-c", min=1,
                                          help="Tokens per sequence (default: model's max)."),
    batch: int = typer.Option(1, "--batch", "-b", min=1, help="Sequences in the batch."),
    dtype: str | None = typer.Option(
        None, "--dtype", "-d",
        help="Cache dtype: fp16, bf16, fp32, int8 (default: a config.json's dtype, else fp16)."),
    hf_cache: bool | None = typer.Option(
        None, "--hf-cache/--model-cache",
        help="Count what transformers 5.x's DynamicCache holds after prefill (W−1 tokens per "
             "window layer) or the model's own cache (W); default: --hf-cache for a "
             "config.json, --model-cache for a name."),
    compare: bool = typer.Option(False, "--compare", help="Also show MHA / GQA-g / MQA / MLA."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
    encoder_length: int | None = typer.Option(
        None, "--encoder-length", min=1,
        help="Encoder tokens for cross-attention (encoder-decoder models; default: context)."),
    list_models: bool = typer.Option(False, "--list", help="List the known models."),
) -> None:
    """KV-cache bytes per token, per sequence and per batch (formula == real cache nbytes)."""
    from ..analysis.configs import list_configs
    from ..analysis.memory import EXPANDED_MLA, compare_variants, format_bytes, kv_memory

    console = Console()
    if list_models:
        _print_list(console, list_configs(), as_json)
        return
    if model is None:
        _fail("MODEL is required (or pass --list to see the known models)")
    try:
        cfg, counted, other, dtype, notes = _resolve(model, context, dtype, hf_cache)
        ctx = cfg.max_context if context is None else context
        mem = kv_memory(cfg, ctx, batch, dtype, encoder_length)
        alt = None if other is None else kv_memory(other, ctx, batch, dtype, encoder_length)
        rows = compare_variants(cfg, ctx, batch, dtype, encoder_length) if compare else []
    except (ValueError, TypeError) as exc:
        _fail(str(exc))

    if as_json:
        out = mem.to_dict()
        out.update(source=cfg.source, notes=cfg.notes, max_context=cfg.max_context,
                   counted=counted, config_notes=list(notes))
        if alt is not None:
            out["other_count"] = {"counted": _OTHER[counted], "bytes_total": alt.bytes_total,
                                  "bytes_per_sequence": alt.bytes_per_sequence}
        if compare:
            out["variants"] = [dict(m.to_dict(), label=label, released=rel, ratio_to_released=(
                m.bytes_total / mem.bytes_total)) for label, rel, m in rows]
        typer.echo(json.dumps(out))
        return

    table = Table(title=f"KV cache — {cfg.name} ({cfg.label}), context {ctx:,}, batch {batch}, "
                        f"{mem.dtype}" + (f", {_COUNTED[counted]}" if counted == "hf" else ""))
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
        if cfg.mla is not None:
            console.print(f"{EXPANDED_MLA}: the per-head keys (d_h + d_R) and values a naive MLA "
                          "decode caches; transformers 5.x's DynamicCache holds the latent and "
                          "the RoPE key instead, the MLA row (measured with 5.24)")
    if alt is not None and alt.bytes_total != mem.bytes_total:
        console.print(f"{_COUNTED[_OTHER[counted]]}: {alt.bytes_total:,} B for batch {batch} "
                      f"({format_bytes(alt.bytes_total)})")
    for n in notes:
        console.print(f"config: {n}")
    if mem.exceeds_max_context:
        console.print(f"[yellow]note: context exceeds {cfg.name}'s max context "
                      f"({cfg.max_context:,})[/yellow]")
    if cfg.notes:
        console.print(f"note: {cfg.notes}")
    console.print(f"source: {cfg.source}")


_COUNTED = {"model": "the model's own cache", "hf": "as transformers' DynamicCache holds it"}
_OTHER = {"model": "hf", "hf": "model"}


def _resolve(model: str, context: int | None, dtype: str | None, hf_cache: bool | None):
    """(config counted, "hf"/"model", the other count's config or None, dtype, notes) for a
    built-in name or a config.json path."""
    from ..analysis.configs import get_config
    from ..analysis.hf_config import hf_cached, read_hf_config

    if model.endswith(".json") or (Path(model) / "config.json").is_file():
        r = read_hf_config(model, context)
        hf = True if hf_cache is None else hf_cache
        cfg, other = (r.cached, r.arch) if hf else (r.arch, r.cached)
        return cfg, "hf" if hf else "model", other, dtype or r.dtype or "fp16", r.notes
    arch = get_config(model)
    if not hf_cache:
        return arch, "model", None, dtype or "fp16", ()
    return hf_cached(arch), "hf", arch, dtype or "fp16", ()


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
        win = "–" if c.window is None else {"alternate": f"{c.window} alt",
                                            "layers": f"{c.window} on {len(c.local_layers)}"}.get(
            c.window_pattern, str(c.window))
        layers = f"{c.n_layers}+{c.encoder_layers}e" if c.is_encoder_decoder else str(c.n_layers)
        table.add_row(c.name, c.label, layers, str(c.n_heads), hkv, str(c.head_dim),
                      str(c.max_context), win)
    console.print(table)
    console.print("Names are case-insensitive; aliases: attnlab kv --list --json. "
                  "'alt': window on even layers (layer 0 local); 'e': encoder layers.")
