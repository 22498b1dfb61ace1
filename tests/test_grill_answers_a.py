"""Grill answers Q1–Q25: every one opens with a short spoken answer and carries a rubric
whose key points that short answer itself mostly covers; Q1–Q13's evidence passes its
non-timing checks (Q14–Q25 run in test_grill_sparse_answers.py / test_linear_grill.py)."""
from __future__ import annotations

import pytest
from grill_cases import BY_ID, assert_answer_passes

from attnlab.grill.registry import EvidenceContext
from attnlab.grill.runner import run_one

IDS = tuple(range(1, 26))


@pytest.mark.parametrize("qid", IDS)
def test_short_answer_and_rubric(qid):
    q = BY_ID[qid]
    n_sentences = q.short.count(". ") + 1
    assert q.short.strip() and 2 <= n_sentences <= 4, (qid, q.short)
    assert 3 <= len(q.rubric) <= 6, (qid, len(q.rubric))
    covered = [kp.name for kp in q.rubric if kp.covered(q.short)]
    assert len(covered) * 2 >= len(q.rubric), (qid, "short covers too few key points", covered)
    assert not any(kp.covered("") for kp in q.rubric), (qid, "a key point matches empty text")


@pytest.mark.parametrize("qid", range(1, 14))
def test_evidence_passes(qid):
    assert_answer_passes(qid, min_measurements=2)


def test_q7_mla_dominates_gqa8_and_the_committed_table_is_shown_once():
    ev = run_one(BY_ID[7], EvidenceContext()).evidence
    front = ev.measurements["Pareto front (measured cache, published quality rank)"]
    assert "MLA" in front and "GQA-8" not in front
    tables = [k for k in ev.measurements if k.startswith("committed run (3 seeds)")]
    assert len(tables) <= 1
    for qid in (5, 6):
        other = run_one(BY_ID[qid], EvidenceContext()).evidence
        assert not any(k.startswith("committed run") or "quick" in k
                       for k in other.measurements), qid


def test_q5_quality_figures_are_citations_and_the_reading_is_measured():
    ev = run_one(BY_ID[5], EvidenceContext()).evidence
    assert len(ev.citations) >= 2
    assert not any("GQA paper" in c.name for c in ev.checks)
    assert all(c.timing for c in ev.checks if "faster" in c.name)
    speed = ev.key_figure.split("decode step ")[1].split("×")[0]
    assert f"step {speed}× faster here" in ev.measurements["reading"]
