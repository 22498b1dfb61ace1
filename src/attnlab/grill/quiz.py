"""`attnlab quiz`: self-graded practice on the grill's questions with Leitner repetition.

One question at a time: the user answers in their own words (or just thinks), presses enter,
sees our short interview answer first, then the depth, its formulas, the evidence measured
on this machine a moment ago and the seed note. A typed answer is checked against the
question's rubric (`feedback`): the key points it covered and missed are shown, with a
suggested grade the user accepts (enter) or overrides (y / n / s(kip)). Every grade is saved
at once (locked, merged and atomic, see `progress`), so quitting, a crash or a second quiz
on the same file loses nothing already graded.

Input comes from the terminal when stdin is a TTY; otherwise from stdin line by line, in the
order answer line, grade line, answer line, grade line, ... (end of input ends the session;
an empty grade line accepts the suggested grade where there is one).
Questions without a written answer yet ("pending") are left out unless asked for, because
there is nothing to reveal; the session header says how many were left out.
"""
from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from rich.box import SIMPLE_HEAD
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .feedback import Feedback, assess, show_feedback
from .progress import MAX_BOX, Progress
from .registry import EvidenceContext, Question
from .report import check_mark
from .runner import Result, fmt_value, run_one
from .titles import SECTIONS

# The seed's self-grading bands, with our own description of each.
TIERS: dict[int, tuple[int, int, str]] = {
    1: (1, 10, "modern attention variants: the basics every candidate should know"),
    2: (11, 25, "the level an LLM-architecture interview round checks"),
    3: (26, 50, "the depth frontier-lab interviewers push to"),
}
TARGET = 35  # the seed: aim to answer 35 of the 50 without notes
BAR = TARGET / 50  # the same 70% bar applied to each tier

GRADES = {"y": "y", "yes": "y", "n": "n", "no": "n", "s": "s", "skip": "s",
          "q": "q", "quit": "q"}


