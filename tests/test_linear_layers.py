"""Linear-family layers in the tiny LM: parallel forward == prefill + token-by-token decode
(linear attention, Performer with fixed features, RWKV-4/6, Mamba-2 SSD); constant state
bytes (1K vs 64K tokens); the recurrent state cache interface; bad config."""
import pytest
import torch

from attnlab.cache import CacheOverflowError, ContiguousKVCache
from attnlab.cache.recurrent import RecurrentStateCache
from attnlab.layers.linear_attention import LinearAttention, LinearAttentionSpec, PerformerSpec
from attnlab.layers.rwkv import RWKVSpec
from attnlab.layers.ssd import SSDMixer, SSDSpec
from attnlab.models import ModelConfig, TinyLM, check_parallel_equals_decode

VOCAB, D = 61, 32
MIXERS = {
    "linear": LinearAttentionSpec(n_heads=4, chunk_size=4),
    "linear_gqa_relu": LinearAttentionSpec(n_heads=4, n_kv_heads=2, feature_map="relu",
                                           chunk_size=5),
    "performer": PerformerSpec(n_heads=4, n_features=16, chunk_size=4),
    "rwkv4": RWKVSpec(n_heads=4, version=4, chunk_size=4),
    "rwkv6": RWKVSpec(n_heads=4, version=6, chunk_size=4),
    "ssd": SSDSpec(d_state=8, head_dim=8, n_groups=2, chunk_size=4),
    "hybrid": [LinearAttentionSpec(n_heads=2), RWKVSpec(n_heads=2), SSDSpec(d_state=4, head_dim=16),
               PerformerSpec(n_heads=2, n_features=8)],
}


def make_model(mixers, seed=0):
    torch.manual_seed(seed)
    n_layers = len(mixers) if isinstance(mixers, list) else 2
    # init_std 0.2: logits far from uniform, so a broken state shows up clearly
    return TinyLM(ModelConfig(VOCAB, D, n_layers, mixers, d_ff=48, init_std=0.2))


def tokens(B, N, seed=1):
    return torch.randint(0, VOCAB, (B, N), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("B,N,prefix,chunk", [(2, 13, 5, 1), (1, 1, 0, 1), (2, 11, 0, 3),
                                               (2, 9, 9, 1)])
def test_parallel_equals_decode(kind, B, N, prefix, chunk):
    model = make_model(MIXERS[kind])
    assert check_parallel_equals_decode(model, tokens(B, N), prefix, atol=1e-5, chunk=chunk) <= 1e-5


@pytest.mark.parametrize("kind", list(MIXERS))
def test_parallel_equals_decode_float64(kind):
    """In float64 the two computations agree to ~1e-12: the fp32 gap is rounding only."""
    model = make_model(MIXERS[kind]).double()
    assert check_parallel_equals_decode(model, tokens(2, 12), 4, atol=1e-12, chunk=2) <= 1e-12


def test_conformance_detects_a_corrupted_state():
    """Zeroing one layer's state between decode steps must break the equivalence."""
    model = make_model(MIXERS["ssd"])
    toks = tokens(1, 8)
    full = model(toks)
    cache = model.new_cache(1, 8)
    outs = [model(toks[:, :4], cache)]
    rc = cache.layer(1)  # overwrite the state with zeros, keep the position count
    rc.commit(0, {name: torch.zeros_like(t) for name, t in rc.state(0).items()}, 0)
    outs.append(model(toks[:, 4:], cache))
    assert (torch.cat(outs, 1) - full).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["linear", "performer", "rwkv4", "rwkv6", "ssd"])
def test_state_bytes_do_not_grow(kind):
    model = make_model(MIXERS[kind])
    small, large = model.new_cache(1, 1024), model.new_cache(1, 65536)
    assert small.nbytes == large.nbytes > 0
    assert model.kv_bytes_per_token(4) == 0
    kv = ContiguousKVCache(2, 1, 4, 8, 65536)  # softmax attention of the same width grows
    assert kv.nbytes == 64 * ContiguousKVCache(2, 1, 4, 8, 1024).nbytes


def test_state_bytes_flat_after_1k_and_64k_tokens():
    """Feed 1K then 63K more tokens through real layers: allocated bytes never change."""
    torch.manual_seed(0)
    layers = [LinearAttention(16, 2, chunk_size=256), SSDMixer(16, d_state=4, head_dim=8,
                                                               chunk_size=256)]
    for layer in layers:
        cache = layer.new_cache(1, 65536)
        before = cache.nbytes
        with torch.no_grad():
            layer(torch.randn(1, 1024, 16), cache)
            at_1k = cache.nbytes
            layer(torch.randn(1, 65536 - 1024, 16), cache)
        assert before == at_1k == cache.nbytes
        assert cache.seq_len(0) == 65536
        with pytest.raises(CacheOverflowError, match="capacity is"):
            layer(torch.randn(1, 1, 16), cache)
        assert cache.seq_len(0) == 65536  # nothing written


def test_recurrent_cache_stores_state_and_does_no_attention_math():
    cache = RecurrentStateCache(2, 3, {"S": (2, 4, 5), "z": (2, 4)}, capacity=10)
    k, v = torch.rand(3, 2, 6, 4), torch.randn(3, 2, 6, 5)
    with pytest.raises(TypeError, match="holds recurrent state, not keys/values"):
        cache.update(1, k, v)  # the layer owns the recurrence, the cache only stores
    S = torch.einsum("bhnf,bhnd->bhfd", k, v)
    cache.commit(1, {"S": S, "z": k.sum(2)}, 6)
    torch.testing.assert_close(cache.state(1)["S"], S)
    assert cache.seq_len(1) == 6 and cache.seq_len(0) == 0
    assert cache.nbytes == 2 * 3 * (2 * 4 * 5 + 2 * 4) * 4
    with pytest.raises(CacheOverflowError):
        cache.commit(1, {"S": S, "z": k.sum(2)}, 6)
    assert cache.seq_len(1) == 6
    with pytest.raises(ValueError, match="new_state\\['S'\\] has shape"):
        cache.commit(0, {"S": torch.zeros(3, 2, 4, 4), "z": torch.zeros(3, 2, 4)}, 1)
    cache.reset()
    assert cache.seq_len(1) == 0 and float(cache.state(1)["S"].abs().sum()) == 0.0


def test_performer_redraw_changes_features_and_keeps_decode_conformance():
    model = make_model(MIXERS["performer"])
    mixer = model.blocks[0].mixer
    before = mixer.omega.clone()
    mixer.redraw(torch.Generator().manual_seed(123))
    assert not torch.equal(before, mixer.omega)
    check_parallel_equals_decode(model, tokens(2, 10), 3)


def test_bad_config():
    with pytest.raises(ValueError, match="n_heads \\(4\\) must be divisible by n_kv_heads \\(3\\)"):
        LinearAttentionSpec(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="feature_map"):
        LinearAttentionSpec(n_heads=4, feature_map="softmax")
    with pytest.raises(ValueError, match="version \\(5\\)"):
        RWKVSpec(n_heads=2, version=5)
    with pytest.raises(ValueError, match="d_inner .* must be divisible by head_dim"):
        SSDSpec(head_dim=7).build(32, 0)
    with pytest.raises(ValueError, match="chunk_size \\(0\\)"):
        SSDSpec(chunk_size=0)
    layer = LinearAttention(16, 2)
    with pytest.raises(ValueError, match="x last dimension"):
        layer(torch.randn(1, 3, 8))
    with pytest.raises(TypeError, match="RecurrentStateCache"):
        layer(torch.randn(1, 3, 16), ContiguousKVCache(1, 1, 2, 8, 4))
