"""Shared assertions for tests of grill answer modules."""
from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import run_one

BY_ID = {q.id: q for q in all_questions()}


def assert_answer_passes(qid: int, min_measurements: int = 2):
    """The answer has formulas and a seed note, and its live evidence passes. Returns it."""
    q = BY_ID[qid]
    assert q.answered and q.formulas and q.seed_note
    r = run_one(q, EvidenceContext())
    assert r.status == "pass", (r.error, r.failed_checks)
    assert r.evidence.key_figure and len(r.evidence.measurements) >= min_measurements
    assert len(r.evidence.checks) >= 2
    return r.evidence
