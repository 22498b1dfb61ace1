"""Shared assertions for tests of grill answer modules.

Default tests never assert a timing verdict (a loaded machine may flip one): they check the
evidence's structure and that every check not marked `timing=True` holds. Timing verdicts
are exercised by the slow loop test (`tests/test_grill_loop.py`).
"""
from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import Result, run_one

BY_ID = {q.id: q for q in all_questions()}


def assert_evidence_ok(r: Result) -> None:
    """The evidence ran, gave checks or citations, and every non-timing check holds."""
    assert r.status != "pending", f"Q{r.question.id} has no evidence"
    assert r.error is None and r.evidence is not None, r.error
    ev = r.evidence
    assert ev.checks or ev.citations, f"Q{r.question.id}: no checks and no citations"
    failed = [c.name for c in ev.non_timing_checks if not c.passed]
    assert not failed, (f"Q{r.question.id}: non-timing checks failed: {failed}",
                        [(c.name, c.detail) for c in ev.checks if not c.passed])


def assert_answer_passes(qid: int, min_measurements: int = 2, min_checks: int = 2,
                         ctx: EvidenceContext | None = None):
    """The answer has a short answer, formulas and a seed note, and its live evidence
    passes every non-timing check. Returns the evidence."""
    q = BY_ID[qid]
    assert q.answered and q.formulas and q.seed_note
    r = run_one(q, ctx or EvidenceContext())
    assert_evidence_ok(r)
    assert r.evidence.key_figure and len(r.evidence.measurements) >= min_measurements
    assert len(r.evidence.checks) + len(r.evidence.citations) >= min_checks
    return r.evidence
