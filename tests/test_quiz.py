"""`attnlab quiz`: Leitner progress, question selection, the session loop and its verdicts."""
from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from attnlab.grill import progress as prog
from attnlab.grill.quiz import (
    LineReader,
    QuizOptions,
    SessionResult,
    id_ranges,
    run_session,
    select_questions,
    stats_table,
    summary_lines,
    tier_of,
)
from attnlab.grill.registry import Evidence, Question

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


# --- Leitner boxes ---------------------------------------------------------------------------

def test_known_moves_up_a_box_and_missed_falls_to_box_one(tmp_path):
    p = prog.Progress(tmp_path / "p.json")
    c = p.grade(3, "y", NOW)
    assert (c.box, c.seen, c.known) == (2, 1, 1)
    assert datetime.fromisoformat(c.due) == NOW + timedelta(days=prog.INTERVAL_DAYS[2])
    c = p.grade(3, "y", NOW)
    assert c.box == 3 and datetime.fromisoformat(c.due) == NOW + timedelta(days=3)
    for _ in range(5):
        c = p.grade(3, "y", NOW)
    assert c.box == prog.MAX_BOX
    c = p.grade(3, "n", NOW)
    assert (c.box, c.missed, c.last_grade) == (1, 1, "n")
    assert datetime.fromisoformat(c.due) == NOW  # a missed question is due again at once
    before = vars(p.grade(3, "s", NOW)).copy()
    assert before["skipped"] == 1 and before["box"] == 1 and before["seen"] == c.seen
    with pytest.raises(ValueError, match="grade"):
        p.grade(3, "maybe", NOW)


def test_due_ids_follow_the_intervals(tmp_path):
    p = prog.Progress(tmp_path / "p.json")
    p.grade(1, "y", NOW)  # box 2: due in a day
    p.grade(2, "n", NOW)  # box 1: due now
    p.grade(4, "s", NOW)  # skipped only: never graded, so not "due"
    ids = [1, 2, 3, 4]
    assert p.due_ids(ids, NOW) == [2]
    assert p.due_ids(ids, NOW + timedelta(days=1, seconds=1)) == [1, 2]


def test_save_load_roundtrip_has_schema_and_version(tmp_path):
    p = prog.Progress(tmp_path / "sub" / "p.json")
    p.grade(7, "y", NOW)
    p.sessions.append({"asked": 1})
    p.save()
    doc = json.loads(p.path.read_text())
    assert doc["schema"] == prog.SCHEMA and doc["version"] == prog.VERSION
    q = prog.load(p.path)
    assert q.cards == p.cards and q.sessions == [{"asked": 1}]
    assert prog.load(tmp_path / "absent.json").cards == {}


def test_crash_between_temp_write_and_rename_keeps_previous_progress(tmp_path, monkeypatch):
    p = prog.Progress(tmp_path / "p.json")
    p.grade(1, "y", NOW)
    p.save()
    before = p.path.read_bytes()
    p.grade(1, "n", NOW)
    p.grade(2, "y", NOW)

    def killed(src, dst):
        assert Path(src).read_text().startswith("{")  # the temp file was fully written
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(prog.os, "replace", killed)
    with pytest.raises(OSError, match="simulated crash"):
        p.save()
    monkeypatch.undo()
    assert p.path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [".p.json.lock", "p.json"]  # no temp file left
    assert prog.load(p.path).cards[1].box == 2


