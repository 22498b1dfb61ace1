"""Attention-sink cache (StreamingLLM): eviction keeps sinks + recent window, keys are stored
before RoPE and rotated with in-cache positions at read time, exact equality with the
contiguous cache before anything is evicted, and generation past max_seq_len at fixed size."""
import pytest
import torch

from attnlab.cache.base import CacheStack
from attnlab.cache.contiguous import ContiguousKVCache
from attnlab.cache.sink import SinkKVCache
from attnlab.grill.answers._tiny import tiny_lm
from attnlab.layers.attention import Attention
from attnlab.ops.rope import apply_rope
from attnlab.ops.softmax import attention_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}


def test_eviction_positions_and_fixed_memory():
    c = SinkKVCache(1, 1, 1, 4, n_sink=2, window=5)
    nbytes = c.nbytes
    for t in range(20):
        k = torch.full((1, 1, 1, 4), float(t))
        kk, _ = c.update(0, k, -k)
    assert c.abs_positions(0).tolist() == [0, 1, 15, 16, 17, 18, 19]
    assert kk[0, 0, :, 0].tolist() == [0, 1, 15, 16, 17, 18, 19]  # pre-RoPE values as stored
    assert c.kv_positions(0).tolist() == list(range(7))  # in-cache positions
    assert c.seq_len(0) == 7 and c.tokens_seen(0) == 20 and c.nbytes == nbytes
    # a chunk: returns stored + chunk, keeps sinks + last window
    kk, _ = c.update(0, torch.arange(20, 23.0).view(1, 1, 3, 1).expand(1, 1, 3, 4).contiguous(),
                     torch.zeros(1, 1, 3, 4))
    assert kk.shape[2] == 10 and c.kv_positions(0).tolist() == list(range(10))
    assert c.abs_positions(0).tolist() == [0, 1, 18, 19, 20, 21, 22]


def test_layer_rotates_with_in_cache_positions():
    """Explicit StreamingLLM reference: the kept pre-RoPE keys rotated by 0..L−1, the query
    by L−1, dense attention."""
    torch.manual_seed(0)
    att = Attention(32, 4, 2, rope=True).eval()
    x = torch.randn(2, 30, 32)
    cache = SinkKVCache(1, 2, 2, 8, n_sink=3, window=6)
    ks, vs = [], []
    with torch.no_grad():
        for t in range(30):
            out = att(x[:, t:t + 1], cache)
            k = att.k_proj(x[:, t:t + 1]).view(2, 1, 2, 8).transpose(1, 2)  # pre-RoPE
            v = att.v_proj(x[:, t:t + 1]).view(2, 1, 2, 8).transpose(1, 2)
            ks.append(k)
            vs.append(v)
            keep = list(range(min(3, t + 1))) + [j for j in range(max(3, t - 5), t + 1)]
            K, V = torch.cat([ks[j] for j in keep], 2), torch.cat([vs[j] for j in keep], 2)
            L = K.shape[2]
            pos = torch.arange(L)
            q = att.q_proj(x[:, t:t + 1]).view(2, 1, 4, 8).transpose(1, 2)
            ref = attention_reference(apply_rope(q, pos[-1:]), apply_rope(K, pos), V)
            ref = att.o_proj(ref.transpose(1, 2).reshape(2, 1, 32))
            torch.testing.assert_close(out, ref, **TOL)


@pytest.mark.parametrize("chunks", [[1] * 9, [5, 1, 3], [9]])
def test_equals_contiguous_before_eviction(chunks):
    torch.manual_seed(1)
    att = Attention(32, 4, 2).eval()
    x = torch.randn(1, 9, 32)
    sink = SinkKVCache(1, 1, 2, 8, n_sink=2, window=7)  # holds exactly 9 tokens
    cont = ContiguousKVCache(1, 1, 2, 8, 9)
    t = 0
    with torch.no_grad():
        for n in chunks:
            torch.testing.assert_close(att(x[:, t:t + n], sink), att(x[:, t:t + n], cont), **TOL)
            t += n
    with torch.no_grad():
        torch.testing.assert_close(att(x), att(x, ContiguousKVCache(1, 1, 2, 8, 9)), **TOL)


def test_generation_runs_past_max_seq_len_at_fixed_size():
    m = tiny_lm(seed=0, max_seq_len=32)
    cache = CacheStack([SinkKVCache(1, 1, 2, 16, n_sink=4, window=20) for _ in range(2)])
    nbytes = cache.nbytes
    tok = torch.tensor([[1]])
    with torch.no_grad():
        for _ in range(100):  # 100 > max_seq_len = 32
            logits = m(tok, cache)
            tok = logits[:, -1:].argmax(-1)
    assert cache.nbytes == nbytes and cache.seq_len(0) == 24
    assert cache.layer(0).tokens_seen(0) == 100
    assert cache.layer(1).abs_positions(0)[:4].tolist() == [0, 1, 2, 3]
    assert bool(torch.isfinite(logits).all())
    with pytest.raises(ValueError, match="max_seq_len"):  # the contiguous path cannot
        m(torch.ones(1, 33, dtype=torch.long))


def test_bad_input():
    with pytest.raises(ValueError, match="window"):
        SinkKVCache(1, 1, 1, 4, n_sink=4, window=0)
    with pytest.raises(ValueError, match="n_sink"):
        SinkKVCache(1, 1, 1, 4, n_sink=-1, window=4)
    c = SinkKVCache(1, 1, 1, 4, n_sink=1, window=2)
    with pytest.raises(ValueError, match="must be"):
        c.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="layer_idx"):
        c.update(3, torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))


def test_streaming_experiment_caches_agree_until_eviction():
    """The StreamingLLM experiment: all three caches give the same per-position loss until
    the budget is full, then the evicting ones diverge from dense."""
    from attnlab.analysis.streaming import StreamingConfig, run

    cfg = StreamingConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, train_len=32,
                          train_steps=5, batch_size=4, n_sink=2, window=10, eval_len=40,
                          eval_sequences=2)
    r = run(cfg)
    budget = cfg.n_sink + cfg.window
    for kind in ("window", "sinks+window"):
        torch.testing.assert_close(torch.tensor(r.per_position[kind][:budget]),
                                   torch.tensor(r.per_position["dense"][:budget]), **TOL)
        assert r.per_position[kind][budget:] != r.per_position["dense"][budget:]
    assert r.positions_scored == 39 - budget
    assert 0 < r.sink_mass < 1 and all(v > 0 for v in r.loss.values())
    with pytest.raises(ValueError, match="eval_len"):
        StreamingConfig(n_sink=4, window=28, eval_len=32)
    with pytest.raises(ValueError, match="bos_token"):
        StreamingConfig(bos_token=256)


def test_streaming_bos_task_fixes_the_first_token():
    from attnlab.analysis.streaming import _WithBOS
    from attnlab.models.data import ByteCorpus

    task = _WithBOS(ByteCorpus(seq_len=16, batch_size=3, max_bytes=10_000), bos=0)
    b = task.batch(0)
    assert b.tokens.shape == (3, 16) and bool((b.tokens[:, 0] == 0).all())
    assert bool((b.tokens[:, 1:] != 0).any())  # the rest is text
    assert task.seq_len == 16
