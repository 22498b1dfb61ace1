"""`attnlab grill`: the 50 questions, each answered with evidence measured here."""
from __future__ import annotations

import tempfile

import typer
from rich.console import Console
from rich.table import Table

from . import app
from ._checks import check_output_paths


@app.command()
def grill(
    section: str | None = typer.Option(None, "--section", "-s", help="Only section A..H."),
    question: list[int] | None = typer.Option(None, "--question", "-q", help="Only these ids."),
    json_path: str | None = typer.Option(None, "--json", help="Write results as JSON."),
    markdown_path: str | None = typer.Option(
        None, "--markdown", help="Write the study report as Markdown, plots copied beside it."),
    html_path: str | None = typer.Option(
        None, "--html", help="Write the study report as one self-contained HTML file."),
    full: bool = typer.Option(False, "--full", help="Run the longer experiments."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print answers and checks."),
) -> None:
    """Answer the grill's questions with live evidence; exit 1 if any answered check fails.

    Output paths are checked before any evidence runs; each question's short interview
    answer leads the reports (and `--verbose`)."""
    from ..grill.registry import EvidenceContext
    from ..grill.runner import select

    console = Console()
    try:
        qs = select(section, question)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    check_output_paths(json=json_path, markdown=markdown_path, html=html_path)
    # Plots are only drawn when a report will show them; they live in a temporary folder
    # until the report embeds (HTML) or copies (Markdown) them.
    plot_tmp = tempfile.TemporaryDirectory(prefix="attnlab-plots-") if (
        html_path or markdown_path) else None
    try:
        _grill(console, qs, EvidenceContext(full=full, plot_dir=plot_tmp and plot_tmp.name),
               json_path, markdown_path, html_path, verbose)
    finally:
        if plot_tmp is not None:
            plot_tmp.cleanup()


def _grill(console: Console, qs, ctx, json_path: str | None, markdown_path: str | None,
           html_path: str | None, verbose: bool) -> None:
    from ..grill.report import evidence_counts, write_markdown
    from ..grill.report_html import write_html
    from ..grill.runner import machine_line, run, to_markdown, write_json

    with console.status("running evidence…") as status:
        results = run(qs, ctx, progress=lambda q: status.update(f"Q{q.id}: {q.title}"))

    table = Table(title=f"attnlab grill — {machine_line()}", show_lines=False)
    table.add_column("id", justify="right")
    table.add_column("sec")
    table.add_column("question")
    table.add_column("verdict")
    table.add_column("key figure", overflow="fold")
    colors = {"pass": "green", "fail": "bold red", "pending": "yellow"}
    for r in results:
        fig = r.evidence.key_figure if r.evidence else ""
        if r.status == "fail":
            fig = (r.error.splitlines()[0] if r.error else "failed: " + ", ".join(r.failed_checks))
        table.add_row(str(r.question.id), r.question.section, r.question.title,
                      f"[{colors[r.status]}]{r.status}[/]", fig)
    console.print(table)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "pending")}
    total_s = sum(r.seconds for r in results)
    console.print(f"{counts['pass']} pass, {counts['fail']} fail, {counts['pending']} pending; "
                  f"{evidence_counts(results)} ({total_s:.1f} s of evidence)")
    if verbose:
        console.print(to_markdown(results), markup=False, highlight=False)
    if json_path:
        write_json(results, json_path)
    if markdown_path:
        write_markdown(results, markdown_path)
        console.print(f"Markdown report: {markdown_path}")
    if html_path:
        write_html(results, html_path)
        console.print(f"HTML report: {html_path}")
    if counts["fail"]:
        raise typer.Exit(1)
