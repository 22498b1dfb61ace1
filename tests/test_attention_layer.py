"""Attention (MHA / GQA / MQA): against an explicit einsum reference, across backends,
with a cache (parallel == incremental), hooks, and bad input (conventions §5, §6)."""
import math

import pytest
import torch

from attnlab.layers import Attention, AttentionSpec, HookPoint, hook_points
from attnlab.ops.rope import apply_rope

D_MODEL = 32


def explicit_attention(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """The layer's math written out: per-head loop, dense scores, masked softmax."""
    B, N, _ = x.shape
    H, Hkv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q = layer.q_proj(x).view(B, N, H, D).transpose(1, 2)
    k = layer.k_proj(x).view(B, N, Hkv, D).transpose(1, 2)
    v = layer.v_proj(x).view(B, N, Hkv, D).transpose(1, 2)
    if layer.rope:
        pos = torch.arange(N)
        q = apply_rope(q, pos, base=layer.rope_base, interleaved=layer.rope_interleaved)
        k = apply_rope(k, pos, base=layer.rope_base, interleaved=layer.rope_interleaved)
    i = torch.arange(N).view(N, 1)
    j = torch.arange(N).view(1, N)
    allowed = torch.ones(N, N, dtype=torch.bool)
    if layer.causal:
        allowed &= j <= i
    if layer.window is not None:
        allowed &= (i - j) < layer.window
    heads = []
    for h in range(H):
        kv = h // (H // Hkv)  # conventions §1 grouping
        scale = 1 / math.sqrt(D) if layer.scale is None else layer.scale
        s = q[:, h] @ k[:, kv].transpose(-1, -2) * scale  # (B, N, N)
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        heads.append(p @ v[:, kv])  # (B, N, D)
    out = torch.stack(heads, dim=2).reshape(B, N, H * D)
    return layer.o_proj(out)


CONFIGS = [  # n_heads, n_kv_heads, extra kwargs
    (4, 4, {}),  # MHA
    (4, 2, {}),  # GQA
    (4, 1, {}),  # MQA
    (4, 2, {"window": 3}),
    (4, 2, {"rope": False, "bias": True}),
    (4, 4, {"causal": False}),
    (2, 1, {"rope_interleaved": True, "rope_base": 500.0, "head_dim": 6}),
    (4, 2, {"scale": 0.1, "head_dim": 16}),  # custom scale (e.g. Gemma-2's 1/sqrt(256))
]


@pytest.mark.parametrize("H,Hkv,kw", CONFIGS)
@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
@pytest.mark.parametrize("N", [1, 7, 63, 129])
def test_matches_explicit_reference(H, Hkv, kw, backend, N):
    torch.manual_seed(0)
    layer = Attention(D_MODEL, H, Hkv, backend=backend, **kw)
    x = torch.randn(2, N, D_MODEL)
    torch.testing.assert_close(layer(x), explicit_attention(layer, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("H,Hkv,kw", CONFIGS[:4])
def test_gradients_agree_across_backends(H, Hkv, kw):
    torch.manual_seed(1)
    ref = Attention(D_MODEL, H, Hkv, backend="reference", **kw)
    fast = Attention(D_MODEL, H, Hkv, backend="sdpa", **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, D_MODEL, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ref(x).square().sum().backward()
    fast(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-4)
    for (n, p1), (_, p2) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("H,Hkv,kw", [c for c in CONFIGS if c[2].get("causal", True)])
@pytest.mark.parametrize("prefix,chunk", [(0, 1), (5, 1), (4, 3), (13, 1)])
def test_parallel_equals_cached_decode(H, Hkv, kw, prefix, chunk):
    torch.manual_seed(2)
    N = 13
    layer = Attention(D_MODEL, H, Hkv, **kw)
    x = torch.randn(3, N, D_MODEL)
    full = layer(x)
    cache = layer.new_cache(3, N)
    parts = [layer(x[:, :prefix], cache)] if prefix else []
    parts += [layer(x[:, t:t + chunk], cache) for t in range(prefix, N, chunk)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    assert cache.seq_len(0) == N


def test_cache_bytes_match_kv_formula():
    for H, Hkv in [(4, 4), (4, 2), (4, 1)]:
        layer = Attention(D_MODEL, H, Hkv)
        cache = layer.new_cache(batch=3, capacity=10)
        assert layer.kv_bytes_per_token(4) == 2 * Hkv * (D_MODEL // H) * 4
        assert cache.nbytes == 3 * 10 * layer.kv_bytes_per_token(4)


def test_hooks_read_post_rope_keys_and_edit_head_outputs():
    torch.manual_seed(3)
    layer = Attention(D_MODEL, 4, 2)
    x = torch.randn(2, 6, D_MODEL)
    seen = {}
    handles = [getattr(layer, f"hook_{n}").register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in ("q", "k", "v", "head_out")]
    base = layer(x)
    for h in handles:
        h.remove()
    k_raw = layer.k_proj(x).view(2, 6, 2, 8).transpose(1, 2)
    torch.testing.assert_close(seen["k"], apply_rope(k_raw, torch.arange(6)))
    assert seen["q"].shape == (2, 4, 6, 8) and seen["v"].shape == (2, 2, 6, 8)
    assert seen["head_out"].shape == (2, 4, 6, 8)
    torch.testing.assert_close(layer.o_proj(seen["head_out"].transpose(1, 2).reshape(2, 6, 32)),
                               base)

    # ablating head 1 through the hook == zeroing its columns of the output projection
    def zero_head(m, i, o):
        o = o.clone()
        o[:, 1] = 0
        return o

    handle = layer.hook_head_out.register_forward_hook(zero_head)
    ablated = layer(x)
    handle.remove()
    with torch.no_grad():
        layer.o_proj.weight[:, 8:16] = 0
    torch.testing.assert_close(ablated, layer(x))
    assert set(hook_points(layer)) == {"hook_q", "hook_k", "hook_v", "hook_head_out"}
    assert all(isinstance(h, HookPoint) for h in hook_points(layer).values())


def test_spec_builds_layer():
    spec = AttentionSpec(n_heads=4, n_kv_heads=None, window=5, backend="reference")
    assert spec.n_kv_heads == 4
    layer = spec.build(D_MODEL, layer_idx=3)
    assert (layer.n_heads, layer.n_kv_heads, layer.head_dim, layer.window, layer.layer_idx,
            layer.backend) == (4, 4, 8, 5, 3, "reference")


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"n_heads \(12\) must be divisible by n_kv_heads \(5\)"):
        Attention(48, 12, 5)
    with pytest.raises(ValueError, match=r"n_heads \(12\) must be divisible by n_kv_heads \(5\)"):
        AttentionSpec(12, 5)
    with pytest.raises(ValueError, match=r"window \(0\) must be >= 1"):
        Attention(D_MODEL, 4, 2, window=0)
    with pytest.raises(ValueError, match=r"window \(0\) must be >= 1"):
        AttentionSpec(4, window=0)
    with pytest.raises(ValueError, match=r"backend \('flashy'\) must be 'auto' or one of"):
        Attention(D_MODEL, 4, backend="flashy")
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        Attention(30, 4)
    with pytest.raises(ValueError, match=r"head_dim \(5\) must be even when rope=True"):
        Attention(D_MODEL, 4, head_dim=5)
    with pytest.raises(ValueError, match=r"needs causal=True"):
        Attention(D_MODEL, 4, window=3, causal=False)
    with pytest.raises(TypeError, match=r"n_kv_heads must be an int"):
        Attention(D_MODEL, 4, 2.0)
    layer = Attention(D_MODEL, 4, 2)
    with pytest.raises(ValueError, match=r"x must have 3 dimensions, got shape \(5, 32\)"):
        layer(torch.randn(5, D_MODEL))
    with pytest.raises(ValueError, match=r"x last dimension \(31\) must equal d_model \(32\)"):
        layer(torch.randn(1, 5, 31))
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 .* expected torch.float32"):
        layer(torch.randn(1, 5, D_MODEL, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"cache must be a KVCache or None \(or an AttentionContext\), got dict"):
        layer(torch.randn(1, 5, D_MODEL), cache={})


def test_window_decode_reads_only_the_window_from_a_contiguous_cache(monkeypatch):
    import attnlab.layers.attention as attention_module

    lengths = []
    orig = attention_module.attention

    def recording(q, k, v, **kw):
        lengths.append(k.shape[2])
        return orig(q, k, v, **kw)

    monkeypatch.setattr(attention_module, "attention", recording)
    torch.manual_seed(5)
    layer = Attention(D_MODEL, 4, 2, window=3)
    x = torch.randn(2, 12, D_MODEL)
    cache = layer.new_cache(2, 12)
    out = torch.cat([layer(x[:, :5], cache)] + [layer(x[:, t:t + 1], cache) for t in range(5, 12)], 1)
    assert lengths[0] == 5 and lengths[1:] == [3] * 7  # W keys per decode step, not t + 1
    torch.testing.assert_close(out, explicit_attention(layer, x), atol=1e-5, rtol=1e-4)
