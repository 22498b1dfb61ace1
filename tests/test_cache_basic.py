"""Contiguous, latent and static cross-attention caches: contents, views, overflow, bytes."""
from __future__ import annotations

import pytest
import torch

from attnlab.cache import (
    CacheOverflowError,
    CacheStack,
    ContiguousKVCache,
    KVCache,
    LatentKVCache,
    StaticCrossCache,
)


def _kv(B, H, T, D, Dv=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, H, T, D, generator=g).to(dtype)
    v = torch.randn(B, H, T, Dv or D, generator=g).to(dtype)
    return k, v


# --- ContiguousKVCache -------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [[1], [7], [1, 1, 1], [63, 1, 1], [3, 4, 7]])
def test_contiguous_returns_concatenation_of_appends(chunks):
    B, H, D, Dv = 2, 3, 5, 4
    cache = ContiguousKVCache(2, B, H, D, capacity=sum(chunks) + 2, v_head_dim=Dv)
    ks, vs = [], []
    for i, t in enumerate(chunks):
        k, v = _kv(B, H, t, D, Dv, seed=i)
        ks.append(k)
        vs.append(v)
        k_all, v_all = cache.update(0, k, v)
        torch.testing.assert_close(k_all, torch.cat(ks, dim=2), atol=0, rtol=0)
        torch.testing.assert_close(v_all, torch.cat(vs, dim=2), atol=0, rtol=0)
    assert cache.seq_len(0) == sum(chunks)
    assert cache.seq_len(1) == 0  # layers are tracked independently
    torch.testing.assert_close(cache.kv_positions(0), torch.arange(sum(chunks)))


def test_contiguous_returns_views_of_one_buffer_no_history_copy():
    B, H, D = 1, 2, 4
    cache = ContiguousKVCache(3, B, H, D, capacity=16)
    k0, v0 = _kv(B, H, 5, D)
    k_all, v_all = cache.update(1, k0, v0)
    ptr_k, ptr_v = k_all.data_ptr(), v_all.data_ptr()
    for step in range(4):
        k, v = _kv(B, H, 1, D, seed=step + 1)
        k_new, v_new = cache.update(1, k, v)
        # same storage, same start address: the history was not moved or copied
        assert k_new.data_ptr() == ptr_k and v_new.data_ptr() == ptr_v
        assert k_new.untyped_storage().data_ptr() == cache.buffers[0].untyped_storage().data_ptr()
        assert k_new.shape == (B, H, 6 + step, D)
    # the first five slots still hold exactly what was written first
    torch.testing.assert_close(k_new[:, :, :5], k0, atol=0, rtol=0)
    # a write through the cache is visible in an earlier view: they share memory
    cache.update(1, *_kv(B, H, 1, D, seed=99))
    assert k_all.data_ptr() == cache.get(1)[0].data_ptr()


def test_contiguous_append_writes_only_the_new_slots():
    B, H, D, cap = 2, 2, 3, 9
    cache = ContiguousKVCache(2, B, H, D, capacity=cap)
    for buf in cache.buffers:
        buf.fill_(float("nan"))  # sentinel: any slot the cache touches stops being NaN
    k, v = _kv(B, H, 4, D)
    cache.update(1, k, v)
    k_buf, v_buf = cache.buffers
    assert not k_buf[1, :, :, :4].isnan().any() and not v_buf[1, :, :, :4].isnan().any()
    assert k_buf[1, :, :, 4:].isnan().all() and v_buf[1, :, :, 4:].isnan().all()
    assert k_buf[0].isnan().all()  # another layer is untouched
    cache.update(1, *_kv(B, H, 1, D, seed=1))
    written = (~k_buf[1].isnan()).sum().item()
    assert written == B * H * 5 * D  # exactly the 4 + 1 appended slots, nothing else


