"""`attnlab quiz`: practise the grill's questions, graded by you, spaced by Leitner boxes."""
from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.markup import escape

from . import app


@app.command()
def quiz(
    section: str | None = typer.Option(None, "--section", "-s", help="Only section A..H."),
    tier: int | None = typer.Option(
        None, "--tier", "-t", help="1 = Q1-10 (basics), 2 = Q11-25 (LLM-architecture round), "
        "3 = Q26-50 (frontier-lab depth)."),
    due: bool = typer.Option(False, "--due", help="Only questions practised before and due now."),
    stats: bool = typer.Option(False, "--stats", help="Show mastery per section and the key "
                               "points typed answers missed most often, and exit."),
    progress_path: str | None = typer.Option(
        None, "--progress", help="Progress file (default: the user data directory)."),
    no_evidence: bool = typer.Option(False, "--no-evidence",
                                     help="Reveal answers without running the evidence."),
    seed: int | None = typer.Option(None, "--seed", help="Fix the question order."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Ask at most N questions."),
    include_pending: bool = typer.Option(
        False, "--include-pending", help="Also ask questions that have no answer written yet."),
) -> None:
    """Ask questions one at a time; you answer, see ours with live evidence, and grade yourself.

    Reads from the terminal, or line by line from stdin when it is not a terminal (an answer
    line, then a grade line y/n/s/q, per question). A typed answer is checked against the
    question's key points; an empty grade line accepts the suggested grade.
    """
    from ..grill import progress as prog_mod
    from ..grill.quiz import (
        LineReader,
        QuizOptions,
        id_ranges,
        missed_points_table,
        run_session,
        select_questions,
        stats_table,
        summary_lines,
    )
    from ..grill.registry import all_questions

    console = Console(highlight=False)
    try:
        opts = QuizOptions(section=section, tier=tier, due=due, evidence=not no_evidence,
                           seed=seed, limit=limit, include_pending=include_pending)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        if not stats:  # a session must be able to save: check before the first question
            prog_mod.check_location(progress_path)
        progress = prog_mod.load(progress_path)
    except prog_mod.ProgressError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    all_qs = all_questions()
    if stats:
        console.print(stats_table(all_qs, progress))
        missed = missed_points_table(all_qs, progress)
        console.print(missed if missed is not None else
                      "No key points missed yet (type answers in `attnlab quiz` to get "
                      "feedback on them).")
        return

    sel = select_questions(all_qs, opts, progress)
    reader = LineReader(console)
    source = "the terminal" if reader.interactive else (
        "stdin (not a terminal): one answer line, then one grade line, per question")
    console.print(f"attnlab quiz — {len(sel.questions)} question(s); reading from {source}. "
                  f"Progress: {progress.path}", soft_wrap=True)
    if sel.pending_left_out:
        ids = id_ranges(sel.pending_left_out)
        console.print(f"[yellow]{len(sel.pending_left_out)} pending question(s) left out "
                      f"(no answer written yet): {ids}. Use --include-pending to see them.[/]",
                      soft_wrap=True)
    if due and not sel.questions:
        console.print(f"Nothing is due: {sel.not_due} practised question(s) are waiting for "
                      f"their next date, {sel.never_seen} were never practised (run without "
                      "--due to meet them).", soft_wrap=True)
        return
    if not sel.questions:
        console.print("No questions to ask: every question matching these filters is pending "
                      "(try --include-pending)." if sel.pending_left_out
                      else "No questions match these filters.", soft_wrap=True)
        return

    started = datetime.now(UTC)
    try:
        res = run_session(sel.questions, progress, reader, console,
                          evidence=opts.evidence, seed=seed or 0)
    except KeyboardInterrupt:
        console.print("\nInterrupted; every grade given so far is saved.")
        raise typer.Exit(130) from None
    except (OSError, TimeoutError) as exc:  # the location went bad mid-session
        Console(stderr=True).print(f"[bold red]error:[/] progress could not be saved to "
                                   f"{escape(str(progress.path))}: {escape(str(exc))}",
                                   soft_wrap=True)
        raise typer.Exit(1) from None
    known, missed, skipped = res.counts()
    progress.log_session({
        "started": started.isoformat(timespec="seconds"), "asked": len(res.grades),
        "known": known, "missed": missed, "skipped": skipped,
        "filters": {"section": opts.section, "tier": tier, "due": due},
    })
    try:
        progress.save()
    except (OSError, TimeoutError, prog_mod.ProgressError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] the session log could not be saved "
                                   f"({escape(str(exc))}); every grade was saved as given.",
                                   soft_wrap=True)
        raise typer.Exit(1) from None
    console.print()
    if res.quit_early:
        console.print("Session ended early; grades so far are saved.")
    for line in summary_lines(res):
        console.print(line, soft_wrap=True)  # whole lines: easy to read back from a pipe
