"""Multi-head Latent Attention (DeepSeek-V2): explicit-formula reference, absorbed == naive
(conventions §5), parallel == cached decode, the latent cache's size, and that the absorbed path
never forms per-head K/V for the history."""
import math

import pytest
import torch

import attnlab.layers.mla as mla_module
from attnlab.cache import LatentKVCache
from attnlab.layers import MLASpec, MultiLatentAttention

D_MODEL = 32
SMALL = {"n_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
         "v_head_dim": 6}


def make(q_lora_rank=None, absorb=False, backend="auto", seed=0) -> MultiLatentAttention:
    torch.manual_seed(seed)
    m = MultiLatentAttention(D_MODEL, MLASpec(**SMALL, q_lora_rank=q_lora_rank, backend=backend),
                             absorb=absorb)
    with torch.no_grad():  # non-trivial RMSNorm gains so the norms are exercised
        for mod in m.modules():
            if isinstance(mod, torch.nn.RMSNorm):
                mod.weight.uniform_(0.5, 1.5)
    return m


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def hf_style_rope(t, pos, base):
    """DeepSeek-V2 as in HF transformers: de-interleave the pairs, then rotate_half RoPE."""
    d = t.shape[-1]
    t = t.view(*t.shape[:-1], d // 2, 2).transpose(-1, -2).reshape(t.shape)
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos.double()[:, None] * inv  # (N, d/2)
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().float(), emb.sin().float()
    rot = torch.cat([-t[..., d // 2:], t[..., : d // 2]], -1)
    return t * cos + rot * sin


def explicit_mla(m: MultiLatentAttention, x):
    """DeepSeek-V2 §2.1 written out per head from the module's weights."""
    s = m.spec
    B, N, _ = x.shape
    H, r, dn, dr, dv = s.n_heads, s.kv_lora_rank, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim
    if s.q_lora_rank is None:
        q = x @ m.q_proj.weight.T
    else:
        c_q = rms(x @ m.q_a_proj.weight.T, m.q_a_layernorm.weight, s.norm_eps)
        q = c_q @ m.q_b_proj.weight.T
    q = q.view(B, N, H, dn + dr)
    a = x @ m.kv_a_proj_with_mqa.weight.T  # (B, N, r + dr)
    c_kv = rms(a[..., :r], m.kv_a_layernorm.weight, s.norm_eps)
    pos = torch.arange(N)
    k_r = hf_style_rope(a[..., r:], pos, s.rope_base)  # (B, N, dr): one key for all heads
    kv = (c_kv @ m.kv_b_proj.weight.T).view(B, N, H, dn + dv)
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    heads = []
    for h in range(H):
        q_c, q_r = q[:, :, h, :dn], hf_style_rope(q[:, :, h, dn:], pos, s.rope_base)
        k_c, v_c = kv[:, :, h, :dn], kv[:, :, h, dn:]
        score = (q_c @ k_c.transpose(1, 2) + q_r @ k_r.transpose(1, 2)) / math.sqrt(dn + dr)
        heads.append(torch.softmax(score.masked_fill(~causal, float("-inf")), -1) @ v_c)
    return torch.cat(heads, -1) @ m.o_proj.weight.T


@pytest.mark.parametrize("q_lora_rank", [None, 12])
@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("N", [1, 7, 20])
def test_matches_explicit_deepseek_formulas(q_lora_rank, absorb, backend, N):
    m = make(q_lora_rank, absorb, backend)
    x = torch.randn(2, N, D_MODEL)
    torch.testing.assert_close(m(x), explicit_mla(m, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("q_lora_rank", [None, 12])
@pytest.mark.parametrize("N", [1, 7, 63])
def test_absorbed_equals_naive_outputs_and_gradients(q_lora_rank, N):
    naive = make(q_lora_rank, absorb=False)
    absorbed = make(q_lora_rank, absorb=True)
    absorbed.load_state_dict(naive.state_dict())
    x = torch.randn(3, N, D_MODEL, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_n, out_a = naive(x), absorbed(x2)
    torch.testing.assert_close(out_a, out_n, atol=1e-5, rtol=1e-4)
    out_n.square().sum().backward()
    out_a.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-4)
    for (name, p1), (_, p2) in zip(naive.named_parameters(), absorbed.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("absorb", [False, True, "auto"])
@pytest.mark.parametrize("prefix,chunk", [(0, 1), (6, 1), (5, 4), (11, 1)])
def test_parallel_equals_cached_decode(absorb, prefix, chunk):
    m = make(12, absorb)
    N = 11
    x = torch.randn(2, N, D_MODEL)
    cache = m.new_cache(2, N)
    parts = [m(x[:, :prefix], cache)] if prefix else []
    parts += [m(x[:, t:t + chunk], cache) for t in range(prefix, N, chunk)]
    torch.testing.assert_close(torch.cat(parts, 1), m(x), atol=1e-5, rtol=1e-4)
    assert cache.seq_len(0) == N


def test_absorbed_decode_equals_naive_decode_from_one_cache():
    """Fill the latent cache with the naive path, continue decoding with both paths."""
    m = make(None, absorb=False)
    x = torch.randn(2, 9, D_MODEL)
    cache = m.new_cache(2, 10)
    m(x[:, :8], cache)
    step = torch.randn(2, 1, D_MODEL)
    naive_out = m(step, cache)
    cache.crop(8)
    m.absorb = True
    torch.testing.assert_close(m(step, cache), naive_out, atol=1e-5, rtol=1e-4)


def _trace(monkeypatch, m: MultiLatentAttention):
    """Count kv_b_proj calls, per-head K/V hook calls, and the head count of every K that
    reaches attention."""
    seen = {"kv_b_proj": 0, "hook_k": 0, "hook_v": 0, "k_heads": []}
    orig_fwd = m.kv_b_proj.forward

    def counting_fwd(t):
        seen["kv_b_proj"] += 1
        return orig_fwd(t)

    monkeypatch.setattr(m.kv_b_proj, "forward", counting_fwd)
    m.hook_k.register_forward_hook(lambda *a: seen.__setitem__("hook_k", seen["hook_k"] + 1))
    m.hook_v.register_forward_hook(lambda *a: seen.__setitem__("hook_v", seen["hook_v"] + 1))
    orig_attn = mla_module.attention

    def recording_attention(q, k, v, **kw):
        seen["k_heads"].append(k.shape[1])
        return orig_attn(q, k, v, **kw)

    monkeypatch.setattr(mla_module, "attention", recording_attention)
    return seen


@pytest.mark.parametrize("absorb", [False, True])
def test_absorbed_path_never_materialises_per_head_kv(monkeypatch, absorb):
    m = make(12, absorb)
    seen = _trace(monkeypatch, m)
    x = torch.randn(2, 7, D_MODEL)
    cache = m.new_cache(2, 7)
    m(x[:, :3], cache)
    for t in range(3, 7):
        m(x[:, t:t + 1], cache)
    if absorb:  # attention read one shared latent "head" (B, 1, L, r + dr) at every call
        assert seen["kv_b_proj"] == seen["hook_k"] == seen["hook_v"] == 0
        assert seen["k_heads"] == [1] * 5
    else:  # the naive path does up-project: the probe detects it
        assert seen["kv_b_proj"] == seen["hook_k"] == seen["hook_v"] == 5
        assert seen["k_heads"] == [SMALL["n_heads"]] * 5


def test_auto_takes_naive_for_prefill_and_absorbed_for_decode(monkeypatch):
    m = make(12, absorb="auto")
    seen = _trace(monkeypatch, m)
    cache = m.new_cache(2, 40)
    x = torch.randn(2, 40, D_MODEL)
    m(x[:, :32], cache)  # prefill: 32 queries over 32 keys
    assert seen["kv_b_proj"] == 1 and seen["k_heads"] == [SMALL["n_heads"]]
    m(x[:, 32:33], cache)  # decode step
    assert seen["kv_b_proj"] == 1 and seen["k_heads"][-1] == 1
    # DeepSeek-V2 sizes (docs/sources.md): absorbed is cheaper below 164 new tokens at L = 4096
    naive, absorbed = mla_module.mla_path_flops(128, 1, 4096, 512, 128, 64, 128)
    assert absorbed * 100 < naive
    for n_new, absorbed_wins in [(163, True), (164, False), (4096, False)]:
        naive, absorbed = mla_module.mla_path_flops(128, n_new, 4096, 512, 128, 64, 128)
        assert (absorbed < naive) == absorbed_wins, n_new


def test_cache_holds_only_latent_and_rope_key():
    # DeepSeek-V2 latent sizes (kv_lora_rank 512, qk_rope 64; docs/sources.md, report §2.1), 2 heads
    spec = MLASpec(n_heads=2, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                   v_head_dim=128, q_lora_rank=1536)
    m = MultiLatentAttention(64, spec)
    assert m.kv_bytes_per_token(2) == 576 * 2  # 576 elements/token/layer in fp16
    cache = m.new_cache(batch=3, capacity=5)
    assert isinstance(cache, LatentKVCache)
    assert cache.nbytes == 3 * 5 * m.kv_bytes_per_token(4)
    seen = {}
    m.hook_latent.register_forward_hook(lambda mod, i, o: seen.__setitem__("c", o))
    m(torch.randn(3, 4, 64), cache)
    c_kv, k_r = cache.get(0)
    assert c_kv.shape == (3, 4, 512) and k_r.shape == (3, 4, 64)
    torch.testing.assert_close(seen["c"], c_kv)
    # 60 layers of DeepSeek-V2 at fp16: 67.5 KiB per token (docs/sources.md table)
    assert 60 * m.kv_bytes_per_token(2) == 67.5 * 1024


def test_spec_and_input_validation():
    with pytest.raises(ValueError, match=r"qk_rope_head_dim \(5\) must be even"):
        MLASpec(**{**SMALL, "qk_rope_head_dim": 5})
    with pytest.raises(ValueError, match=r"q_lora_rank \(0\) must be >= 1"):
        MLASpec(**SMALL, q_lora_rank=0)
    with pytest.raises(ValueError, match=r"backend \('nope'\) must be 'auto' or one of"):
        MLASpec(**SMALL, backend="nope")
    with pytest.raises(ValueError, match=r"absorb \('yes'\) must be False, True or 'auto'"):
        MLASpec(**SMALL, absorb="yes")
    with pytest.raises(ValueError, match=r"absorb \(1\) must be False, True or 'auto'"):
        MultiLatentAttention(D_MODEL, MLASpec(**SMALL), absorb=1)
    with pytest.raises(TypeError, match=r"spec must be an MLASpec, got dict"):
        MultiLatentAttention(D_MODEL, SMALL)
    spec = MLASpec(**SMALL)
    assert spec.qk_head_dim == 12
    m = spec.build(D_MODEL, layer_idx=2)
    assert m.layer_idx == 2 and m.absorb is False
    with pytest.raises(ValueError, match=r"x last dimension \(8\) must equal d_model \(32\)"):
        m(torch.randn(1, 3, 8))
    with pytest.raises(TypeError, match=r"x has dtype torch.float64"):
        m(torch.randn(1, 3, D_MODEL, dtype=torch.float64))
