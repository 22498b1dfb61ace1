"""The linear family's grill answers (Q21–Q26, Q47) run and pass."""
import pytest
from grill_cases import assert_evidence_ok

from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import run_one

IDS = [21, 22, 23, 24, 25, 26, 47]


@pytest.mark.parametrize("qid", IDS)
def test_evidence_passes(qid):
    q = {q.id: q for q in all_questions()}[qid]
    assert q.answered, f"Q{qid} has no evidence"
    res = run_one(q, EvidenceContext())
    assert_evidence_ok(res)
    assert res.evidence.key_figure
    assert q.formulas and q.seed_note
