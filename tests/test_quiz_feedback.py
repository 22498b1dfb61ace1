"""Feedback on typed quiz answers: covered and missed key points, a suggested grade the user
accepts or overrides, and `--stats` listing the key points missed most often."""
from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from attnlab.cli import _load_commands, app
from attnlab.grill import progress as prog
from attnlab.grill.feedback import assess
from attnlab.grill.quiz import LineReader, missed_points_table, run_session, summary_lines
from attnlab.grill.registry import Evidence, KeyPoint, Question, all_questions

_load_commands()

MQA_RUBRIC = [
    KeyPoint("one K/V head shared by all query heads",
             [r"(one|single|shared) (k/?v|key)", r"share[sd]? (the )?(k/?v|keys)"]),
    KeyPoint("cache shrinks by the number of heads",
             [r"\bh\s*(×|x|times)\s*(smaller|less)", r"(smaller|shrinks?) by (a factor of )?h\b",
              r"divided by (the number of )?heads"],
             formula="KV bytes/token = 2·L·d_h·b (MHA: 2·L·H·d_h·b)"),
    KeyPoint("quality drops a little",
             [r"(quality|accuracy|perplexity) (drop|loss|degrad|suffer|worse)",
              r"(small|slight) (quality )?(drop|loss)"]),
]
CAUSAL_RUBRIC = [
    KeyPoint("query i sees keys j <= i", [r"j\s*(<=|≤)\s*i", r"future (tokens|positions)"]),
    KeyPoint("one forward pass trains every position",
             [r"(all|every) positions? (at once|in parallel)", r"teacher forcing"]),
]


def _ev(ctx):
    ev = Evidence(key_figure="k")
    ev.check("ok", True)
    return ev


def qs_with_rubrics() -> list[Question]:
    return [Question(id=2, title="MQA", answer="Depth 2.", short="Short 2.", evidence=_ev,
                     rubric=MQA_RUBRIC),
            Question(id=9, title="Causal", answer="Depth 9.", short="Short 9.", evidence=_ev,
                     rubric=CAUSAL_RUBRIC),
            Question(id=11, title="Cross", answer="Depth 11.", evidence=_ev)]  # no rubric


def session(lines: str, qs: list[Question], p: prog.Progress | None):
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    res = run_session(qs, p, LineReader(console, io.StringIO(lines), interactive=False),
                      console, evidence=False)
    return res, out.getvalue()


GOOD = "All query heads share the K/V, so the cache is h× smaller; quality drops slightly."
PARTIAL = "There is a single KV head."


def test_assess_good_partial_and_empty_answers():
    q = qs_with_rubrics()[0]
    good = assess(q, GOOD)
    assert [k.name for k in good.missed] == [] and good.suggested == "y"
    part = assess(q, PARTIAL)
    assert [k.name for k in part.covered] == ["one K/V head shared by all query heads"]
    assert part.suggested == "n" and len(part.missed) == 2
    two = assess(q, "one KV head; smaller by h")
    assert len(two.covered) == 2 and two.suggested == "y"  # two of three is known
    assert assess(q, "") is None and assess(q, "   ") is None  # answered in the head
    assert assess(qs_with_rubrics()[2], GOOD) is None  # no rubric, nothing to check


def test_good_answer_is_suggested_known_and_enter_accepts(tmp_path):
    p = prog.Progress(tmp_path / "p.json")
    res, text = session(GOOD + "\n\n", qs_with_rubrics()[:1], p)
    assert res.grades == {2: "y"} and res.overridden == []
    assert "Your answer covered 3 of 3 key points" in text
    assert "Suggested grade: y" in text and "Grade: enter accepts y" in text
    assert text.index("Short 2.") < text.index("Depth 2.") < text.index("covered 3 of 3")
    saved = prog.load(p.path)
    assert saved.cards[2].known == 1 and saved.cards[2].typed == 1
    assert saved.cards[2].missed_points == {}


def test_partial_answer_shows_missed_points_with_formula_and_can_be_overridden(tmp_path):
    p = prog.Progress(tmp_path / "p.json")
    res, text = session(PARTIAL + "\ny\n", qs_with_rubrics()[:1], p)
    assert res.grades == {2: "y"} and res.overridden == [2]  # the user had the last word
    assert "covered 1 of 3 key points" in text and "Suggested grade: n" in text
    assert "covered one K/V head shared by all query heads" in text
    assert ("missed  cache shrinks by the number of heads — formula: KV bytes/token = 2·L·d_h·b"
            in text)
    assert "missed  quality drops a little" in text
    saved = prog.load(p.path)
    assert saved.cards[2].missed_points == {"cache shrinks by the number of heads": 1,
                                            "quality drops a little": 1}
    assert "1 grade(s) differ from the suggestion" in "\n".join(summary_lines(res))


