"""Rolling-buffer cache: decode == band-masked parallel forward over 4·W tokens, chunked
prefill with chunks longer than W, memory capped at W, evicted positions raise."""
import pytest
import torch

from attnlab.cache.base import KVCache
from attnlab.cache.rolling import EvictedPositionError, RollingKVCache
from attnlab.layers.attention import Attention, AttentionSpec
from attnlab.masks import sliding_window
from attnlab.models import ModelConfig, TinyLM, check_parallel_equals_decode
from attnlab.ops.rope import apply_rope
from attnlab.ops.softmax import attention_reference

D_MODEL, W = 32, 4


def band_forward(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """Explicit sliding-window attention through the dense reference (no cache)."""
    B, N, _ = x.shape
    H, Hkv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    pos = torch.arange(N)
    q = apply_rope(layer.q_proj(x).view(B, N, H, D).transpose(1, 2), pos)  # (B, H, N, D)
    k = apply_rope(layer.k_proj(x).view(B, N, Hkv, D).transpose(1, 2), pos)
    v = layer.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)
    out = attention_reference(q, k, v, mask=sliding_window(layer.window).to_dense(N, N))
    return layer.o_proj(out.transpose(1, 2).reshape(B, N, H * D))


SCHEDULES = [
    [5] + [1] * 11,  # prefill then token by token
    [1] * 16,  # decode from the first token
    [9, 1, 6],  # prefill longer than W, then a chunk longer than W
    [3, 7, 2, 1, 3],  # mixed chunk sizes
    [16],  # one parallel call
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("H,Hkv", [(4, 2), (4, 4), (4, 1)])
def test_decode_equals_band_masked_forward_over_4w_tokens(schedule, H, Hkv):
    torch.manual_seed(0)
    layer = Attention(D_MODEL, H, Hkv, window=W, kv_cache="rolling")
    x = torch.randn(2, 4 * W, D_MODEL)
    cache = layer.new_cache(2, 4 * W)
    assert isinstance(cache, RollingKVCache) and cache.capacity == W
    outs, t = [], 0
    for c in schedule:
        outs.append(layer(x[:, t:t + c], cache))
        t += c
        held = cache.stored_positions(0)
        assert sorted(p for p in held.tolist() if p >= 0) == list(range(max(0, t - W), t))
    assert cache.seq_len(0) == 4 * W
    ref = band_forward(layer, x)
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)


def test_update_returns_window_keys_and_positions():
    cache = RollingKVCache(1, 1, 1, 2, window=3)
    ks = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 1, 10, 2).contiguous()  # key = pos
    k, _ = cache.update(0, ks[:, :, :5], ks[:, :, :5])  # chunk longer than W
    assert k.shape[2] == 5 and cache.kv_positions(0).tolist() == [0, 1, 2, 3, 4]
    assert sorted(cache.stored_positions(0).tolist()) == [2, 3, 4]
    for p in range(5, 10):  # decode: the buffer itself, slot p mod W holds position p
        k, _ = cache.update(0, ks[:, :, p:p + 1], ks[:, :, p:p + 1])
        pos = cache.kv_positions(0)
        assert k.shape[2] == 3 and torch.equal(k[0, 0, :, 0], pos.float())
        assert sorted(pos.tolist()) == [p - 2, p - 1, p] and int(pos[p % 3]) == p
    k, _v = cache.update(0, ks[:, :, :2] + 10, ks[:, :, :2] + 10)  # chunk of 2: stored + new
    assert cache.kv_positions(0).tolist()[-2:] == [10, 11] and k.shape[2] == 5


def test_memory_is_capped_and_evicted_positions_raise():
    cache = RollingKVCache(2, 3, 2, 8, window=5)
    assert isinstance(cache, KVCache)
    assert cache.nbytes == 2 * 3 * 2 * (8 + 8) * 5 * 4
    for t in range(12):
        k = torch.full((3, 2, 1, 8), float(t))
        cache.update(0, k, k)
    assert cache.nbytes == 2 * 3 * 2 * 16 * 5 * 4  # unchanged after 12 tokens
    assert cache.used_nbytes == 3 * 2 * 16 * 5 * 4  # layer 0 holds W tokens, layer 1 none
    k, _v = cache.get(0, [7, 11, 9])
    assert k[0, 0, :, 0].tolist() == [7.0, 11.0, 9.0]
    with pytest.raises(EvictedPositionError, match=r"position 6 is not held by layer 0: "
                                                    r"the rolling window of 5 holds positions "
                                                    r"\[7, 12\)"):
        cache.get(0, [8, 6])
    with pytest.raises(EvictedPositionError, match=r"position 12 is not held"):
        cache.get(0, [12])  # not written yet
    with pytest.raises(EvictedPositionError, match=r"position 0 is not held by layer 1"):
        cache.get(1, [0])
    cache.reset()
    assert cache.seq_len(0) == 0 and (cache.stored_positions(0) == -1).all()


