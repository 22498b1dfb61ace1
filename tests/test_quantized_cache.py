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
    # int8 codes + one float32 scale per token and head: 4·D / (D + 4) = 3.76× at D = 64
    assert fp32.nbytes / int8.nbytes == pytest.approx(4 * D / (D + 4))
    k2 = KIVICache(1, B, H, D, 1024, bits=2, group_size=32, residual=128)
    # per token: 2-bit codes of K and V (D/4 bytes each) + float32 scale and zero of K per
    # channel per 32-token group and of V per 32-channel group per token; plus a float32
    # residual window of 128 + 2·32 tokens
    G, cap, win = 32, 1024, 128 + 2 * 32
    per_token = 2 * D // 4 + 2 * 4 * D // G + 2 * 4 * D // G
    assert k2.nbytes == B * H * (cap * per_token + win * 2 * D * 4)
    assert fp32.nbytes / k2.nbytes == pytest.approx(3.2)
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


# --- range, non-finite locality, dtype/device (regressions of fp16 scales) -----------------

@pytest.mark.parametrize("mag", [1e-8, 1e-4, 1.0, 7e4, 8.4e6, 1e8])
def test_int8_keeps_relative_precision_over_magnitudes(mag):
    """fp16 scales overflowed above ~8.3e6 (whole row NaN) and flushed rows below ~7.6e-6
    to 0; float32 scales keep every magnitude to 1/254 of the row's max."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 5, 16, generator=g) * mag
    c = Int8KVCache(1, 1, 2, 16, 8)
    kk, _ = c.update(0, k, k)
    err = (kk - k).abs().amax(-1) / k.abs().amax(-1)
    assert torch.isfinite(kk).all() and (err <= 0.5 / 127 + 1e-6).all()


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("mag", [1e-8, 1.0, 7e4, 1e8])
def test_kivi_keeps_relative_precision_over_magnitudes(bits, mag):
    """fp16 scale and zero point turned 7e4 into NaN; float32 keeps the range."""
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, 1, 64, 32, generator=g) * mag
    c = KIVICache(1, 1, 1, 32, 64, bits=bits, group_size=16, residual=0)
    kk, vv = c.update(0, k, k)
    assert torch.isfinite(kk).all() and torch.isfinite(vv).all()
    spread = k.amax() - k.amin()
    assert (kk - k).abs().amax() <= spread / (2 ** bits - 1)


def test_int8_non_finite_entries_stay_local():
    k = torch.randn(1, 1, 3, 8)
    k[0, 0, 1, 2] = float("nan")
    k[0, 0, 1, 5] = float("inf")
    k[0, 0, 2, 0] = float("-inf")
    c = Int8KVCache(1, 1, 1, 8, 4)
    kk, _ = c.update(0, k, k.clone())
    bad = ~torch.isfinite(k)
    assert torch.isfinite(kk[~bad]).all()  # the rest of each row is intact
    assert torch.isnan(kk[0, 0, 1, 2]) and kk[0, 0, 1, 5] == float("inf") and \
        kk[0, 0, 2, 0] == float("-inf")
    ok = ~bad
    assert ((kk - k)[ok].abs() <= k[ok].abs().amax() / 254 + 1e-6).all()
    kk2, _ = c.update(0, torch.ones(1, 1, 1, 8), torch.ones(1, 1, 1, 8))  # later read keeps them
    assert torch.isnan(kk2[0, 0, 1, 2]) and kk2[0, 0, 2, 0] == float("-inf")
    c.reset()
    kk3, _ = c.update(0, torch.ones(1, 1, 3, 8), torch.ones(1, 1, 3, 8))
    assert torch.isfinite(kk3).all()  # reset forgets the side table


def test_kivi_non_finite_entries_stay_local():
    g = torch.Generator().manual_seed(2)
    k = torch.randn(1, 1, 32, 16, generator=g)
    k[0, 0, 3, 4] = float("nan")
    v = k.clone()
    v[0, 0, 3, 4] = float("inf")
    c = KIVICache(1, 1, 1, 16, 32, bits=4, group_size=16, residual=0)
    kk, vv = c.update(0, k, v)
    assert torch.isnan(kk[0, 0, 3, 4]) and vv[0, 0, 3, 4] == float("inf")
    mask = torch.ones_like(k, dtype=torch.bool)
    mask[0, 0, 3, 4] = False
    assert torch.isfinite(kk[mask]).all() and torch.isfinite(vv[mask]).all()


@pytest.mark.parametrize("make", [lambda: Int8KVCache(1, 1, 1, 8, 4),
                                  lambda: KIVICache(1, 1, 1, 8, 16, group_size=8)])
def test_quantized_caches_check_dtype_and_device(make):
    c = make()
    with pytest.raises(TypeError, match="floating"):
        c.update(0, torch.ones(1, 1, 1, 8, dtype=torch.int32), torch.ones(1, 1, 1, 8))
    with pytest.raises(TypeError, match="dtype"):
        c.update(0, torch.ones(1, 1, 1, 8, dtype=torch.float64), torch.ones(1, 1, 1, 8))
    with pytest.raises(ValueError, match="device"):
        c.update(0, torch.ones(1, 1, 1, 8, device="meta"), torch.ones(1, 1, 1, 8))
    assert c.seq_len(0) == 0  # nothing was written
