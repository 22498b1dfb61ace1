"""The grill's study report as Markdown, with the evidence's PNG plots copied beside it.

The HTML report (`report_html`) shows the same content in the same order; both read results
through the helpers here so the two stay in step. Per question: the title and status, the
short interview answer (first, always), the depth, the formulas as plain text, the evidence
(key figure, measurements with floats rounded to meaningful digits, measured checks marked
PASS/FAIL, cited facts shown as citations, never as PASS, the time the evidence took, the
plots it wrote), any error, and last the seed note.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from .registry import Check
from .runner import Result, fmt_value, machine_line
from .titles import SECTIONS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STATUSES = ("pass", "fail", "pending", "not run")
STATUS_TEXT = {
    "pass": "pass",
    "fail": "FAIL",
    "pending": "pending",
    "not run": "evidence not run",
}


def counts(results: list[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def evidence_counts(results: list[Result]) -> str:
    """'312 measured checks (14 timing), 9 citations' over the results that ran."""
    evs = [r.evidence for r in results if r.evidence is not None]
    checks = sum(len(e.checks) for e in evs)
    timing = sum(c.timing for e in evs for c in e.checks)
    cites = sum(len(e.citations) for e in evs)
    return f"{checks} measured checks ({timing} timing), {cites} citations"


def summary_line(results: list[Result]) -> str:
    c = counts(results)
    parts = [f"{c[s]} {s}" for s in STATUSES if c[s] or s != "not run"]
    total = sum(r.seconds for r in results)
    return (f"{len(results)} questions: " + ", ".join(parts)
            + f"; {evidence_counts(results)} ({total:.1f} s of evidence)")


def generated_line() -> str:
    return datetime.now(UTC).strftime("Generated %Y-%m-%d %H:%M UTC")


def plots_of(r: Result) -> list[tuple[Path, str | None]]:
    """Each plot path with None if it is a readable PNG, else the reason it cannot be shown."""
    out: list[tuple[Path, str | None]] = []
    for p in (r.evidence.plots if r.evidence else []):
        path = Path(p)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as exc:
            out.append((path, f"cannot read plot: {exc.strerror or exc}"))
            continue
        out.append((path, None if head == PNG_SIGNATURE else "not a PNG file"))
    return out


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def check_mark(c: Check) -> str:
    """PASS / FAIL, tagged when the verdict rests on wall-clock timings."""
    return ("PASS" if c.passed else "FAIL") + (" (timing)" if c.timing else "")


def _md_cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: list[Result],
                    image_link: Callable[[Result, int, Path], str] | None = None) -> str:
    """The report as Markdown. `image_link(result, index, path)` gives each plot's link
    (default: the plot's own path)."""
    lines = ["# attnlab grill — study report", "", f"Machine: {machine_line()}", "",
             generated_line() + ". " + summary_line(results) + ".", "",
             "| Q | question | status |", "|---|---|---|"]
    lines += [f"| {r.question.id} | {_md_cell(r.question.title)} | "
              f"{STATUS_TEXT.get(r.status, r.status)} |" for r in results]
    lines.append("")
    current = None
    for r in results:
        q = r.question
        if q.section != current:
            current = q.section
            lines += [f"## {current}. {SECTIONS[current][0]}", ""]
        lines += [f"### Q{q.id}. {q.title} — **{STATUS_TEXT.get(r.status, r.status)}**", ""]
        if not q.answered:
            lines += ["_Pending: no answer written yet, so nothing was measured._", ""]
            continue
        if q.short:
            lines += [f"**Short answer.** {q.short.strip()}", ""]
        for p in paragraphs(q.answer):
            lines += [p, ""]
        if q.formulas:
            lines += ["Formulas:", "", "```text"] + list(q.formulas) + ["```", ""]
        ev = r.evidence
        if ev is not None:
            lines += [f"**Evidence** ({r.seconds:.2f} s): {ev.key_figure}", ""]
            if ev.measurements:
                lines += ["| measurement | value |", "|---|---|"]
                lines += [f"| {_md_cell(k)} | {_md_cell(fmt_value(v))} |"
                          for k, v in ev.measurements.items()]
                lines.append("")
            for c in ev.checks:
                lines.append(f"- [{check_mark(c)}] {c.name}" + (f" — {c.detail}" if c.detail
                                                                 else ""))
            if ev.checks:
                lines.append("")
            for c in ev.citations:
                lines.append(f"- [cited] {c.claim} — {c.source}")
            if ev.citations:
                lines.append("")
            for i, (path, problem) in enumerate(plots_of(r)):
                if problem:
                    lines += [f"_Plot {path.name}: {problem}._", ""]
                else:
                    link = image_link(r, i, path) if image_link else str(path)
                    lines += [f"![Q{q.id} plot: {path.stem}]({link})", ""]
        elif r.status == "not run":
            lines += ["_Evidence not run for this report._", ""]
        if r.error:
            lines += ["```text", r.error.strip(), "```", ""]
        if q.seed_note:
            lines += [f"> **Seed note.** {q.seed_note}", ""]
    return "\n".join(lines)


def plot_filename(r: Result, index: int, path: Path) -> str:
    """A collision-free name for a copied plot: q07_0_roofline.png."""
    return f"q{r.question.id:02d}_{index}_{path.name}"


def write_markdown(results: list[Result], path: str | Path) -> Path:
    """Write the Markdown report; plots are copied into `<stem>_files/` beside it.

    Returns the folder of plots (created only when there are plots)."""
    path = Path(path)
    files = path.with_name(f"{path.stem}_files")

    def link(r: Result, i: int, src: Path) -> str:
        files.mkdir(parents=True, exist_ok=True)
        dest = files / plot_filename(r, i, src)
        if src.resolve() != dest.resolve():
            shutil.copyfile(src, dest)
        return quote(f"{files.name}/{dest.name}")

    text = render_markdown(results, link)
    path.write_text(text + "\n", encoding="utf-8")
    return files