def test_empty_answer_gets_no_feedback_and_must_be_graded(tmp_path):
    p = prog.Progress(tmp_path / "p.json")
    res, text = session("\n\nn\n", qs_with_rubrics()[1:2], p)
    assert res.grades == {9: "n"} and not res.feedback
    assert "key points" not in text and "Suggested grade" not in text
    assert "Please type y, n, s or q (got '')" in text  # enter accepts nothing without a hint
    assert prog.load(p.path).cards[9].typed == 0


def test_question_without_rubric_and_quit_at_the_grade(tmp_path):
    p = prog.Progress(tmp_path / "p.json")
    res, text = session(GOOD + "\ns\n" + "all positions at once\nq\n",
                        [qs_with_rubrics()[2], qs_with_rubrics()[1]], p)
    assert res.grades == {11: "s"} and res.quit_early and "Suggested grade" in text
    saved = prog.load(p.path)
    assert 9 not in saved.cards  # quitting at the grade records neither grade nor feedback


def test_stats_rank_the_key_points_missed_most_often(tmp_path):
    qs = qs_with_rubrics()
    p = prog.Progress(tmp_path / "p.json")
    for text, qid in [(PARTIAL, 2), ("one KV head", 2), ("", 2), ("j <= i", 9)]:
        q = next(x for x in qs if x.id == qid)
        fb = assess(q, text)
        if fb is not None:
            p.record_feedback(qid, fb.missed_names)
    p.save()
    ranking = prog.load(p.path).missed_points_ranking()
    assert ranking[:2] == [(2, "cache shrinks by the number of heads", 2, 2),
                           (2, "quality drops a little", 2, 2)]
    assert ranking[2] == (9, "one forward pass trains every position", 1, 1)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(missed_points_table(qs, prog.load(
        p.path)))
    table = out.getvalue()
    assert "Key points missed most often" in table and "KV bytes/token = 2·L·d_h·b" in table
    assert table.index("cache shrinks") < table.index("one forward pass")


def test_cli_stats_lists_missed_key_points(tmp_path, monkeypatch):
    import attnlab.grill.registry as reg

    qs = qs_with_rubrics()
    full = [next((q for q in qs if q.id == i), Question(id=i, title=f"T{i}", answer=""))
            for i in range(1, 51)]
    monkeypatch.setattr(reg, "all_questions", lambda: full)
    path = tmp_path / "p.json"
    res = CliRunner().invoke(app, ["quiz", "--progress", str(path), "--no-evidence",
                                   "--section", "A"], input=PARTIAL + "\n\n")
    assert res.exit_code == 0, res.output
    assert "Suggested grade: n" in res.stdout and "Score: 0/1 known" in res.stdout
    stats = CliRunner().invoke(app, ["quiz", "--stats", "--progress", str(path)],
                               env={"COLUMNS": "200"})
    assert stats.exit_code == 0 and "Key points missed most often" in stats.stdout
    assert "cache shrinks by the number of heads" in stats.stdout
    empty = CliRunner().invoke(app, ["quiz", "--stats", "--progress", str(tmp_path / "n.json")])
    assert "No key points missed yet" in empty.stdout


RUBRIC_QS = [q for q in all_questions() if q.rubric]


@pytest.mark.parametrize("q", RUBRIC_QS, ids=[f"Q{q.id}" for q in RUBRIC_QS])
def test_real_rubrics_are_covered_by_our_own_answer_and_not_by_a_non_answer(q):
    """Our short answer plus the depth and formulas make every key point (so the phrasings
    accept sensible wording), and a non-answer makes too few to be suggested known."""
    ours = assess(q, " ".join([q.short, q.answer, *q.formulas]))
    assert not ours.missed, f"Q{q.id}: our own answer misses {ours.missed_names}"
    assert assess(q, "I am not sure, sorry.").suggested == "n"
    assert 2 <= len(q.rubric) <= 8, f"Q{q.id}: a short rubric has 2-8 key points"
