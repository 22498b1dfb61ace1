import json
import re
from pathlib import Path

from typer.testing import CliRunner

from attnlab.cli import _load_commands, app
from attnlab.grill.registry import EvidenceContext, Question, all_questions
from attnlab.grill.runner import run_one, to_json

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"


def test_registry_has_fifty_ids_in_sections():
    qs = all_questions()
    assert [q.id for q in qs] == list(range(1, 51))
    assert {q.section for q in qs} == set("ABCDEFGH")
    for q in qs:
        if q.answered:
            assert q.answer.strip() and q.title.strip(), q.id


def test_answers_share_no_sentence_with_the_seed():
    """The grill writes every answer in its own words: no seed sentence is reused."""
    seed_files = sorted(SEED.glob("*.txt")) if SEED.exists() else []
    if not seed_files:  # the seed lives beside the repository; a bare clone cannot check it
        return
    text = " ".join(p.read_text() for p in seed_files)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    sentences = [s for s in sentences if len(s.split()) >= 6]
    for q in all_questions():
        body = " ".join([q.answer, q.seed_note or ""])
        for s in sentences:
            assert s not in body, f"Q{q.id} reuses a seed sentence: {s!r}"


def test_pending_questions_report_pending_and_evidence_without_checks_fails():
    q = Question(id=50, title="t", answer="")
    assert run_one(q, EvidenceContext()).status == "pending"
    from attnlab.grill.registry import Evidence
    empty = Question(id=49, title="t", answer="a", evidence=lambda ctx: Evidence())
    assert run_one(empty, EvidenceContext()).status == "fail"

    def boom(ctx):
        raise RuntimeError("broken evidence")
    crash = Question(id=48, title="t", answer="a", evidence=boom)
    r = run_one(crash, EvidenceContext())
    assert r.status == "fail" and "broken evidence" in r.error
    doc = to_json([r])
    assert doc["questions"][0]["status"] == "fail"


def test_cli_json_has_all_ids_and_statuses(tmp_path):
    _load_commands()
    out = tmp_path / "g.json"
    res = CliRunner().invoke(app, ["grill", "--question", "35", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert [q["id"] for q in doc["questions"]] == [35]
    q35 = doc["questions"][0]
    assert q35["error"] is None and q35["short"] and q35["checks"] + q35["citations"]
    assert not [c for c in q35["checks"] if not c["passed"] and not c["timing"]], q35["checks"]
    assert res.exit_code == (0 if q35["status"] == "pass" else 1), res.output  # timing only
    res = CliRunner().invoke(app, ["grill", "--section", "Z"])
    assert res.exit_code != 0 and "section" in res.output


def test_evidence_runs_with_the_questions_thread_count_and_restores_it():
    import torch

    from attnlab.grill.registry import Evidence
    seen = {}

    def ev_fn(ctx):
        seen["threads"] = torch.get_num_threads()
        ev = Evidence()
        ev.check("ran", True)
        return ev

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_one(Question(id=47, title="t", answer="a", evidence=ev_fn), EvidenceContext())
        assert seen["threads"] == 1 and torch.get_num_threads() == 2
        run_one(Question(id=47, title="t", answer="a", evidence=ev_fn, threads=None),
                EvidenceContext())
        assert seen["threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_key_point_covers_any_accepted_phrasing_case_insensitively():
    from attnlab.grill.registry import KeyPoint

    kp = KeyPoint("shares K/V across heads", [r"shar\w* (the )?k/?v", r"one kv head"],
                  formula="cache = 2·L·d_h·N")
    assert kp.covered("MQA SHARES KV between all query heads")
    assert kp.covered("there is one KV head")
    assert not kp.covered("") and not kp.covered("it is faster")
    import pytest
    with pytest.raises(ValueError, match="accept"):
        KeyPoint("x", [])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        KeyPoint("x", ["(unclosed"])


def test_citations_answer_a_question_but_never_count_as_checks():
    from attnlab.grill.registry import Evidence

    def cited(ctx):
        e = Evidence()
        e.cite("GQA uses 8 KV groups in the uptrained T5-XXL", "GQA paper, Section 3")
        return e

    r = run_one(Question(id=43, title="t", answer="a", evidence=cited), EvidenceContext())
    assert r.status == "pass" and not r.evidence.checks and len(r.evidence.citations) == 1
    doc = to_json([r])["questions"][0]
    assert doc["citations"] == [{"claim": "GQA uses 8 KV groups in the uptrained T5-XXL",
                                 "source": "GQA paper, Section 3"}]

    def cited_but_failing(ctx):
        e = cited(ctx)
        e.check("measured", False, timing=True)
        return e

    r = run_one(Question(id=43, title="t", answer="a", evidence=cited_but_failing),
                EvidenceContext())
    assert r.status == "fail" and r.failed_checks == ["measured"]
    assert r.evidence.checks[0].timing and not r.evidence.non_timing_checks


def _sentences(text: str) -> int:
    """Sentence ends: . ! ? followed by a capital/bracket or the end (not "e.g." or "3.5")."""
    return len(re.findall(r"[.!?](?=\s+[A-Z(“\"]|\s*$)", text.strip()))


def test_every_answer_opens_with_a_short_interview_answer_and_has_a_rubric():
    """Every answered question carries the 2-3 sentences a candidate would say aloud (quick
    fire, Q41-50, stays shorter) and a short rubric of key points for typed-answer feedback."""
    problems = []
    for q in all_questions():
        if not q.answered:
            continue
        n, limit = _sentences(q.short), 400 if q.section == "H" else 700
        if not 1 <= n <= 3 or len(q.short) > limit:
            problems.append(f"Q{q.id}: short answer has {n} sentences, {len(q.short)} chars "
                            f"(want 1-3 sentences, <= {limit} chars)")
        if not 2 <= len(q.rubric) <= 8:
            problems.append(f"Q{q.id}: rubric has {len(q.rubric)} key points (want 2-8)")
    assert not problems, "\n".join(problems)
