"""Trainer: determinism, exact resume from a safetensors checkpoint, data tasks, bad input."""
import json

import pytest
import torch

from attnlab.layers.attention import AttentionSpec
from attnlab.models import ModelConfig, TinyLM
from attnlab.models.data import MQAR, ByteCorpus, RepeatedTokens, is_validation_file, stdlib_files
from attnlab.models.train import TrainConfig, Trainer, evaluate, masked_accuracy


def model(vocab=24, d=32, seed=0, n_kv=2):
    torch.manual_seed(seed)
    return TinyLM(ModelConfig(vocab_size=vocab, d_model=d, n_layers=2,
                              mixers=AttentionSpec(4, n_kv), max_seq_len=64))


def task():
    return MQAR(n_keys=12, n_values=12, n_pairs=6, n_queries=4, batch_size=4, seed=3)


CFG = {"steps": 8, "warmup": 2, "log_every": 1, "progress": False}


def test_resume_is_bit_exact(tmp_path):
    full = Trainer(model(), task(), TrainConfig(**CFG))
    full.run()
    first = Trainer(model(), task(), TrainConfig(**CFG), out_dir=tmp_path)
    first.run(until=3)
    ckpt = first.save()
    resumed = Trainer(model(seed=99), task(), TrainConfig(**CFG))  # other init: overwritten
    resumed.load(ckpt)
    assert resumed.step == 3
    resumed.run()
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_training_learns_and_schedule():
    cfg = TrainConfig(steps=60, lr=1e-2, warmup=5, progress=False, log_every=60)
    assert cfg.lr_at(0) == pytest.approx(2e-3) and cfg.lr_at(4) == pytest.approx(1e-2)
    assert cfg.lr_at(60) == pytest.approx(1e-3)
    t = RepeatedTokens(vocab=16, seq_len=32, batch_size=8, min_period=4, max_period=8, seed=1)
    m = model(vocab=16)
    before = evaluate(m, t)["loss"]
    Trainer(m, t, cfg).run()
    after = evaluate(m, t, 2)["loss"]
    assert after < before - 0.2  # from ln 16 ≈ 2.77: the copied half becomes predictable


def test_eval_callback_and_checkpoint_every(tmp_path):
    seen = []
    cfg = TrainConfig(steps=4, eval_every=2, checkpoint_every=2, progress=False, log_every=4)
    tr = Trainer(model(), task(), cfg, out_dir=tmp_path,
                 eval_fn=lambda m, s: seen.append(s) or {"acc": masked_accuracy(m, task().batch(0))})
    tr.run()
    assert seen == [2, 4]
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "step_000002.safetensors", "step_000004.safetensors"]


def test_data_tasks():
    r = RepeatedTokens(vocab=10, seq_len=20, batch_size=3, min_period=3, max_period=6, bos=True)
    b = r.batch(5)
    assert torch.equal(b.tokens, r.batch(5).tokens) and not torch.equal(b.tokens, r.batch(6).tokens)
    assert (b.tokens[:, 0] == 10).all() and r.vocab_size == 11
    m = task().batch(0)
    toks, mask = m.tokens, m.loss_mask
    assert toks.shape == (4, 20) and mask.shape == (4, 19) and int(mask.sum()) == 16
    for row in range(4):  # every scored target is the value paired with its query key
        pairs = dict(zip(toks[row, 0:12:2].tolist(), toks[row, 1:12:2].tolist()))
        for t in mask[row].nonzero().flatten().tolist():
            assert pairs[int(toks[row, t])] == int(toks[row, t + 1])
    tr, va = ByteCorpus(32, 2, max_bytes=200_000), ByteCorpus(32, 2, split="val", max_bytes=200_000)
    assert tr.batch(0).tokens.max() < 256 and not torch.equal(tr.data[:1000], va.data[:1000])
    names = [p.name for p in stdlib_files()]
    assert any(is_validation_file(n) for n in names) and not all(is_validation_file(n) for n in names)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="shorter than one sequence"):
        ByteCorpus(seq_len=300, batch_size=1, max_bytes=100)
    with pytest.raises(ValueError, match="n_pairs"):
        MQAR(4, 4, 5, 1, 1)
    with pytest.raises(ValueError, match="periods"):
        RepeatedTokens(10, 8, 1, 3, 5)
    with pytest.raises(ValueError, match="vocab_size"):
        Trainer(model(vocab=10), task(), TrainConfig(steps=1))
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    tr = Trainer(model(), task(), TrainConfig(steps=1, progress=False))
    path = tr.save(tmp_path / "a.safetensors")
    other = Trainer(model(n_kv=1), task(), TrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="another model config"):
        other.load(path)
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "missing.safetensors")
