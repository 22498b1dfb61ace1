"""Grill questions 30–34 and 50 (head analyses; evidence trains tiny models live) and the
small-scale KV-sharing evidence added to 5–7."""
import pytest
from grill_cases import BY_ID, assert_answer_passes

from attnlab.grill.registry import EvidenceContext
from attnlab.grill.runner import run_one


@pytest.mark.parametrize("qid", (30, 31, 32, 50, 33, 34, 5, 6, 7))
def test_evidence_passes(qid):
    assert_answer_passes(qid, min_measurements=3)


def test_induction_numbers_are_consistent():
    ev30 = run_one(BY_ID[30], EvidenceContext()).evidence
    ev31 = run_one(BY_ID[31], EvidenceContext()).evidence
    scores = ev30.measurements["layer-1 induction scores per head (mass rule)"]
    assert all(0.0 <= s <= 1.0 for s in scores)
    gain = ev31.measurements["in-context gain (nats): loss(copy 1) − loss(copy 2), trained"]
    ablated = ev31.measurements["same, induction heads zero-ablated"]
    assert ablated < gain
