"""Experiments: the pipelines run end to end at toy sizes (JSON + PNG written, fields
consistent), the CLI, and the analysis pieces they rely on. The real quick/full sizes run
in the grill and under `-m slow`."""
import json

import pytest
import torch
from typer.testing import CliRunner

from attnlab.experiments import get, induction, kv_sharing, redundancy, sinks


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(induction.InductionConfig, "preset", classmethod(
        lambda cls, quick, seed=0: cls(steps=6, eval_every=3, d_model=16, seq_len=16,
                                       min_period=2, max_period=8, eval_period=6,
                                       batch_size=4, seeds=(seed,))))
    monkeypatch.setattr(kv_sharing.KVConfig, "preset", classmethod(
        lambda cls, quick, seed=0: cls(steps=2, d_model=16, n_heads=4, batch_size=2,
                                       text_seq_len=16, mqar_pairs=4, mqar_queries=2,
                                       variants=("MHA", "GQA-2", "MQA", "MLA", "SWA-8",
                                                 "linear", "SSD"),
                                       seeds=(seed, seed + 1), eval_batches=1)))
    monkeypatch.setattr(sinks.SinksConfig, "preset", classmethod(
        lambda cls, quick, seed=0: cls(steps=2, d_model=16, seq_len=16, batch_size=2,
                                       seeds=(seed,))))
    monkeypatch.setattr(redundancy.RedundancyConfig, "preset", classmethod(
        lambda cls, quick, seed=0: cls(steps=2, d_model=16, n_heads=2, n_layers=2,
                                       seq_len=16, batch_size=2, importance_batches=1,
                                       seeds=(seed,))))


def test_induction_pipeline(tiny, tmp_path):
    res = induction.run(True, str(tmp_path))
    run = res["runs"][0]
    assert [h["step"] for h in run["curve"]] == [3, 6]
    assert len(run["induction_scores_layer1"]) == 4 and run["induction_heads"]
    saved = json.loads((tmp_path / "induction_quick.json").read_text())
    assert saved["command"].startswith("attnlab experiment induction --quick")
    assert (tmp_path / "induction_quick.png").stat().st_size > 0


def test_phase_change_rule():
    evals = [{"step": s, "induction_max": v} for s, v in
             [(10, 0.02), (20, 0.03), (30, 0.2), (40, 0.7), (50, 0.72)]]
    assert induction.phase_change_step(evals, 0.3) == 40  # 30→40 is the steepest rise (+0.5)
    evals[2]["induction_max"] = 0.6  # now 20→30 is (+0.57)
    assert induction.phase_change_step(evals, 0.3) == 30
    assert induction.phase_change_step(evals, 0.9) is None


def test_kv_sharing_pipeline_matched_params_and_pareto(tiny, tmp_path):
    res = kv_sharing.run(True, str(tmp_path))
    rows = {r["variant"]: r for r in res["tables"]["mqar"]["rows"]}
    ref = rows["MHA"]["params"]
    for r in rows.values():
        assert abs(r["params"] - ref) / ref < 0.05, r["variant"]
    assert rows["MHA"]["kv_bytes_per_token"] == 2 * 2 * 4 * 4 * 4  # layers·K,V·heads·D·fp32
    assert rows["MQA"]["kv_bytes_per_token"] * 4 == rows["MHA"]["kv_bytes_per_token"]
    assert rows["GQA-2"]["kv_bytes_per_token"] * 2 == rows["MHA"]["kv_bytes_per_token"]
    assert rows["linear"]["kv_bytes_per_token"] == rows["SSD"]["kv_bytes_per_token"] == 0
    assert "| MHA |" in res["markdown"] and (tmp_path / "kv_sharing_quick.png").exists()
    assert rows["MHA"]["acc_sd"] >= 0 and len(rows["MHA"]["per_seed"]) == 2


def test_pareto_rule():
    rows = [{"variant": "a", "kv_bytes_per_token": 10, "acc": 0.9},
            {"variant": "b", "kv_bytes_per_token": 5, "acc": 0.9},
            {"variant": "c", "kv_bytes_per_token": 1, "acc": 0.5},
            {"variant": "d", "kv_bytes_per_token": 5, "acc": 0.4}]
    assert kv_sharing.pareto(rows, "acc", True) == ["b", "c"]