def id_ranges(ids: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> 'Q1–3, Q7, Q9–10'."""
    parts: list[tuple[int, int]] = []
    for i in sorted(ids):
        if parts and parts[-1][1] == i - 1:
            parts[-1] = (parts[-1][0], i)
        else:
            parts.append((i, i))
    return ", ".join(f"Q{a}" if a == b else f"Q{a}–{b}" for a, b in parts)


def tier_of(qid: int) -> int:
    for t, (lo, hi, _) in TIERS.items():
        if lo <= qid <= hi:
            return t
    raise ValueError(f"question id ({qid}) must be in 1..50")


@dataclass
class QuizOptions:
    section: str | None = None
    tier: int | None = None
    due: bool = False
    evidence: bool = True
    seed: int | None = None
    limit: int | None = None
    include_pending: bool = False

    def __post_init__(self) -> None:
        if self.section is not None:
            self.section = self.section.upper()
            if self.section not in SECTIONS:
                raise ValueError(f"section ({self.section!r}) must be one of "
                                 f"{', '.join(SECTIONS)}")
        if self.tier is not None and self.tier not in TIERS:
            raise ValueError(f"tier ({self.tier}) must be 1, 2 or 3")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit ({self.limit}) must be >= 1")


@dataclass
class Selection:
    questions: list[Question]
    pending_left_out: list[int] = field(default_factory=list)
    not_due: int = 0
    never_seen: int = 0


def select_questions(all_qs: list[Question], opts: QuizOptions,
                     progress: Progress | None = None) -> Selection:
    """Filter by section/tier/due, drop pending unless asked, shuffle (seeded), limit."""
    qs = [q for q in all_qs if opts.section is None or q.section == opts.section]
    if opts.tier is not None:
        lo, hi, _ = TIERS[opts.tier]
        qs = [q for q in qs if lo <= q.id <= hi]
    pending = [q.id for q in qs if not q.answered]
    if not opts.include_pending:
        qs = [q for q in qs if q.answered]
    sel = Selection(qs, pending if not opts.include_pending else [])
    rng = random.Random(opts.seed)
    if opts.due:
        if progress is None:
            raise ValueError("due=True needs the user's progress (got progress=None)")
        due = set(progress.due_ids([q.id for q in qs]))
        sel.never_seen = sum(1 for q in qs if q.id not in progress.cards
                             or not progress.cards[q.id].seen)
        sel.not_due = len(qs) - len(due) - sel.never_seen
        qs = [q for q in qs if q.id in due]
        rng.shuffle(qs)
        qs.sort(key=lambda q: progress.cards[q.id].box)  # stable: most often missed first
    else:
        rng.shuffle(qs)
    sel.questions = qs[: opts.limit] if opts.limit else qs
    return sel


class LineReader:
    """Reads one reply per prompt from the terminal, or one line per prompt from a pipe."""

    def __init__(self, console: Console, stream: TextIO | None = None,
                 interactive: bool | None = None) -> None:
        self.console = console
        self.stream = stream or sys.stdin
        self.interactive = self.stream.isatty() if interactive is None else interactive

    def ask(self, prompt: str) -> str | None:
        """The reply without its newline, or None at end of input."""
        if self.interactive:
            try:
                return self.console.input(prompt)
            except EOFError:
                return None
        line = self.stream.readline()
        if not line:
            return None
        line = line.rstrip("\r\n")
        self.console.print(f"{prompt}{escape(line)}", highlight=False)  # echo for a transcript
        return line


@dataclass
class SessionResult:
    grades: dict[int, str] = field(default_factory=dict)  # id -> "y" | "n" | "s"
    quit_early: bool = False
    feedback: dict[int, Feedback] = field(default_factory=dict)  # typed answers only
    overridden: list[int] = field(default_factory=list)  # ids graded against the suggestion

    def counts(self, ids: set[int] | None = None) -> tuple[int, int, int]:
        g = [v for k, v in self.grades.items() if ids is None or k in ids]
        return g.count("y"), g.count("n"), g.count("s")


def show_question(console: Console, q: Question, n: int, total: int) -> None:
    sec = SECTIONS[q.section][0]
    head = f"Question {n}/{total} · Q{q.id} · {q.section}. {sec} · tier {tier_of(q.id)}"
    console.print()
    console.print(Panel(f"[bold]{escape(q.title)}[/]\n\nExplain it as you would in an interview.",
                        title=head, title_align="left", expand=False))


def show_reveal(console: Console, q: Question, result: Result | None) -> None:
    if not q.answered:
        console.print("[yellow]Pending:[/] no answer has been written for this question yet.")
        return
    if q.short:
        console.print(Panel(escape(q.short.strip()), title="Short answer (say this first)",
                            title_align="left"))
    console.print(Panel(escape(q.answer), title="In depth" if q.short else "Our answer",
                        title_align="left"))
    if q.formulas:
        console.print("[bold]Formulas[/]")
        for f in q.formulas:
            console.print(f"  {escape(f)}", highlight=False)
    if result is not None:
        _show_evidence(console, result)
    if q.seed_note:
        console.print(f"[bold]Seed note:[/] {escape(q.seed_note)}")


def _show_evidence(console: Console, result: Result) -> None:
    colors = {"pass": "green", "fail": "bold red", "pending": "yellow"}
    status = f"[{colors.get(result.status, 'white')}]{result.status}[/]"
    if result.evidence is None:
        first = (result.error or "").strip().splitlines()[:1]
        console.print(f"[bold]Evidence[/] {status}: {escape(first[0] if first else '')}")
        return
    ev = result.evidence
    console.print(f"[bold]Evidence[/] ({status}, {result.seconds:.2f} s on this machine): "
                  f"{escape(ev.key_figure)}")
    table = Table(show_header=False, box=None, padding=(0, 1))
    for k, v in list(ev.measurements.items())[:12]:
        table.add_row(f"  {escape(str(k))}", escape(fmt_value(v)))
    if ev.measurements:
        console.print(table)
    for c in ev.checks:
        color = "green" if c.passed else "bold red"
        detail = f" — {escape(c.detail)}" if c.detail else ""
        console.print(f"  [{color}]{check_mark(c)}[/] {escape(c.name)}{detail}", highlight=False)
    for c in ev.citations:
        console.print(f"  [dim]cited[/] {escape(c.claim)} — {escape(c.source)}", highlight=False)


def run_session(questions: list[Question], progress: Progress | None, reader: LineReader,
                console: Console, evidence: bool = True, seed: int = 0,
                evidence_fn: Callable[[Question, EvidenceContext], Result] = run_one
                ) -> SessionResult:
    """Ask each question, reveal, take a grade, save progress after every grade."""
    out = SessionResult()
    for n, q in enumerate(questions, 1):
        show_question(console, q, n, len(questions))
        reply = reader.ask("Your answer (enter to reveal, q to quit): ")
        if reply is None or reply.strip().lower() in ("q", "quit"):
            out.quit_early = True
            break
        result = None
        if evidence and q.answered:
            with console.status(f"measuring Q{q.id} on this machine…", spinner="dots"):
                result = evidence_fn(q, EvidenceContext(seed=seed))
        show_reveal(console, q, result)
        fb = assess(q, reply)
        if fb is not None:
            show_feedback(console, fb)
        grade = _ask_grade(reader, console, fb.suggested if fb else None)
        if grade is None or grade == "q":
            out.quit_early = True
            break
        out.grades[q.id] = grade
        if fb is not None:
            out.feedback[q.id] = fb
            if grade != fb.suggested:
                out.overridden.append(q.id)
            if progress is not None:
                progress.record_feedback(q.id, fb.missed_names)
        if progress is not None:
            card = progress.grade(q.id, grade)
            if grade != "s":
                console.print(f"[dim]box {card.box}/{MAX_BOX}, next due {card.due[:16]} UTC[/]")
            progress.save()
    return out


def _ask_grade(reader: LineReader, console: Console, suggested: str | None) -> str | None:
    """The user's grade ("y" / "n" / "s" / "q"), enter accepting `suggested`; None at EOF."""
    prompt = (f"Grade: enter accepts {suggested}, or y(es) / n(o) / s(kip) / q(uit): "
              if suggested else "Did you know it? y(es) / n(o) / s(kip) / q(uit): ")
    while True:
        reply = reader.ask(prompt)
        if reply is None:
            return None
        if suggested and not reply.strip():
            return suggested
        grade = GRADES.get(reply.strip().lower())
        if grade is not None:
            return grade
        console.print(f"Please type y, n, s or q (got {escape(reply)!r}).")


def summary_lines(res: SessionResult) -> list[str]:
    """Score, the tier verdicts the seed's rubric implies, and the weakest section."""
    known, missed, skipped = res.counts()
    graded = known + missed
    lines = [f"Score: {known}/{graded} known" + (f" ({known / graded:.0%})" if graded else "")
             + f", {skipped} skipped."]
    if res.feedback:
        covered = sum(len(f.covered) for f in res.feedback.values())
        total = sum(f.total for f in res.feedback.values())
        lines.append(f"Typed answers: {len(res.feedback)} checked against their rubrics, "
                     f"{covered}/{total} key points covered; {len(res.overridden)} grade(s) "
                     "differ from the suggestion.")
    if not graded:
        return lines + ["Nothing graded, so no verdict."]
    lines.append(f"At this rate, about {round(50 * known / graded)}/50 over the whole grill "
                 f"(projected from {graded} graded); the target is {TARGET}+/50 answered cold, "
                 f"i.e. {BAR:.0%} in every tier.")
    for t, (lo, hi, what) in TIERS.items():
        k, m, _ = res.counts(set(range(lo, hi + 1)))
        if k + m == 0:
            lines.append(f"Tier {t} (Q{lo}–{hi}, {what}): not graded this session.")
            continue
        ok = k / (k + m) >= BAR
        verdict = "at the bar" if ok else "below the bar"
        lines.append(f"Tier {t} (Q{lo}–{hi}, {what}): {k}/{k + m} known — {verdict}.")
    per_sec: dict[str, tuple[int, int]] = {}
    for qid, g in res.grades.items():
        if g == "s":
            continue
        sec = next(s for s, (_, lo, hi) in SECTIONS.items() if lo <= qid <= hi)
        k, n = per_sec.get(sec, (0, 0))
        per_sec[sec] = (k + (g == "y"), n + 1)
    sec = min(per_sec, key=lambda s: (per_sec[s][0] / per_sec[s][1], -per_sec[s][1], s))
    k, n = per_sec[sec]
    if k == n:
        return lines + ["No weak section this time: every graded question was known."]
    lines.append(f"Weakest section: {sec}. {SECTIONS[sec][0]} ({k}/{n} known); "
                 f"practise it with `attnlab quiz --section {sec}`.")
    return lines


def stats_table(all_qs: list[Question], progress: Progress) -> Table:
    """Mastery per section.

    Qs: questions in the section; ans: with an answer written; seen: practised at least once;
    due: practised and due now; box 1-5: how many sit in each Leitner box; acc: share of
    grades that were "known"; mastery: mean of (box-1)/(MAX_BOX-1) over all the section's
    questions (a never-practised question counts 0), so 100% means every one is in box 5.
    """
    now = datetime.now(UTC)
    table = Table(title=f"Quiz progress — {progress.path}", title_justify="left",
                  box=SIMPLE_HEAD, pad_edge=False)
    table.add_column("section", no_wrap=True, overflow="ellipsis", width=25)
    for col in ("Qs", "ans", "seen", "due", "boxes 1-5", "acc", "mastery"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    rows = [(s, [q for q in all_qs if q.section == s]) for s in SECTIONS]
    rows.append(("all", all_qs))
    for s, qs in rows:
        cards = [progress.cards[q.id] for q in qs if q.id in progress.cards
                 and progress.cards[q.id].seen]
        boxes = [sum(c.box == b for c in cards) for b in range(1, MAX_BOX + 1)]
        known = sum(c.known for c in cards)
        tries = sum(c.known + c.missed for c in cards)
        mastery = sum((c.box - 1) / (MAX_BOX - 1) for c in cards) / len(qs)
        label = f"{s}. {SECTIONS[s][0]}" if s in SECTIONS else "all"
        table.add_row(label, str(len(qs)), str(sum(q.answered for q in qs)), str(len(cards)),
                      str(sum(c.is_due(now) for c in cards)), " ".join(map(str, boxes)),
                      f"{known / tries:.0%}" if tries else "–", f"{mastery:.0%}")
    return table


def missed_points_table(all_qs: list[Question], progress: Progress, top: int = 10) -> Table | None:
    """The rubric key points typed answers missed most often (None if none was missed)."""
    rows = progress.missed_points_ranking()[:top]
    if not rows:
        return None
    by_id = {q.id: q for q in all_qs}
    formulas = {(q.id, kp.name): kp.formula for q in all_qs for kp in q.rubric}
    table = Table(title="Key points missed most often (typed answers)", title_justify="left",
                  box=SIMPLE_HEAD, pad_edge=False)
    for col, just in (("Q", "right"), ("key point", "left"), ("missed", "right"),
                      ("of typed", "right"), ("formula", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for qid, name, n, typed in rows:
        title = by_id[qid].title if qid in by_id else ""
        table.add_row(str(qid), f"{escape(name)} [dim]({escape(title)})[/]", str(n),
                      str(typed), escape(formulas.get((qid, name)) or ""))
    return table
