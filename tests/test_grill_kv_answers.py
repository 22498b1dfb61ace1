"""Grill questions 38 and 41–45 (KV cache growth, the MHA/MQA/GQA/MLA papers, LLaMA-2 70B)."""
from __future__ import annotations

import pytest

from attnlab.grill.registry import EvidenceContext, all_questions
from attnlab.grill.runner import run_one

IDS = (38, 41, 42, 43, 44, 45)
BY_ID = {q.id: q for q in all_questions()}


@pytest.mark.parametrize("qid", IDS)
def test_evidence_passes_with_formulas_and_measurements(qid):
    q = BY_ID[qid]
    assert q.answered and q.formulas and q.seed_note
    r = run_one(q, EvidenceContext())
    assert r.status == "pass", (r.error, r.failed_checks)
    assert r.evidence.key_figure and len(r.evidence.measurements) >= 3
    assert len(r.evidence.checks) >= 2


def test_key_figures_carry_the_headline_numbers():
    figs = {qid: run_one(BY_ID[qid], EvidenceContext()).evidence for qid in (38, 44, 45)}
    assert figs[38].measurements["Llama-2-70B slope (bytes/token)"] == 327_680
    assert figs[44].measurements["cached elements/token/layer d_c + d_R"] == 576
    assert figs[44].measurements["equivalent GQA groups (d_c + d_R) / (2·d_h)"] == 2.25
    assert figs[45].measurements["fp16 bytes/token"] == 327_680
    assert "1.25 GiB" in figs[45].key_figure