def test_contiguous_overflow_raises_before_writing():
    B, H, D = 2, 2, 3
    cache = ContiguousKVCache(1, B, H, D, capacity=8)
    k, v = _kv(B, H, 6, D)
    cache.update(0, k, v)
    before = tuple(b.clone() for b in cache.buffers)
    k2, v2 = _kv(B, H, 3, D, seed=1)
    with pytest.raises(CacheOverflowError, match=r"6 stored \+ 3 new = 9.*capacity is 8"):
        cache.update(0, k2, v2)
    assert isinstance(CacheOverflowError("x"), ValueError)
    assert cache.seq_len(0) == 6
    torch.testing.assert_close(cache.buffers[0], before[0], atol=0, rtol=0)
    torch.testing.assert_close(cache.buffers[1], before[1], atol=0, rtol=0)
    cache.update(0, k2[:, :, :2], v2[:, :, :2])  # exactly filling the capacity is fine
    assert cache.seq_len(0) == 8


def test_contiguous_nbytes_and_used_nbytes():
    cache = ContiguousKVCache(3, 2, 4, 8, capacity=10, v_head_dim=6, dtype=torch.float16)
    assert cache.nbytes == 3 * 2 * 4 * (8 + 6) * 10 * 2
    assert cache.used_nbytes == 0
    cache.update(0, *_kv(2, 4, 3, 8, 6, dtype=torch.float16))
    cache.update(2, *_kv(2, 4, 5, 8, 6, dtype=torch.float16))
    assert cache.used_nbytes == (3 + 5) * 2 * 4 * (8 + 6) * 2
    cache.reset()
    assert cache.used_nbytes == 0 and cache.seq_len(2) == 0
    assert cache.nbytes == 3 * 2 * 4 * 14 * 10 * 2  # allocation kept


def test_contiguous_crop_keeps_prefix():
    cache = ContiguousKVCache(2, 1, 1, 2, capacity=10)
    k, v = _kv(1, 1, 7, 2)
    cache.update(0, k, v)
    cache.update(1, k[:, :, :3], v[:, :, :3])
    cache.crop(5)
    assert (cache.seq_len(0), cache.seq_len(1)) == (5, 3)
    k2, v2 = _kv(1, 1, 1, 2, seed=3)
    k_all, _ = cache.update(0, k2, v2)
    torch.testing.assert_close(k_all, torch.cat([k[:, :, :5], k2], dim=2), atol=0, rtol=0)
    with pytest.raises(ValueError, match="max_length"):
        cache.crop(-1)


@pytest.mark.parametrize("bad, match", [
    (lambda k, v: (k[:1], v[:1]), r"k has shape \(1, 2, 3, 4\); expected \(2, 2, T, 4\)"),
    (lambda k, v: (k[:, :1], v[:, :1]), "expected"),
    (lambda k, v: (k[..., :3], v), r"k has shape \(2, 2, 3, 3\)"),
    (lambda k, v: (k, v[:, :, :2]), "k has 3 new tokens but v has 2"),
    (lambda k, v: (k[0], v[0]), "k must have 4 dimensions"),
])
def test_contiguous_bad_shapes(bad, match):
    cache = ContiguousKVCache(1, 2, 2, 4, capacity=8)
    k, v = _kv(2, 2, 3, 4)
    with pytest.raises(ValueError, match=match):
        cache.update(0, *bad(k, v))
    assert cache.seq_len(0) == 0


def test_contiguous_bad_dtype_layer_and_args():
    cache = ContiguousKVCache(2, 1, 1, 4, capacity=8)
    k, v = _kv(1, 1, 2, 4)
    with pytest.raises(TypeError, match="k has dtype torch.float64; this cache stores torch.float32"):
        cache.update(0, k.double(), v.double())
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        cache.update(0, k.numpy(), v)
    with pytest.raises(ValueError, match=r"layer_idx \(2\) must be in \[0, 2\)"):
        cache.update(2, k, v)
    with pytest.raises(TypeError, match="layer_idx must be an int"):
        cache.seq_len(True)
    with pytest.raises(ValueError, match=r"capacity \(0\) must be >= 1"):
        ContiguousKVCache(1, 1, 1, 4, capacity=0)
    with pytest.raises(ValueError, match=r"n_kv_heads \(0\) must be >= 1"):
        ContiguousKVCache(1, 1, 0, 4, capacity=4)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        ContiguousKVCache(1, 1, 1, 4, capacity=4, dtype="float16")
    with pytest.raises(ValueError, match="device"):
        ContiguousKVCache(1, 1, 1, 4, capacity=4, device="nonsense")


