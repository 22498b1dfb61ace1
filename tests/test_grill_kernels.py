"""Grill questions 27, 28, 29, 37, 48 (FlashAttention, online softmax, prefill/decode)."""
import pytest
from grill_cases import assert_evidence_ok

from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import run_one

IDS = (27, 28, 29, 37, 48)
BY_ID = {q.id: q for q in all_questions()}


@pytest.mark.parametrize("qid", IDS)
def test_kernel_questions_pass(qid, tmp_path):
    q = BY_ID[qid]
    assert q.answered and q.formulas and q.seed_note
    r = run_one(q, EvidenceContext(plot_dir=str(tmp_path)))
    assert_evidence_ok(r)
    assert r.evidence.key_figure and len(r.evidence.measurements) >= 3
    assert len(r.evidence.checks) >= 3


def test_online_softmax_matches_two_pass_exactly_enough():
    import torch

    from attnlab.grill.answers.q28_online_softmax import online_softmax, two_pass_softmax

    x = torch.tensor([-1e4, 3.0, 1e4, 1e4 - 2.0], dtype=torch.float64)
    for block in (1, 2, 3, 4):
        p, m, _ = online_softmax(x, block)
        torch.testing.assert_close(p, two_pass_softmax(x), atol=1e-15, rtol=0)
        assert m == 1e4
