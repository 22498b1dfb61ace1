"""Quantized KV caches: packing round trip, attention-output error vs an fp32 cache
within stated bounds, error ordered by bits, exact residual window, per-channel keys
isolate outlier channels, memory saved, bad input."""
import pytest
import torch

from attnlab.cache.base import CacheOverflowError, CacheStack
from attnlab.cache.contiguous import ContiguousKVCache
from attnlab.cache.quantized import (
    Int8KVCache,
    KIVICache,
    attention_error,
    pack,
    quantize_asymmetric,
    unpack,
)
from attnlab.grill.answers._tiny import tiny_lm

B, H, L, D = 2, 2, 300, 64


def data(seed=0, n=L):
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(B, H, n, D, generator=g), torch.randn(B, H, n, D, generator=g)
    q = torch.randn(B, 4, 3, D, generator=g)
    return k, v, q


@pytest.mark.parametrize("bits", [2, 4])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 2 ** bits, (3, 5, 16), dtype=torch.uint8)
    p = pack(codes, bits)
    assert p.shape == (3, 5, 16 * bits // 8)
    assert torch.equal(unpack(p, bits), codes)


def test_errors_within_bounds_and_ordered_by_bits():
    """Bounds (unit Gaussian K/V, D = 64, L = 300, 3 queries): int8 per-token ≤ 1e-2 (the
    issue's target); KIVI 4-bit ≤ 0.2 and 2-bit ≤ 0.9 with no residual; fewer bits, more error
    (the quantization step doubles per bit removed)."""
    k, v, q = data()
    e8 = attention_error(Int8KVCache(1, B, H, D, L), k, v, q)
    e4 = attention_error(KIVICache(1, B, H, D, L, bits=4, group_size=32, residual=0), k, v, q)
    e2 = attention_error(KIVICache(1, B, H, D, L, bits=2, group_size=32, residual=0), k, v, q)
    assert e8 <= 1e-2
    assert e4 <= 0.2 and e2 <= 0.9
    assert e8 < e4 < e2


def test_residual_window_is_exact_and_lowers_error():
    k, v, q = data(1)
    c = KIVICache(1, B, H, D, L, bits=2, group_size=32, residual=64)
    for t in range(0, L, 7):  # odd append sizes
        kk, vv = c.update(0, k[:, :, t:t + 7], v[:, :, t:t + 7])
    n_res = L - c._nq[0]
    assert 64 <= n_res < 64 + 32 and c._nq[0] % 32 == 0
    torch.testing.assert_close(kk[:, :, -n_res:], k[:, :, -n_res:], atol=0, rtol=0)
    torch.testing.assert_close(vv[:, :, -n_res:], v[:, :, -n_res:], atol=0, rtol=0)
    short = KIVICache(1, B, H, D, L, bits=2, group_size=32, residual=128)
    kk, vv = short.update(0, k[:, :, :100], v[:, :, :100])  # all within the residual
    assert torch.equal(kk, k[:, :, :100]) and torch.equal(vv, v[:, :, :100])
    e_res = attention_error(KIVICache(1, B, H, D, L, bits=2, residual=128), k, v, q)
    e_nores = attention_error(KIVICache(1, B, H, D, L, bits=2, residual=0), k, v, q)
    assert e_res < e_nores


def test_per_channel_keys_isolate_an_outlier_channel():
    """KIVI's reason for per-channel keys: one large channel does not blur the others."""
    g = torch.Generator().manual_seed(2)
    k = torch.randn(1, 1, 64, D, generator=g)
    k[..., 5] *= 100.0  # an outlier channel, as observed in real keys (KIVI §3)
    codes, s, z = quantize_asymmetric(k.view(1, 1, 2, 32, D), 4, dim=-2)  # per channel
    per_channel = (codes.float() * s.float() + z.float()).view_as(k)
    codes_t, s_t, z_t = quantize_asymmetric(k, 4, dim=-1)  # per token, for contrast
    per_token = codes_t.float() * s_t.float() + z_t.float()
    others = [c for c in range(D) if c != 5]
    err_c = (per_channel - k)[..., others].abs().mean()
    err_t = (per_token - k)[..., others].abs().mean()
    assert err_c * 10 < err_t


def test_memory_saved():
    fp32 = ContiguousKVCache(1, B, H, D, 1024)
    int8 = Int8KVCache(1, B, H, D, 1024)
    # int8 codes + one fp16 scale per token and head: 4·D / (D + 2) = 3.88× at D = 64
    assert fp32.nbytes / int8.nbytes == pytest.approx(4 * D / (D + 2))
    k2 = KIVICache(1, B, H, D, 1024, bits=2, group_size=32, residual=128)
    assert fp32.nbytes / k2.nbytes > 3.5
    assert KIVICache(1, B, H, D, 1024, bits=2, residual=0).nbytes < \
        KIVICache(1, B, H, D, 1024, bits=4, residual=0).nbytes < int8.nbytes


def test_tiny_lm_runs_on_quantized_caches():
    m = tiny_lm(seed=0)
    toks = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = m(toks)
    for make, tol in ((lambda: Int8KVCache(1, 2, 2, 16, 64), 2e-2),
                      (lambda: KIVICache(1, 2, 2, 16, 64, bits=4, group_size=8, residual=8), 2e-1)):
        cache = CacheStack([make() for _ in range(2)])
        with torch.no_grad():
            out = torch.cat([m(toks[:, :25], cache), m(toks[:, 25:], cache)], 1)
        rel = float((out - exact).norm() / exact.norm())
        assert rel < tol


def test_bad_input():
    with pytest.raises(ValueError, match="divisible by group_size"):
        KIVICache(1, 1, 1, 48, 64, group_size=32)
    with pytest.raises(ValueError, match="bits"):
        KIVICache(1, 1, 1, 64, 64, bits=3)
    c = Int8KVCache(1, 1, 1, 8, 4)
    with pytest.raises(CacheOverflowError):
        c.update(0, torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8))
    with pytest.raises(ValueError, match="shape"):
        c.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    assert c.seq_len(0) == 0