def test_contiguous_device_check_with_meta_tensors():
    cache = ContiguousKVCache(1, 1, 1, 4, capacity=4)
    k = torch.empty(1, 1, 1, 4, device="meta")
    with pytest.raises(ValueError, match="k is on meta; this cache lives on cpu"):
        cache.update(0, k, k)


# --- LatentKVCache -----------------------------------------------------------------------
def test_latent_cache_stores_latent_and_rope_key():
    B, r, dr = 2, 16, 4
    cache = LatentKVCache(2, B, r, dr, capacity=9)
    assert cache.elements_per_token_per_layer == r + dr
    g = torch.Generator().manual_seed(0)
    c1, p1 = torch.randn(B, 7, r, generator=g), torch.randn(B, 7, dr, generator=g)
    c2, p2 = torch.randn(B, 1, r, generator=g), torch.randn(B, 1, dr, generator=g)
    a1, b1 = cache.update(1, c1, p1)
    a2, b2 = cache.update(1, c2, p2)
    assert a2.shape == (B, 8, r) and b2.shape == (B, 8, dr)
    assert a2.data_ptr() == a1.data_ptr() and b2.data_ptr() == b1.data_ptr()
    torch.testing.assert_close(a2, torch.cat([c1, c2], 1), atol=0, rtol=0)
    torch.testing.assert_close(b2, torch.cat([p1, p2], 1), atol=0, rtol=0)
    assert cache.nbytes == 2 * B * (r + dr) * 9 * 4
    assert cache.used_nbytes == 8 * B * (r + dr) * 4
    with pytest.raises(CacheOverflowError, match="capacity is 9"):
        cache.update(1, c1[:, :2], p1[:, :2])
    torch.testing.assert_close(cache.get(1)[0], torch.cat([c1, c2], 1), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"c_kv has shape \(2, 1, 15\); expected \(2, T, 16\)"):
        cache.update(0, c2[..., :15], p2)
    with pytest.raises(ValueError, match="c_kv has 1 new tokens but k_rope has 7"):
        cache.update(0, c2, p1)


# --- StaticCrossCache --------------------------------------------------------------------
def test_static_cross_cache_set_once_and_reuse():
    cache = StaticCrossCache(2)
    k, v = _kv(2, 3, 11, 4, 5)
    assert not cache.is_set(0) and cache.nbytes == 0 and cache.seq_len(0) == 0
    k0, v0 = cache.update(0, k, v)  # first call stores
    assert cache.is_set(0) and not cache.is_set(1)
    for _ in range(3):  # every decode step reads the same tensors
        k_s, v_s = cache.update(0)
        assert k_s.data_ptr() == k0.data_ptr() and v_s.data_ptr() == v0.data_ptr()
    torch.testing.assert_close(cache.get(0)[1], v, atol=0, rtol=0)
    assert cache.seq_len(0) == 11 and cache.capacity == 11
    torch.testing.assert_close(cache.kv_positions(0), torch.arange(11))
    assert cache.nbytes == 2 * 3 * 11 * (4 + 5) * 4
    cache.set(1, k, v)
    assert cache.nbytes == 2 * 2 * 3 * 11 * 9 * 4
    with pytest.raises(ValueError, match="already set"):
        cache.set(0, k, v)
    with pytest.raises(ValueError, match="already set"):
        cache.update(0, k, v)
    with pytest.raises(ValueError, match="both be given"):
        cache.update(1, k, None)
    cache.reset()
    assert cache.nbytes == 0 and not cache.is_set(0)
    with pytest.raises(ValueError, match="not set"):
        cache.get(0)


