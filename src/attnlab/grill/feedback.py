"""Feedback on a typed quiz answer: which rubric key points it made, which it missed.

Each question's `rubric` lists `KeyPoint`s with accepted phrasings (case-insensitive regular
expressions). A typed answer covers a point when any phrasing matches. The suggested grade
is "y" when the answer covers at least `KNOWN_SHARE` of the points, else "n"; the user
accepts it with enter or overrides it. Matching phrases is a study aid, not an examiner: a
correct answer in unexpected words can miss a point, which is why the user has the last word.
"""
from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from .registry import KeyPoint, Question

KNOWN_SHARE = 2 / 3  # cover two thirds of the key points to be suggested "known"


@dataclass
class Feedback:
    covered: list[KeyPoint]
    missed: list[KeyPoint]

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.missed)

    @property
    def suggested(self) -> str:
        return "y" if len(self.covered) >= KNOWN_SHARE * self.total else "n"

    @property
    def missed_names(self) -> list[str]:
        return [kp.name for kp in self.missed]


def assess(q: Question, text: str | None) -> Feedback | None:
    """Feedback on `text` as an answer to `q`; None when there is no rubric or no text
    (an empty reply means the user answered in their head: there is nothing to check)."""
    if not q.rubric or text is None or not text.strip():
        return None
    covered = [kp for kp in q.rubric if kp.covered(text)]
    missed = [kp for kp in q.rubric if not kp.covered(text)]
    return Feedback(covered, missed)


def show_feedback(console: Console, fb: Feedback) -> None:
    """Covered and missed key points (missed ones with their formula), then the suggestion."""
    console.print(f"[bold]Your answer covered {len(fb.covered)} of {fb.total} key points[/]")
    for kp in fb.covered:
        console.print(f"  [green]covered[/] {escape(kp.name)}", highlight=False)
    for kp in fb.missed:
        formula = f" — formula: {escape(kp.formula)}" if kp.formula else ""
        console.print(f"  [bold red]missed[/]  {escape(kp.name)}{formula}", highlight=False)
    word = "known" if fb.suggested == "y" else "not yet known"
    console.print(f"Suggested grade: [bold]{fb.suggested}[/] ({word}: {len(fb.covered)}/"
                  f"{fb.total} key points; at least {KNOWN_SHARE:.0%} suggests known).",
                  highlight=False)
