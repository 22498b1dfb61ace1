"""TinyLM: parallel forward == prefill + cached decode for every mixer kind (conventions §5),
generation, config validation."""
import pytest
import torch

from attnlab.cache import CacheStack, ContiguousKVCache, LatentKVCache
from attnlab.layers import AttentionSpec, MLASpec
from attnlab.models import ModelConfig, TinyLM, check_parallel_equals_decode, generate

VOCAB, D = 61, 32
MLA = {"n_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
       "v_head_dim": 8}
MIXERS = {
    "mha": AttentionSpec(n_heads=4),
    "gqa": AttentionSpec(n_heads=4, n_kv_heads=2),
    "mqa": AttentionSpec(n_heads=4, n_kv_heads=1),
    "window": AttentionSpec(n_heads=4, n_kv_heads=2, window=4),
    "mla": MLASpec(**MLA, q_lora_rank=12),
    "mla_absorbed": MLASpec(**MLA, absorb=True),
    "mla_auto": MLASpec(**MLA, q_lora_rank=12, absorb="auto"),
    "hybrid": [AttentionSpec(n_heads=4, n_kv_heads=2, window=3), MLASpec(**MLA, absorb=True),
               AttentionSpec(n_heads=4, n_kv_heads=1), MLASpec(**MLA, q_lora_rank=8)],
}