def test_static_cross_cache_bad_input():
    cache = StaticCrossCache(1, capacity=8)
    k, v = _kv(1, 2, 9, 4)
    with pytest.raises(CacheOverflowError, match=r"encoder length \(9\) exceeds capacity \(8\)"):
        cache.set(0, k, v)
    assert not cache.is_set(0)
    with pytest.raises(ValueError, match="must agree"):
        cache.set(0, k[:, :, :4], v[:, :, :5])
    with pytest.raises(TypeError, match="expected one dtype"):
        cache.set(0, k[:, :, :4], v[:, :, :4].double())


# --- CacheStack of mixed kinds -----------------------------------------------------------
def test_cache_stack_mixed_kinds_sums_bytes():
    stack = CacheStack([ContiguousKVCache(1, 1, 2, 4, capacity=6),
                        LatentKVCache(1, 1, 8, 2, capacity=6),
                        ContiguousKVCache(1, 1, 1, 4, capacity=3)])
    assert isinstance(stack, KVCache)
    assert stack.nbytes == (2 * 2 * 4 * 6 + 10 * 6 + 2 * 1 * 4 * 3) * 4
    assert stack.capacity == 3
    k, v = _kv(1, 2, 2, 4)
    stack.update(0, k, v)
    stack.update(1, torch.randn(1, 2, 8), torch.randn(1, 2, 2))
    assert stack.seq_len(0) == stack.seq_len(1) == 2 and stack.seq_len(2) == 0
    assert stack.used_nbytes == (2 * 2 * 4 * 2 + 10 * 2) * 4


def test_slab_cache_reprs_show_geometry_and_bytes():
    assert repr(ContiguousKVCache(2, 1, 2, 8, 4, v_head_dim=6)) == (
        "ContiguousKVCache(n_layers=2, batch=1, n_kv_heads=2, head_dim=8, v_head_dim=6, "
        "capacity=4, dtype=torch.float32, device=cpu, nbytes=896)")  # 2·1·2·(8+6)·4·4 bytes
    assert repr(LatentKVCache(1, 1, 16, 4, 3)) == (
        "LatentKVCache(n_layers=1, batch=1, kv_lora_rank=16, qk_rope_head_dim=4, capacity=3, "
        "dtype=torch.float32, device=cpu, nbytes=240)")  # 1·1·(16+4)·3·4 bytes


def test_stack_refuses_before_any_layer_writes():
    """Layers of different capacities: a step that overflows layer 2 leaves layers 0 and 1
    untouched (TinyLM calls check_append before its first layer)."""
    from attnlab.layers.attention import AttentionSpec
    from attnlab.models import ModelConfig, TinyLM

    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=11, d_model=16, n_layers=3,
                               mixers=AttentionSpec(2), max_seq_len=64))
    stack = CacheStack([ContiguousKVCache(1, 1, 2, 8, capacity=c) for c in (10, 10, 6)])
    model(torch.zeros(1, 5, dtype=torch.long), stack)
    before = [stack.layer(i).update(0, *_kv(1, 2, 0, 8))[0].clone() for i in range(3)]
    with pytest.raises(CacheOverflowError, match="layer 2 of the stack"):
        model(torch.zeros(1, 2, dtype=torch.long), stack)
    assert [stack.seq_len(i) for i in range(3)] == [5, 5, 5]
    for i in range(3):
        torch.testing.assert_close(stack.layer(i).update(0, *_kv(1, 2, 0, 8))[0], before[i])
    model(torch.zeros(1, 1, dtype=torch.long), stack)  # one more still fits everywhere
    assert [stack.seq_len(i) for i in range(3)] == [6, 6, 6]
    with pytest.raises(TypeError, match="n_tokens"):
        stack.check_append(1.5)
    with pytest.raises(ValueError, match="n_tokens"):
        stack.check_append(-1)
    stack.check_append(0)
