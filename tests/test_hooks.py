"""run_with_cache: captured q/k/v/head_out and implied attention matrices reproduce outputs."""
import pytest
import torch

from attnlab.analysis.hooks import hf_patterns, repeat_kv, run_with_cache
from attnlab.layers.attention import AttentionSpec
from attnlab.layers.linear_attention import LinearAttentionSpec, PerformerSpec
from attnlab.layers.mla import MLASpec
from attnlab.layers.rwkv import RWKVSpec
from attnlab.layers.ssd import SSDSpec
from attnlab.models import ModelConfig, TinyLM


def lm(spec, n_layers=2, d_model=32, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=37, d_model=d_model, n_layers=n_layers, mixers=spec,
                      max_seq_len=256, init_std=0.2)
    return TinyLM(cfg).eval()


def toks(B, N, seed=1):
    return torch.randint(0, 37, (B, N), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", [AttentionSpec(4), AttentionSpec(4, 2), AttentionSpec(4, 1),
                                  AttentionSpec(4, 2, window=3)], ids=["mha", "gqa", "mqa", "swa"])
@pytest.mark.parametrize("N", [1, 7, 63])
def test_softmax_pattern_reproduces_head_out(spec, N):
    model = lm(spec)
    t = toks(2, N)
    cache = run_with_cache(model, t)
    torch.testing.assert_close(cache.logits, model(t))  # recording changes nothing
    for i in (0, 1):
        a = cache.layers[i]
        assert a.pattern.shape == (2, 4, N, N)
        torch.testing.assert_close(a.pattern.sum(-1), torch.ones(2, 4, N))
        assert float(a.pattern.triu(1).abs().max()) == 0.0
        if spec.window:
            assert float(a.pattern.tril(-spec.window).abs().max()) == 0.0
        torch.testing.assert_close(a.pattern @ a.v, a.head_out, atol=1e-5, rtol=1e-4)
    assert cache["pattern", 1] is cache.layers[1].pattern
    assert cache.patterns().shape == (2, 2, 4, N, N)


def test_gqa_k_repeated_by_group():
    model = lm(AttentionSpec(4, 2))
    a = run_with_cache(model, toks(1, 5)).layers[0]
    torch.testing.assert_close(a.k[:, 0], a.k[:, 1])  # heads 0, 1 share KV head 0
    torch.testing.assert_close(a.k[:, 2], a.k[:, 3])
    assert not torch.allclose(a.k[:, 1], a.k[:, 2])


@pytest.mark.parametrize("absorb", [False, True])
def test_mla_pattern_either_path(absorb):
    spec = MLASpec(n_heads=4, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4,
                   v_head_dim=8, absorb=absorb)
    model = lm(spec)
    cache = run_with_cache(model, toks(2, 9))
    a = cache.layers[1]
    torch.testing.assert_close(a.pattern @ a.v, a.head_out, atol=1e-5, rtol=1e-4)
    assert model.blocks[1].mixer.absorb is absorb  # restored


@pytest.mark.parametrize("spec", [LinearAttentionSpec(4, 2), PerformerSpec(4, n_features=16)],
                         ids=["linear", "performer"])
@pytest.mark.parametrize("N", [1, 7, 129])
def test_linear_implied_matrix_reproduces_output(spec, N):
    model = lm(spec)
    m = model.blocks[0].mixer
    x = torch.randn(2, N, 32, generator=torch.Generator().manual_seed(3))
    a = m.implied_attention(x)
    torch.testing.assert_close(a["pattern"] @ a["v"], a["out"])
    out = a["out"].transpose(1, 2).reshape(2, N, -1)  # (B, N, H·D)
    with torch.no_grad():
        torch.testing.assert_close(m.o_proj(out), m(x), atol=1e-5, rtol=1e-4)
    rows = a["pattern"].sum(-1)  # den / (den + eps): just under 1 (Performer features can be tiny)
    assert bool((rows <= 1 + 1e-6).all()) and bool((rows > 0.99).all())
    assert run_with_cache(model, toks(1, N)).layers[1].kind == "linear"


@pytest.mark.parametrize("N", [1, 7, 63])
def test_ssd_implied_matrix_reproduces_output(N):
    model = lm(SSDSpec(d_state=8, head_dim=16, n_groups=2, chunk_size=16))
    m = model.blocks[0].mixer
    x = torch.randn(2, N, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = m.implied_attention(x)
        z = m.in_proj(x)[..., :m.d_inner]
        ref = m(x)
        yy = a["out"].transpose(1, 2).reshape(2, N, m.d_inner)  # (B, N, d_inner)
        out = m.out_proj(m.norm(yy * torch.nn.functional.silu(z)))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert float(a["pattern"].triu(1).abs().max()) == 0.0
    assert run_with_cache(model, toks(1, N)).layers[0].kind == "ssd"


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("N", [1, 6, 33])
def test_rwkv_implied_matrix_reproduces_output(version, N):
    model = lm(RWKVSpec(n_heads=4, version=version, chunk_size=4))
    m = model.blocks[0].mixer
    H, D = 4, 8
    x = torch.randn(2, N, 32, generator=torch.Generator().manual_seed(5))
    imp = m.implied_attention(x)
    P = imp["pattern"]
    assert float(P.triu(1).abs().max()) == 0.0
    with torch.no_grad():
        if version == 6:
            assert P.shape == (2, H, N, N)
            out = P @ imp["v"]  # (B, H, N, D)
            r, _, _, _, mixed = m._projections(x, None)
            y = m.ln_x(out.transpose(1, 2).reshape(2 * N, 32)).view(2, N, 32)
            t = m.W_o(y * torch.nn.functional.silu(m.W["g"](mixed["g"])))
        else:  # one row-stochastic matrix per channel
            assert P.shape == (2, 32, N, N)
            torch.testing.assert_close(P.sum(-1), torch.ones(2, 32, N))
            out = (P @ imp["v"]).view(2, H, D, N).transpose(2, 3)  # (B, H, N, D)
            r = m._projections(x, None)[0]
            t = m.W_o((torch.sigmoid(r) * out).transpose(1, 2).reshape(2, N, 32))
        full = t + m._channel_mix(m.ln_cm(x + t), None)
        torch.testing.assert_close(full, m(x), atol=1e-5, rtol=1e-4)
    cache = run_with_cache(model, toks(1, N))
    assert cache.layers[1].kind == "rwkv"
    assert cache.layers[1].pattern.shape[1] == (H if version == 6 else 32)


def test_bad_layers():
    model = lm(AttentionSpec(4))
    with pytest.raises(ValueError, match=r"layer \(2\) does not exist"):
        run_with_cache(model, toks(1, 4), layers=[2])
    with pytest.raises(ValueError, match="layer"):
        run_with_cache(model, toks(1, 4), layers=[-1])
    with pytest.raises(TypeError, match="blocks"):
        run_with_cache(torch.nn.Linear(2, 2), toks(1, 4))
    cache = run_with_cache(model, toks(1, 4), layers=[1])
    with pytest.raises(KeyError, match="layer 0 was not recorded"):
        cache["pattern", 0]


def test_repeat_kv_grouping():
    x = torch.arange(2.).view(1, 2, 1, 1)
    assert repeat_kv(x, 4).flatten().tolist() == [0, 0, 1, 1]


def test_hf_gpt2_patterns():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    p = hf_patterns(model, toks(2, 9))
    assert p.shape == (2, 2, 4, 9, 9)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 4, 9))
    assert float(p.triu(1).max()) == 0.0