@pytest.mark.parametrize("content, why", [
    (b'{"schema": "attnlab-quiz-progress", "version": 1, "questions": {', "not valid JSON"),
    (b'{"name": "my notes", "items": [1, 2]}', "not an attnlab quiz progress file"),
    (b'{"schema": "attnlab-quiz-progress", "version": 99}', "version 99"),
    (b'{"schema": "attnlab-quiz-progress", "version": 1, "questions": {"3": {"box": 9}}}',
     "damaged entry"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_corrupt_or_foreign_file_is_reported_and_backed_up(tmp_path, content, why):
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    with pytest.raises(prog.ProgressError) as err:
        prog.load(path)
    msg = str(err.value)
    assert why in msg and str(path) in msg and "untouched" in msg
    backups = list(tmp_path.glob("progress.json.bad-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == content
    assert str(backups[0]) in msg
    assert path.read_bytes() == content  # never overwritten
    with pytest.raises(prog.ProgressError):
        prog.load(path)
    assert len(list(tmp_path.glob("progress.json.bad-*"))) == 1  # same bytes, same backup


def test_default_path_per_platform(monkeypatch, tmp_path):
    monkeypatch.setattr(prog.sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert prog.default_path() == tmp_path / "xdg" / "attnlab" / "progress.json"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG spec: absolute only
    monkeypatch.setattr(prog.Path, "home", classmethod(lambda cls: tmp_path / "home"))
    assert prog.default_path() == tmp_path / "home/.local/share/attnlab/progress.json"
    monkeypatch.setattr(prog.sys, "platform", "darwin")
    assert prog.default_path() == (tmp_path / "home/Library/Application Support/attnlab"
                                   / "progress.json")
    monkeypatch.setattr(prog.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert prog.default_path() == tmp_path / "local" / "attnlab" / "progress.json"


# --- selection ---------------------------------------------------------------------------------

def _ev(ctx):
    ev = Evidence(key_figure="measured 42 here")
    ev.measurements["answer"] = 42
    ev.check("forty-two", True, "it is 42")
    return ev


def fake_qs(answered=(1, 2, 3, 9, 12, 14, 15, 30)) -> list[Question]:
    return [Question(id=i, title=f"Title {i}", answer=f"Answer {i}." if i in answered else "",
                     formulas=[f"f{i}(x) = x²"] if i in answered else [],
                     seed_note="seed lost a symbol" if i == 1 else None,
                     evidence=_ev if i in answered else None) for i in range(1, 51)]


def test_select_by_tier_section_pending_seed_and_limit(tmp_path):
    qs = fake_qs()
    sel = select_questions(qs, QuizOptions(tier=1, seed=0))
    assert sorted(q.id for q in sel.questions) == [1, 2, 3, 9]
    assert sel.pending_left_out == [4, 5, 6, 7, 8, 10]
    sel = select_questions(qs, QuizOptions(tier=1, include_pending=True, seed=0))
    assert sorted(q.id for q in sel.questions) == list(range(1, 11)) and not sel.pending_left_out
    assert [q.id for q in select_questions(qs, QuizOptions(section="c")).questions] != []
    assert {q.section for q in select_questions(qs, QuizOptions(section="c")).questions} == {"C"}
    order = [q.id for q in select_questions(qs, QuizOptions(include_pending=True, seed=7)).questions]
    again = [q.id for q in select_questions(qs, QuizOptions(include_pending=True, seed=7)).questions]
    other = [q.id for q in select_questions(qs, QuizOptions(include_pending=True, seed=8)).questions]
    assert order == again and order != other and sorted(order) == list(range(1, 51))
    assert len(select_questions(qs, QuizOptions(seed=1, limit=3)).questions) == 3
    assert [tier_of(i) for i in (1, 10, 11, 25, 26, 50)] == [1, 1, 2, 2, 3, 3]
    assert id_ranges([9, 1, 2, 3, 7, 10]) == "Q1–3, Q7, Q9–10"


def test_due_selection_asks_only_due_missed_first(tmp_path):
    qs = fake_qs()
    p = prog.Progress(tmp_path / "p.json")
    now = datetime.now(UTC)
    p.grade(1, "y", now)
    p.grade(2, "n", now)
    p.grade(3, "y", now - timedelta(days=5))  # box 2, due 4 days ago
    sel = select_questions(qs, QuizOptions(due=True, seed=0), p)
    assert [q.id for q in sel.questions] == [2, 3]  # box 1 before box 2
    assert sel.not_due == 1 and sel.never_seen == 5
    with pytest.raises(ValueError, match="progress"):
        select_questions(qs, QuizOptions(due=True))


@pytest.mark.parametrize("kw, msg", [({"tier": 4}, "tier"), ({"section": "Z"}, "section"),
                                      ({"limit": 0}, "limit")])
def test_bad_options_name_the_argument(kw, msg):
    with pytest.raises(ValueError, match=msg):
        QuizOptions(**kw)


# --- the session loop (in process, scripted) --------------------------------------------------

def _session(lines: str, qs: list[Question], p: prog.Progress | None, evidence=True):
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False, color_system=None)
    reader = LineReader(console, io.StringIO(lines), interactive=False)
    res = run_session(qs, p, reader, console, evidence=evidence)
    return res, out.getvalue()


def test_session_reveals_answer_formula_seed_note_and_evidence_then_saves(tmp_path):
    qs = fake_qs()
    p = prog.Progress(tmp_path / "p.json")
    res, text = _session("my words\nmaybe\ny\n\nn\n", [qs[0], qs[1]], p)
    assert res.grades == {1: "y", 2: "n"} and not res.quit_early
    for piece in ("Answer 1.", "f1(x) = x²", "seed lost a symbol", "measured 42 here",
                  "PASS forty-two", "Please type y, n, s or q (got 'maybe')",
                  "Your answer (enter to reveal, q to quit): my words", "box 2/5"):
        assert piece in text, piece
    saved = prog.load(p.path)
    assert saved.cards[1].box == 2 and saved.cards[2].box == 1


def test_session_without_evidence_and_early_end(tmp_path):
    qs = fake_qs()
    res, text = _session("\ns\nq\n", [qs[0], qs[1], qs[2]], None, evidence=False)
    assert res.grades == {1: "s"} and res.quit_early and "measured 42" not in text
    res, _ = _session("\n", [qs[0]], None)  # input ends before the grade
    assert res.grades == {} and res.quit_early


def test_summary_gives_score_tier_verdicts_and_weakest_section():
    res = SessionResult({1: "y", 2: "y", 3: "y", 9: "n", 12: "n", 14: "y", 15: "n", 30: "s"})
    lines = "\n".join(summary_lines(res))
    assert "Score: 4/7 known (57%), 1 skipped." in lines
    assert "about 29/50" in lines and "35+/50" in lines
    assert "Tier 1 (Q1–10" in lines and "3/4 known — at the bar" in lines
    assert "Tier 2 (Q11–25" in lines and "1/3 known — below the bar" in lines
    assert "Tier 3 (Q26–50" in lines and "not graded" in lines
    assert "Weakest section: B. Causal and cross attention (0/2 known)" in lines
    assert summary_lines(SessionResult({5: "s"}))[-1] == "Nothing graded, so no verdict."


def test_stats_table_reports_boxes_due_and_mastery(tmp_path):
    qs = fake_qs()
    p = prog.Progress(tmp_path / "p.json")
    now = datetime.now(UTC)
    for _ in range(4):
        p.grade(1, "y", now - timedelta(days=40))  # box 5, long due
    p.grade(2, "n", now)
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(stats_table(qs, p))
    row_a = next(line for line in out.getvalue().splitlines() if "KV-sharing" in line)
    # A has 8 questions; Q1 in box 5 (1.0) and Q2 in box 1 (0.0): mastery 1/8 = 12%
    # accuracy: 4 known of 5 grades; both practised questions are due now
    # columns: Qs, answered, practised, due, boxes 1..5, accuracy, mastery
    assert row_a.split()[1:] == ["KV-sharing", "variants", "8", "3", "2", "2",
                                 "1", "0", "0", "0", "1", "80%", "12%"]
