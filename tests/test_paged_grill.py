"""Grill question 36 (paged attention): live evidence passes, with the block table and the
measured per-sequence slack."""
from grill_cases import assert_evidence_ok

from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import run_one


def test_q36_evidence_passes():
    q = {q.id: q for q in all_questions()}[36]
    assert q.answered and q.formulas and q.seed_note
    r = run_one(q, EvidenceContext())
    assert_evidence_ok(r)
    ev = r.evidence
    assert ev.measurements["largest per-sequence slack seen (slots)"] < 16
    assert ev.measurements["fork: logical blocks that differ after the child's first write"] == [2]
    assert len(ev.checks) >= 6 and ev.key_figure