def test_sinks_and_redundancy_pipelines(tiny, tmp_path):
    s = sinks.run(True, str(tmp_path))
    assert set(s["variants"]) == {"plain", "bos", "sink_logit"}
    sl = s["variants"]["sink_logit"]["per_seed"][0]
    assert sl["sink_logit_mass"] is not None and len(sl["key0_mass"]) == 2
    r = redundancy.run(True, str(tmp_path))
    run = r["runs"][0]
    assert len(run["single_head_delta"]) == 2 and run["curve"]["fraction"][-1] == 0.75


def test_sink_logit_attention_matches_reference_and_pattern():
    torch.manual_seed(0)
    layer = sinks.SinkLogitAttention(16, 2)
    with torch.no_grad():
        layer.sink.fill_(50.0)  # a huge sink logit absorbs all the mass: output ≈ 0
    out = layer(torch.randn(1, 5, 16))
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cache"):
        layer(torch.randn(1, 5, 16), cache=object())


def test_cli(tiny, tmp_path):
    from attnlab.cli import _load_commands, app

    _load_commands()
    res = CliRunner().invoke(app, ["experiment", "redundancy", "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "redundancy_quick.json").exists()
    bad = CliRunner().invoke(app, ["experiment", "nope", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "must be one of" in bad.output
    with pytest.raises(ValueError, match="must be one of"):
        get("nope")


def check_claims(name: str, res: dict) -> None:
    """What each experiment's results file is quoted for (experiments/results/README.md)."""
    if name == "induction":
        for r in res["runs"]:
            assert r["phase_change_step"] is not None
            assert max(r["induction_scores_layer1"]) >= 0.5
            assert r["icl_gain_induction_ablated"] < 0.5 * r["icl_gain"]
            assert min(r["copying_scores_effective"].values()) > 0.5
    elif name == "sinks":
        assert all(x["sink_heads"] > 0 for x in res["variants"]["bos"]["per_seed"])
        assert res["variants"]["bos"]["mean_key0_mass"] > res["variants"]["plain"]["mean_key0_mass"]
    elif name == "redundancy":
        for r in res["runs"]:
            assert 0 < r["frac_heads_below_1pct"] < 1
            assert r["curve"]["loss"][-1] > r["curve"]["loss"][0]
    elif name == "kv_sharing":
        for table in res["tables"].values():
            params = [row["params"] for row in table["rows"]]
            assert max(params) / min(params) < 1.05  # matched parameter counts
            assert all(len(row["per_seed"]) >= 3 for row in table["rows"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["induction", "kv_sharing", "sinks", "redundancy"])
def test_full_sizes(name, tmp_path):
    """The full (3-seed) runs whose files are committed under experiments/results."""
    res = get(name).run(False, str(tmp_path))
    assert res["mode"] == "full" and (tmp_path / f"{name}.json").exists()
    check_claims(name, res)


@pytest.mark.parametrize("name", ["induction", "kv_sharing", "sinks", "redundancy"])
def test_committed_full_results_hold_their_claims(name):
    import json
    from pathlib import Path

    res = json.loads((Path(__file__).parents[1] / "experiments" / "results" /
                      f"{name}.json").read_text())
    assert res["mode"] == "full" and len(res["config"]["seeds"]) >= 3
    check_claims(name, res)


def test_sinks_feed_streaming_eviction():
    c = sinks.SinksConfig(steps=1, seq_len=16, d_model=16, batch_size=2)
    model, _, _ = sinks.train_variant("plain", c, 0, 256)
    res = sinks.streaming_eviction(model, c, 0)
    assert set(res["loss"]) == {"window", "sinks+window", "dense"}
    budget = 4 + (16 // 2 - 4)  # 4 sink tokens + a window of seq_len/2 − 4
    assert res["positions_scored"] == 4 * 16 - 1 - budget  # predictions after eviction began