def make_model(mixers, mlp="swiglu", seed=0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    n_layers = len(mixers) if isinstance(mixers, list) else 2
    # init_std 0.2 makes logits far from uniform so a broken cache shows up clearly
    return TinyLM(ModelConfig(VOCAB, D, n_layers, mixers, mlp=mlp, d_ff=48, init_std=0.2, **kw))


def tokens(B, N, seed=1):
    return torch.randint(0, VOCAB, (B, N), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("B,N,prefix,chunk", [(2, 13, 5, 1), (3, 7, 0, 1), (1, 1, 0, 1),
                                               (2, 11, 4, 3), (2, 9, 9, 1)])
def test_parallel_equals_decode(kind, B, N, prefix, chunk):
    model = make_model(MIXERS[kind])
    diff = check_parallel_equals_decode(model, tokens(B, N), prefix, atol=1e-5, chunk=chunk)
    assert 0.0 <= diff <= 1e-5


@pytest.mark.parametrize("kind", list(MIXERS))
def test_parallel_equals_decode_to_rounding_in_float64(kind):
    """In float64 the two computations agree to ~1e-12: the fp32 gap is rounding only."""
    model = make_model(MIXERS[kind]).double()
    assert check_parallel_equals_decode(model, tokens(2, 12), 4, atol=1e-12, chunk=2) <= 1e-12


def test_gelu_mlp_and_untied_head_conform():
    model = make_model(MIXERS["gqa"], mlp="gelu", tie_embeddings=False)
    assert model.head is not None
    check_parallel_equals_decode(model, tokens(2, 10), 3)


def test_conformance_check_catches_a_leaky_mixer():
    """A bidirectional layer sees future tokens in the parallel pass: the check must fail."""
    model = make_model(MIXERS["mha"])
    model.blocks[1].mixer.causal = False
    model.blocks[1].mixer.mask = None
    with pytest.raises(AssertionError, match="parallel forward and cached decode differ"):
        check_parallel_equals_decode(model, tokens(2, 8), 2)


def test_new_cache_kinds_and_bytes():
    model = make_model(MIXERS["hybrid"])
    cache = model.new_cache(2, 16)
    assert isinstance(cache, CacheStack)
    kinds = [type(c) for c in cache.caches]
    assert kinds == [ContiguousKVCache, LatentKVCache, ContiguousKVCache, LatentKVCache]
    assert model.kv_bytes_per_token(4) == 4 * (2 * 2 * 8 + (16 + 4) + 2 * 1 * 8 + (16 + 4))
    assert cache.nbytes == 2 * 16 * model.kv_bytes_per_token(4)


def test_tied_head_uses_embedding_and_trains():
    model = make_model(MIXERS["gqa"])
    assert model.head is None
    x = tokens(2, 6)
    logits = model(x)
    assert logits.shape == (2, 6, VOCAB)
    torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x.reshape(-1)).backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize("kind", ["gqa", "mla_absorbed", "hybrid"])
def test_greedy_generation_equals_recomputing_without_cache(kind):
    model = make_model(MIXERS[kind]).eval()
    prompt = tokens(2, 5)
    out = generate(model, prompt, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_sampling_is_seeded():
    model = make_model(MIXERS["gqa"])
    prompt = tokens(3, 4)
    a = generate(model, prompt, 12, temperature=1.5, seed=7)
    b = generate(model, prompt, 12, temperature=1.5, seed=7)
    c = generate(model, prompt, 12, temperature=1.5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    top1 = generate(model, prompt, 5, temperature=1.0, top_k=1, seed=3)
    assert torch.equal(top1, generate(model, prompt, 5))  # top-1 sampling is greedy
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_config_derives_and_validates():
    cfg = ModelConfig(VOCAB, D, 3, AttentionSpec(4))
    assert cfg.d_ff == 4 * D and len(cfg.layer_specs) == 3
    with pytest.raises(ValueError, match=r"mixers has 2 specs but n_layers is 3"):
        ModelConfig(VOCAB, D, 3, [AttentionSpec(4)] * 2)
    with pytest.raises(TypeError, match=r"mixers\[1\] must be a mixer spec"):
        ModelConfig(VOCAB, D, 2, [AttentionSpec(4), "gqa"])
    with pytest.raises(ValueError, match=r"mlp \('relu'\) must be one of"):
        ModelConfig(VOCAB, D, 2, AttentionSpec(4), mlp="relu")
    with pytest.raises(ValueError, match=r"vocab_size \(0\) must be >= 1"):
        ModelConfig(0, D, 2, AttentionSpec(4))


def test_forward_and_generate_bad_input():
    model = make_model(MIXERS["gqa"], max_seq_len=10)
    with pytest.raises(TypeError, match=r"tokens must have dtype torch.long"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 61\), got range \[0, 61\]"):
        model(torch.tensor([[0, 61]]))
    with pytest.raises(ValueError, match=r"tokens must have 2 dimensions"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions up to 11 exceed max_seq_len \(10\)"):
        model(tokens(1, 11))
    with pytest.raises(ValueError, match=r"cache has 1 layers; expected n_layers \(2\)"):
        model(tokens(1, 3), ContiguousKVCache(1, 1, 2, 8, 8))
    cache = model.new_cache(1, 4)
    model(tokens(1, 4), cache)
    with pytest.raises(ValueError, match=r"capacity is 4"):
        model(tokens(1, 1), cache)
    with pytest.raises(ValueError, match=r"temperature \(-1.0\) must be >= 0"):
        generate(model, tokens(1, 3), 2, temperature=-1.0)
    with pytest.raises(ValueError, match=r"prefix_len \(9\) must be <= sequence length \(8\)"):
        check_parallel_equals_decode(model, tokens(1, 8), 9)


def test_residual_hooks_expose_and_edit_the_stream():
    model = make_model(MIXERS["hybrid"]).eval()
    x = tokens(2, 6)
    seen = {}
    for i, blk in enumerate(model.blocks):
        blk.hook_resid_post.register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(i, out))
    logits = model(x)
    assert len(seen) == 4 and seen[3].shape == (2, 6, D)
    torch.testing.assert_close(model.norm(seen[3]) @ model.embed.weight.T, logits)
    # removing layer 2's mixer output == a model whose layer 2 mixer returns zeros
    model.blocks[2].hook_mixer_out.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    edited = model(x)
    assert (edited - logits).abs().max() > 1e-4


def test_runs_under_bf16_autocast():
    """Layers accept autocast's per-op casting (their dtype check allows it there)."""
    model = make_model(MIXERS["hybrid"]).eval()
    x = tokens(2, 9)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits; 4 layers of rounding stay within 10% of the logit range
    assert float((low.float() - ref).abs().max()) < 0.1 * float(ref.abs().max())
