"""Head detectors on hand-built ideal patterns, the scoring rules, the OV copying score."""
import pytest
import torch

from attnlab.analysis.heads import (
    copying_score,
    duplicate_token_score,
    head_table,
    induction_score,
    previous_token_score,
    repeated_random_tokens,
    sink_score,
)
from attnlab.analysis.hooks import hf_patterns
from attnlab.layers.attention import AttentionSpec
from attnlab.models import ModelConfig, TinyLM


def shifted(n, offset, first_row=0):
    """Ideal head: row i reads i − offset (rows < first_row or without target read key 0)."""
    P = torch.zeros(n, n)
    for i in range(n):
        j = i - offset
        P[i, j if (i >= first_row and j >= 0) else 0] = 1.0
    return P


def uniform(n):
    P = torch.ones(n, n).tril()
    return P / P.sum(-1, keepdim=True)


@pytest.mark.parametrize("T", [1, 7, 63])
def test_previous_token_ideal_is_T_minus_1_over_T(T):
    P = shifted(T, 1)
    assert float(previous_token_score(P)) == pytest.approx((T - 1) / T)
    assert float(previous_token_score(P, "mul")) == pytest.approx((T - 1) / T)


@pytest.mark.parametrize("period", [3, 8, 20])
def test_induction_ideal(period):
    n = 2 * period + 1
    P = shifted(n, period - 1, first_row=period)
    assert float(induction_score(P, period)) == pytest.approx(1.0)
    assert float(induction_score(P, period, "mul")) == pytest.approx(1.0)
    assert float(induction_score(P, period, "abs")) == pytest.approx(1.0)
    assert float(duplicate_token_score(P, period)) == pytest.approx(0.0)
    D = shifted(n, period, first_row=period)
    assert float(duplicate_token_score(D, period)) == pytest.approx(1.0)
    assert float(induction_score(D, period)) == pytest.approx(0.0)


def test_uniform_pattern_scores_and_rules_differ():
    n, period = 12, 5
    P = uniform(n)
    # mass on key i−1 under a uniform causal row i is 1/(i+1), row 0 scores 0
    expect = sum(1 / (i + 1) for i in range(1, n)) / n
    assert float(previous_token_score(P)) == pytest.approx(expect)
    assert float(sink_score(P)) == pytest.approx(sum(1 / (i + 1) for i in range(1, n)) / (n - 1))
    ind = float(induction_score(P, period))
    assert ind == pytest.approx(sum(1 / (i + 1) for i in range(period, n)) / (n - period))
    # mul excludes BOS: the row masses are renormalised, so it differs from the mass rule
    mul = float(induction_score(P, period, "mul", exclude_bos=True))
    assert mul > ind
    assert float(previous_token_score(P, "abs")) < float(previous_token_score(P))


def test_batched_shapes_and_head_table():
    period = 6
    prev = shifted(2 * period, 1)
    ind = shifted(2 * period, period - 1, first_row=period)
    pats = torch.stack([prev, ind]).expand(3, 2, 2, 12, 12).contiguous()  # (L, B, H, N, N)
    tab = head_table(pats, period)
    assert tab["induction"].shape == (3, 2)
    assert tab["induction"][0, 1] == pytest.approx(1.0)
    assert tab["previous"][0, 0] == pytest.approx(11 / 12)
    assert tab["induction"][0, 0] < 0.2


def test_bad_patterns():
    with pytest.raises(ValueError, match="Nq <= Nk"):
        previous_token_score(torch.rand(5, 4))
    with pytest.raises(ValueError, match="above the diagonal"):
        previous_token_score(torch.full((4, 4), 0.25))
    assert float(previous_token_score(torch.full((4, 4), 0.25), causal=False)) == 0.1875
    with pytest.raises(ValueError, match="rule"):
        previous_token_score(uniform(4), "l2")
    with pytest.raises(ValueError, match="period"):
        induction_score(uniform(9), 5)
    with pytest.raises(TypeError, match="pattern"):
        sink_score([[1.0]])


def test_repeated_tokens():
    t = repeated_random_tokens(2, 5, 3, 11, seed=1, bos=11)
    assert t.shape == (2, 16) and (t[:, 0] == 11).all()
    assert torch.equal(t[:, 1:6], t[:, 6:11]) and torch.equal(t[:, 1:6], t[:, 11:16])


def test_copying_score_sign():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, d_model=16, n_layers=1, mixers=AttentionSpec(2),
                      max_seq_len=16)
    m = TinyLM(cfg)
    mix = m.blocks[0].mixer
    D = mix.head_dim
    with torch.no_grad():  # head 0: W_O W_V = +Eᵀ-ish copier; head 1: the negative
        Wv = m.embed.weight[:D].clone()  # rows span part of embedding space
        mix.v_proj.weight[:D] = torch.eye(D, 16)
        mix.v_proj.weight[D:] = torch.eye(D, 16)
        mix.o_proj.weight[:, :D] = torch.eye(16, D)
        mix.o_proj.weight[:, D:] = -torch.eye(16, D)
    assert Wv.shape == (D, 16)
    assert copying_score(m, 0, 0) == pytest.approx(1.0, abs=1e-5)
    assert copying_score(m, 0, 1) == pytest.approx(-1.0, abs=1e-5)
    with pytest.raises(ValueError, match="head"):
        copying_score(m, 0, 2)
    with pytest.raises(ValueError, match="layer"):
        copying_score(m, 1, 0)
    # layer 0 reads only the embedding, so the effective path equals the direct one
    toks = torch.arange(20).view(2, 10)
    for h in (0, 1):
        assert copying_score(m, 0, h, toks) == pytest.approx(copying_score(m, 0, h), abs=1e-4)
    with pytest.raises(ValueError, match="tokens"):
        copying_score(m, 0, 0, torch.full((1, 3), 20))
    with pytest.raises(TypeError, match="tokens"):
        copying_score(m, 0, 0, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tokens"):
        copying_score(m, 0, 0, torch.zeros(1, 0, dtype=torch.long))


def test_hf_bert_bidirectional():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(0)
    p = hf_patterns(transformers.BertModel(cfg).eval(), repeated_random_tokens(2, 6, 2, 40))
    with pytest.raises(ValueError, match="causal"):
        previous_token_score(p)
    s = previous_token_score(p, causal=False).mean(1)  # (L, H)
    assert s.shape == (2, 4) and bool(((s > 0) & (s < 1)).all())
