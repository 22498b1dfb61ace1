"""The grill's study report as one self-contained HTML file.

No network and no server: the CSS is inline, there is no script, plots are embedded as
base64 `data:image/png` URIs, and formulas are plain Unicode text in <pre> blocks, readable
without a math renderer. Content and order match `report.render_markdown`: the short
interview answer first, then depth, formulas, evidence (checks and citations), seed note.
"""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .report import (
    STATUS_TEXT,
    check_mark,
    generated_line,
    paragraphs,
    plots_of,
    summary_line,
)
from .runner import Result, fmt_value, machine_line
from .titles import SECTIONS

CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2127;
       max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #d6dbe1; margin-top: 2.5rem; }
h3 { margin-bottom: .3rem; }
.meta { color: #56606b; font-size: .9rem; }
.status { font-size: .8rem; padding: .1rem .45rem; border-radius: .6rem; margin-left: .4rem;
          vertical-align: middle; font-weight: 600; }
.pass { background: #dff3e3; color: #17672b; } .fail { background: #fbe0e0; color: #a1161a; }
.pending { background: #fff3cd; color: #7a5a00; } .not-run { background: #e8ebef; color: #444; }
pre { background: #f5f7f9; border: 1px solid #e2e6ea; padding: .6rem .8rem; overflow-x: auto;
      font: 14px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; white-space: pre-wrap; }
.seed { border-left: 4px solid #c9a227; background: #fffaf0; padding: .4rem .8rem; }
.key { font-weight: 600; }
.short { border-left: 4px solid #2f6fb3; background: #f0f6fc; padding: .4rem .8rem; }
ul.cites { padding-left: 1.2rem; } .cite { color: #56606b; font-style: italic; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
td, th { border: 1px solid #e2e6ea; padding: .2rem .5rem; text-align: left; vertical-align: top; }
ul.checks { list-style: none; padding-left: 0; } .ok { color: #17672b; } .bad { color: #a1161a; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e2e6ea; }
figcaption { color: #56606b; font-size: .85rem; }
nav ul { columns: 2; font-size: .9rem; } nav li { break-inside: avoid; }
section.q { border-top: 1px solid #eef0f2; padding-top: .3rem; }
"""


def _status_badge(status: str) -> str:
    cls = status.replace(" ", "-")
    return f'<span class="status {escape(cls)}">{escape(STATUS_TEXT.get(status, status))}</span>'


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _question_html(r: Result) -> list[str]:
    q = r.question
    out = [f'<section class="q" id="q{q.id}">',
           f"<h3>Q{q.id}. {escape(q.title)}{_status_badge(r.status)}</h3>"]
    if not q.answered:
        out += ["<p><em>Pending: no answer written yet, so nothing was measured.</em></p>",
                "</section>"]
        return out
    if q.short:
        out.append(f'<p class="short"><strong>Short answer.</strong> {escape(q.short.strip())}</p>')
    out += [f"<p>{escape(p)}</p>" for p in paragraphs(q.answer)]
    if q.formulas:
        out.append('<p><strong>Formulas</strong></p><pre class="formulas">'
                   + "\n".join(escape(f) for f in q.formulas) + "</pre>")
    ev = r.evidence
    if ev is not None:
        out.append(f'<p><strong>Evidence</strong> ({r.seconds:.2f} s on this machine): '
                   f'<span class="key">{escape(ev.key_figure)}</span></p>')
        if ev.measurements:
            out.append("<table><tr><th>measurement</th><th>value</th></tr>")
            out += [f"<tr><td>{escape(str(k))}</td><td>{escape(fmt_value(v))}</td></tr>"
                    for k, v in ev.measurements.items()]
            out.append("</table>")
        if ev.checks:
            out.append('<ul class="checks">')
            for c in ev.checks:
                cls = "ok" if c.passed else "bad"
                detail = f" — {escape(c.detail)}" if c.detail else ""
                out.append(f'<li><span class="{cls}">{escape(check_mark(c))}</span> '
                           f"{escape(c.name)}{detail}</li>")
            out.append("</ul>")
        if ev.citations:
            out.append('<p><strong>Cited</strong> (from the sources, not measured here)</p>'
                       '<ul class="cites">')
            out += [f'<li>{escape(c.claim)} <span class="cite">— {escape(c.source)}</span></li>'
                    for c in ev.citations]
            out.append("</ul>")
        for path, problem in plots_of(r):
            if problem:
                out.append(f"<p><em>Plot {escape(path.name)}: {escape(problem)}.</em></p>")
                continue
            out.append(f'<figure><img src="{png_data_uri(path)}" '
                       f'alt="Q{q.id} plot: {escape(path.stem)}">'
                       f"<figcaption>Q{q.id}: {escape(path.name)}</figcaption></figure>")
    elif r.status == "not run":
        out.append("<p><em>Evidence not run for this report.</em></p>")
    if r.error:
        out.append(f"<pre>{escape(r.error.strip())}</pre>")
    if q.seed_note:
        out.append(f'<p class="seed"><strong>Seed note.</strong> {escape(q.seed_note)}</p>')
    out.append("</section>")
    return out


def to_html(results: list[Result]) -> str:
    """The whole report as one HTML document (UTF-8, no external resources)."""
    body = ["<h1>attnlab grill — study report</h1>",
            (f'<p class="meta">Machine: {escape(machine_line())}<br>'
             f"{escape(generated_line())}. {escape(summary_line(results))}.</p>"),
            "<nav><ul>"]
    body += [f'<li><a href="#q{r.question.id}">Q{r.question.id}. '
             f"{escape(r.question.title)}</a> {_status_badge(r.status)}</li>" for r in results]
    body.append("</ul></nav>")
    current = None
    for r in results:
        if r.question.section != current:
            current = r.question.section
            body.append(f'<h2 id="section-{current}">{current}. '
                        f"{escape(SECTIONS[current][0])}</h2>")
        body += _question_html(r)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>attnlab grill — study report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(results: list[Result], path: str | Path) -> None:
    Path(path).write_text(to_html(results), encoding="utf-8")
