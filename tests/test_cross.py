"""CrossAttention: explicit reference, padding mask, K/V projected once per request and
reused at every decode step (counted), cached decode == parallel decoder pass."""
import math

import pytest
import torch
from torch import nn

from attnlab.cache import ContiguousKVCache, StaticCrossCache
from attnlab.layers import Attention, CrossAttention

D_MODEL, D_ENC = 32, 24


def explicit_cross(m: CrossAttention, x, enc, enc_mask=None):
    B, N, _ = x.shape
    S = enc.shape[1]
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim
    q = m.q_proj(x).view(B, N, H, D)
    k = m.k_proj(enc).view(B, S, Hkv, D)
    v = m.v_proj(enc).view(B, S, Hkv, D)
    heads = []
    for h in range(H):
        g = h // (H // Hkv)
        s = q[:, :, h] @ k[:, :, g].transpose(1, 2) / math.sqrt(D)  # (B, N, S)
        if enc_mask is not None:
            s = s.masked_fill(~enc_mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[:, :, g])
    return m.o_proj(torch.cat(heads, -1))


@pytest.mark.parametrize("Hkv", [4, 2, 1])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("N,S", [(1, 1), (7, 13), (5, 3)])
def test_matches_explicit_reference_with_padding(Hkv, backend, N, S):
    torch.manual_seed(0)
    m = CrossAttention(D_MODEL, 4, Hkv, d_encoder=D_ENC, bias=True, backend=backend)
    x, enc = torch.randn(2, N, D_MODEL), torch.randn(2, S, D_ENC)
    torch.testing.assert_close(m(x, enc), explicit_cross(m, x, enc), atol=1e-5, rtol=1e-4)
    mask = torch.ones(2, S, dtype=torch.bool)
    mask[1, S // 2 + 1:] = False  # second sequence padded
    out = m(x, enc, encoder_mask=mask)
    torch.testing.assert_close(out, explicit_cross(m, x, enc, mask), atol=1e-5, rtol=1e-4)
    enc2 = enc.clone()
    enc2[1, S // 2 + 1:] = 1e3  # padded positions must not matter
    torch.testing.assert_close(m(x, enc2, encoder_mask=mask), out, atol=1e-5, rtol=1e-4)


def test_gradients_match_explicit_reference():
    torch.manual_seed(4)
    m = CrossAttention(D_MODEL, 4, 2, d_encoder=D_ENC, bias=True, backend="sdpa")
    x = torch.randn(2, 6, D_MODEL, requires_grad=True)
    enc = torch.randn(2, 7, D_ENC, requires_grad=True)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False
    grads = []
    for fn in (lambda: m(x, enc, encoder_mask=mask), lambda: explicit_cross(m, x, enc, mask)):
        m.zero_grad()
        x.grad = enc.grad = None
        fn().square().sum().backward()
        grads.append([x.grad.clone(), enc.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fully_padded_sequence_gives_zero_head_outputs():
    """conventions §2: a row with no visible key returns 0 (never NaN)."""
    torch.manual_seed(3)
    m = CrossAttention(D_MODEL, 4, 2, d_encoder=D_ENC, bias=True)
    x, enc = torch.randn(2, 3, D_MODEL), torch.randn(2, 5, D_ENC)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0] = False
    seen = {}
    m.hook_head_out.register_forward_hook(lambda mod, i, o: seen.__setitem__("o", o))
    out = m(x, enc, encoder_mask=mask)
    assert torch.equal(seen["o"][0], torch.zeros(4, 3, 8))
    torch.testing.assert_close(out[0], m.o_proj.bias.expand(3, D_MODEL))
    torch.testing.assert_close(out[1], m(x[1:], enc[1:])[0], atol=1e-5, rtol=1e-4)


class TinyDecoder(nn.Module):
    """Pre-norm decoder blocks: causal self-attention then cross-attention."""

    def __init__(self, n_layers=2):
        super().__init__()
        self.selfs = nn.ModuleList(Attention(D_MODEL, 4, 2, layer_idx=i) for i in range(n_layers))
        self.cross = nn.ModuleList(CrossAttention(D_MODEL, 4, 2, d_encoder=D_ENC, layer_idx=i)
                                   for i in range(n_layers))

    def forward(self, x, enc, self_cache=None, cross_cache=None):
        for sa, ca in zip(self.selfs, self.cross):
            x = x + sa(x, self_cache)
            x = x + ca(x, enc, cross_cache)
        return x


def test_projects_encoder_kv_once_per_layer_per_request():
    torch.manual_seed(1)
    dec = TinyDecoder(n_layers=2)
    calls = {}
    for i, ca in enumerate(dec.cross):
        for name in ("k_proj", "v_proj"):
            calls[(i, name)] = 0
            getattr(ca, name).register_forward_hook(
                lambda *a, key=(i, name): calls.__setitem__(key, calls[key] + 1))
    B, S, N = 2, 9, 12
    x, enc = torch.randn(B, N, D_MODEL), torch.randn(B, S, D_ENC)
    full = dec(x, enc)  # parallel decoder pass: one projection per layer too
    assert set(calls.values()) == {1}

    for request in range(2):  # two requests through the same caches
        for key in calls:
            calls[key] = 0
        self_cache = ContiguousKVCache(2, B, 2, 8, N)
        cross_cache = StaticCrossCache(2)
        if request:
            enc = torch.randn(B, S, D_ENC)
            full = dec(x, enc)
            for key in calls:
                calls[key] = 0
        steps = [dec(x[:, :3], enc, self_cache, cross_cache)]
        steps += [dec(x[:, t:t + 1], enc, self_cache, cross_cache) for t in range(3, N)]
        assert set(calls.values()) == {1}, calls  # 10 calls per layer, 1 projection each
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
        assert cross_cache.nbytes == 2 * dec.cross[0].kv_bytes_per_encoder_token(4) * B * S


def test_cache_is_read_without_encoder_output_and_reset_between_requests():
    torch.manual_seed(2)
    m = CrossAttention(D_MODEL, 4, d_encoder=D_ENC)
    x, enc = torch.randn(2, 1, D_MODEL), torch.randn(2, 5, D_ENC)
    cache = m.new_cache(capacity=8)
    first = m(x, enc, cache)
    torch.testing.assert_close(m(x, None, cache), first)  # reads the stored K/V
    cache.reset()
    enc_b = torch.randn(2, 5, D_ENC)
    torch.testing.assert_close(m(x, enc_b, cache), m(x, enc_b))


def test_bad_input():
    m = CrossAttention(D_MODEL, 4, d_encoder=D_ENC)
    x = torch.randn(2, 3, D_MODEL)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        CrossAttention(D_MODEL, 4, 3)
    with pytest.raises(ValueError, match=r"encoder_out must be given"):
        m(x, None, m.new_cache())
    with pytest.raises(ValueError, match=r"encoder_out last dimension \(32\) must equal "
                                         r"d_model \(24\)"):
        m(x, torch.randn(2, 5, D_MODEL))
    with pytest.raises(ValueError, match=r"encoder_out batch \(3\) must equal x batch \(2\)"):
        m(x, torch.randn(3, 5, D_ENC))
    with pytest.raises(ValueError, match=r"encoder_mask shape \(2, 4\) must be"):
        m(x, torch.randn(2, 5, D_ENC), encoder_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"encoder_mask must be bool"):
        m(x, torch.randn(2, 5, D_ENC), encoder_mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match=r"cache must be a StaticCrossCache or None"):
        m(x, torch.randn(2, 5, D_ENC), ContiguousKVCache(1, 2, 4, 8, 4))
    with pytest.raises(ValueError, match=r"exceeds capacity \(4\)"):
        m(x, torch.randn(2, 5, D_ENC), m.new_cache(capacity=4))
