"""Grill questions 14–20, 39, 40, 46, 49 (sliding window, globals, BigBird, Reformer)."""
import pytest
from grill_cases import BY_ID, assert_answer_passes

from attnlab.grill.registry import EvidenceContext
from attnlab.grill.runner import run_one

IDS = (14, 15, 16, 17, 18, 19, 20, 39, 40, 46, 49)


@pytest.mark.parametrize("qid", IDS)
def test_evidence_passes_with_formulas_and_measurements(qid):
    assert_answer_passes(qid, min_measurements=2)


def test_headline_numbers():
    ev15 = run_one(BY_ID[15], EvidenceContext()).evidence
    assert ev15.measurements["Mistral 7B exact span L·(W−1)+1"] == 131_041
    assert ev15.measurements["seed's L·W"] == 131_072
    ev46 = run_one(BY_ID[46], EvidenceContext()).evidence
    assert ev46.measurements["window W; layers / KV heads / head_dim"][0] == 4096
    assert ev46.measurements["rolling cache bytes per layer (fp16); per sequence, 32 layers"][1] \
        == 512 * 2 ** 20
    ev39 = run_one(BY_ID[39], EvidenceContext()).evidence
    assert ev39.measurements["growth per layer"] == [4, 4, 4, 4]
