"""Grill questions 38 and 41–45 (KV cache growth, the MHA/MQA/GQA/MLA papers, LLaMA-2 70B)."""
from __future__ import annotations

import pytest
from grill_cases import BY_ID, assert_answer_passes

from attnlab.grill.registry import EvidenceContext
from attnlab.grill.runner import run_one

IDS = (38, 41, 42, 43, 44, 45)


@pytest.mark.parametrize("qid", IDS)
def test_evidence_passes_with_formulas_and_measurements(qid):
    assert_answer_passes(qid, min_measurements=3)


def test_key_figures_carry_the_headline_numbers():
    figs = {qid: run_one(BY_ID[qid], EvidenceContext()).evidence for qid in (38, 44, 45)}
    assert figs[38].measurements["Llama-2-70B slope (bytes/token)"] == 327_680
    assert figs[44].measurements["cached elements/token/layer d_c + d_R (config)"] == 576
    assert figs[44].measurements["as a multiple of d_h; equivalent GQA groups"] == (4.5, 2.25)
    assert figs[45].measurements["fp16 bytes/token"] == 327_680
    assert "1.25 GiB" in figs[45].key_figure
