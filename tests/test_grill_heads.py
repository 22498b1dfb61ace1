"""Grill questions 30–34 and 50 (head analyses; evidence trains tiny models live) and the
small-scale KV-sharing evidence added to 5–7."""
import pytest

from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import run_one

BY_ID = {q.id: q for q in all_questions()}


@pytest.mark.parametrize("qid", (30, 31, 32, 50, 33, 34, 5, 6, 7))
def test_evidence_passes(qid):
    q = BY_ID[qid]
    assert q.answered and q.formulas and q.seed_note
    r = run_one(q, EvidenceContext())
    assert r.status == "pass", (r.error, r.failed_checks)
    assert r.evidence.key_figure and len(r.evidence.measurements) >= 3
    assert len(r.evidence.checks) >= 2


def test_induction_numbers_are_consistent():
    ev30 = run_one(BY_ID[30], EvidenceContext()).evidence
    ev31 = run_one(BY_ID[31], EvidenceContext()).evidence
    scores = ev30.measurements["layer-1 induction scores per head (mass rule)"]
    assert all(0.0 <= s <= 1.0 for s in scores)
    gain = ev31.measurements["in-context gain (nats): loss(copy 1) − loss(copy 2), trained"]
    ablated = ev31.measurements["same, induction heads zero-ablated"]
    assert ablated < gain