MISTRAL = AttentionSpec(n_heads=4, n_kv_heads=2, window=3, kv_cache="rolling")
GLOBAL = AttentionSpec(n_heads=4, n_kv_heads=2)


@pytest.mark.parametrize("mixers", [MISTRAL, [MISTRAL, GLOBAL, MISTRAL, GLOBAL]],
                         ids=["mistral_all_windowed", "gemma2_alternating"])
@pytest.mark.parametrize("prefix,chunk", [(0, 1), (5, 1), (7, 4), (13, 1)])
def test_tiny_lm_windowed_configs_parallel_equals_cached_decode(mixers, prefix, chunk):
    torch.manual_seed(0)
    n_layers = 4 if isinstance(mixers, list) else 2
    model = TinyLM(ModelConfig(61, D_MODEL, n_layers, mixers, d_ff=48, init_std=0.2))
    tokens = torch.randint(0, 61, (2, 13), generator=torch.Generator().manual_seed(1))
    check_parallel_equals_decode(model, tokens, prefix, chunk=chunk, atol=1e-5)
    kinds = [type(c).__name__ for c in model.new_cache(2, 13).caches]
    assert kinds[0] == "RollingKVCache"
    if isinstance(mixers, list):
        assert kinds == ["RollingKVCache", "ContiguousKVCache"] * 2


def test_bad_input():
    with pytest.raises(ValueError, match=r"window \(0\) must be >= 1"):
        RollingKVCache(1, 1, 1, 4, window=0)
    with pytest.raises(ValueError, match=r"kv_cache \('rolling'\) needs a window"):
        Attention(D_MODEL, 4, kv_cache="rolling")
    with pytest.raises(ValueError, match=r"kv_cache \('paged'\) must be one of"):
        AttentionSpec(4, window=3, kv_cache="paged")
    cache = RollingKVCache(1, 2, 2, 4, window=3)
    with pytest.raises(ValueError, match=r"k has shape \(2, 1, 1, 4\); expected \(2, 2, T, 4\)"):
        cache.update(0, torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    with pytest.raises(TypeError, match=r"k has dtype torch.float64"):
        cache.update(0, torch.zeros(2, 2, 1, 4, dtype=torch.float64), torch.zeros(2, 2, 1, 4))
    with pytest.raises(ValueError, match=r"k has 2 new tokens but v has 1"):
        cache.update(0, torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 1, 4))
    with pytest.raises(ValueError, match=r"layer_idx \(1\) must be in \[0, 1\)"):
        cache.update(1, torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))


def test_long_window_decode_through_the_split_kv_backend():
    """W = 2048: decode steps read 2048 keys in slot (not position) order, which the
    split-KV decode backend must handle through kv_positions."""
    from attnlab.ops.softmax.dispatch import choose_backend

    torch.manual_seed(0)
    Wl = 2048
    layer = Attention(16, 2, 1, window=Wl, kv_cache="rolling")
    x = torch.randn(1, Wl + 12, 16)
    with torch.no_grad():
        ref = layer(x)
        cache = layer.new_cache(1, Wl + 12)
        outs = [layer(x[:, :Wl + 5], cache)]
        outs += [layer(x[:, t:t + 1], cache) for t in range(Wl + 5, Wl + 12)]
    k, _ = cache.get(0, list(range(12, Wl + 12)))
    q = torch.zeros(1, 2, 1, 8)
    assert choose_backend(q, k, k, layer.mask) == "decode"
    assert not bool((cache.kv_positions(0)[1:] >= cache.kv_positions(0)[:-1]).all())  # wrapped
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-4)
