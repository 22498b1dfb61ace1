"""MHA -> GQA on transformers models (attnlab.hf.convert): the GQA paper's mean-pooling,
an HF model with fewer KV heads, its logit KL and its measured KV bytes."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

import attnlab.hf as ah
from attnlab.hf.conformance import build, padded_batch


def mha(cls=LlamaConfig, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = cls(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64,
              initializer_range=0.2, **kw)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def model():
    return mha()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_pools_kv_heads_and_shrinks_the_config(model, n_kv):
    new = ah.mha_to_gqa(model, n_kv)
    assert type(new) is type(model) and new.config.num_key_value_heads == n_kv
    assert model.config.num_key_value_heads == 8  # the original is untouched
    hd = 8
    for lo, ln in zip(model.model.layers, new.model.layers):
        a, b = lo.self_attn, ln.self_attn
        assert b.k_proj.out_features == n_kv * hd and b.num_key_value_groups == 8 // n_kv
        for p in ("k_proj", "v_proj"):
            w = getattr(a, p).weight.view(n_kv, 8 // n_kv, hd, 64).mean(1).reshape(-1, 64)
            torch.testing.assert_close(getattr(b, p).weight, w)
        torch.testing.assert_close(b.q_proj.weight, a.q_proj.weight)
        torch.testing.assert_close(b.o_proj.weight, a.o_proj.weight)


def test_identity_and_tied_heads_are_exact(ids):
    m = mha(seed=1)
    torch.testing.assert_close(ah.logit_kl(m, ah.mha_to_gqa(m, 8), ids), 0.0, atol=1e-9, rtol=0)
    with torch.no_grad():  # heads already equal inside each group of 4: pooling changes nothing
        for layer in m.model.layers:
            for p in ("k_proj", "v_proj"):
                w = getattr(layer.self_attn, p).weight.view(2, 4, 8, 64)
                w.copy_(w[:, :1].expand_as(w))
    conv = ah.mha_to_gqa(m, 2)
    with torch.no_grad():
        torch.testing.assert_close(conv(ids).logits, m(ids).logits, atol=1e-5, rtol=1e-4)


def test_bias_is_pooled_too():
    m = mha(Qwen2Config, seed=2)  # q/k/v bias
    new = ah.mha_to_gqa(m, 2)
    b = m.model.layers[0].self_attn.k_proj.bias.view(2, 4, 8).mean(1).reshape(-1)
    torch.testing.assert_close(new.model.layers[0].self_attn.k_proj.bias, b)


def test_kv_bytes_measured_and_kl_reported(model, ids):
    rows = ah.gqa_sweep(model, ids)
    assert [r.n_kv_heads for r in rows] == [8, 4, 2, 1]
    base = rows[0].kv_bytes
    # 2 layers x (K + V) x B 2 x heads x 12 tokens x head_dim 8 x 4 bytes
    assert base == 2 * 2 * 2 * 8 * 12 * 8 * 4
    for r in rows:
        assert r.kv_bytes * 8 == base * r.n_kv_heads
        assert r.kv_saved == pytest.approx(1 - r.n_kv_heads / 8)
        assert r.kl >= 0 and r.row().startswith(f"| {r.n_kv_heads} |")
    assert rows[0].kl < 1e-9 < rows[-1].kl
    print("\nMHA -> GQA (tiny random Llama, 8 heads):")
    print("| KV heads | group | KL (nats) | KV bytes | saved |")
    for r in rows:
        print(r.row())


def test_converted_model_runs_on_attnlab_and_generates(model, ids):
    conv = ah.mha_to_gqa(model, 2)
    ids, mask = padded_batch()
    ids = ids % 64
    conv.set_attn_implementation("eager")
    with torch.no_grad():
        ref = conv(ids, attention_mask=mask).logits
        conv.set_attn_implementation(ah.register())
        out = conv(ids, attention_mask=mask).logits
        gen = conv.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                            pad_token_id=0)
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-4)
    assert gen.shape == (3, ids.shape[1] + 4)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="divisible"):
        ah.mha_to_gqa(model, 3)
    with pytest.raises(ValueError, match="n_kv_heads"):
        ah.mha_to_gqa(model, 0)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ah.mha_to_gqa(build("bert"), 2)
    from transformers import Olmo2Config

    with pytest.raises(ValueError, match="k_norm"):  # OLMo-2 normalises all KV heads together
        ah.mha_to_gqa(mha(Olmo2Config), 2)


def test_pooled_mha_equals_converted_gqa(model, ids):
    with torch.no_grad():
        for n in (4, 1):
            a = ah.pool_kv_heads(model, n)(ids).logits
            b = ah.mha_to_gqa(model, n)(ids).logits
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="mha_to_gqa"):
        ah.pool_kv_heads(ah.mha_to_gqa(model, 2), 1)


def test_pool_kv_heads_on_real_minilm():
    from attnlab.analysis.pretrained import SENTENCES, load_minilm
    from attnlab.hf.conformance import sentence_embeddings

    m, tok = load_minilm()
    enc = dict(tok(list(SENTENCES), return_tensors="pt", padding=True))
    e0 = sentence_embeddings(m, **enc)
    same = sentence_embeddings(ah.pool_kv_heads(m, 12), **enc)
    torch.testing.assert_close(same, e0, atol=1e-5, rtol=1e-4)
    cos = {n: float((sentence_embeddings(ah.pool_kv_heads(m, n), **enc) * e0).sum(-1).mean())
           for n in (6, 1)}
    print(f"\nall-MiniLM-L6-v2 mean-pooled KV heads, embedding cosine: {cos}")
    # pooling real heads changes the model (it needs uptraining), MQA more than GQA-6
    assert 0 < cos[1] < cos[6] < 0.99
    k = m.encoder.layer[0].attention.self.key.weight
    pooled = ah.pool_kv_heads(m, 6).encoder.layer[0].attention.self.key.weight
    torch.testing.assert_close(pooled.view(6, 2, 32, -1)[:, 0], k.view(6, 2, 32, -1).mean(1))
    torch.testing.assert_close(pooled.view(6, 2, 32, -1)[:, 1], k.view(6, 2, 32, -1).mean(1))
    with pytest.raises(ValueError, match="divisible"):
        ah.pool_kv_heads(m, 5)


# ---- MLA-style low-rank KV (MHA2MLA recipe) ---------------------------------------

def rope_llama(seed=3):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=64, initializer_range=0.2)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def test_low_rank_kv_full_rank_all_pairs_is_exact(ids):
    m = rope_llama()
    new = ah.low_rank_kv(m, 32, rope_pairs=8)  # every pair rotated; V (32 rows) at full rank
    with torch.no_grad():
        torch.testing.assert_close(new(ids).logits, m(ids).logits, atol=1e-4, rtol=1e-4)
    assert ah.mla_cache_floats(m, 32, 8) == (32 + 2 * 8 * 2, 2 * 2 * 16)


def test_low_rank_kv_factors_and_partial_rope(ids):
    m = rope_llama()
    new = ah.low_rank_kv(m, 12, rope_pairs=2)
    rot = new.model.rotary_emb
    assert isinstance(rot, ah.PartialRotary)
    x = torch.zeros(1, 5, 16)
    cos, sin = rot(x, torch.arange(5)[None])
    cos0, _ = rot.inner(x, torch.arange(5)[None])
    kept = torch.tensor([0, 1, 8, 9])  # pairs 0 and 1 of the rotate-half layout
    torch.testing.assert_close(cos[..., kept], cos0[..., kept])
    assert bool((sin[..., 2:8] == 0).all() and (cos[..., 10:] == 1).all())
    attn = new.model.layers[0].self_attn
    nope = torch.ones(16, dtype=torch.bool)
    nope[kept] = False
    stacked = torch.cat([attn.k_proj.weight[nope.repeat(2)], attn.v_proj.weight])
    assert int(torch.linalg.matrix_rank(stacked.double(), rtol=1e-6)) == 12
    k_rope = attn.k_proj.weight[~nope.repeat(2)]  # the decoupled rope key is kept exactly
    torch.testing.assert_close(k_rope, m.model.layers[0].self_attn.k_proj.weight[~nope.repeat(2)])


def test_low_rank_kv_beats_pooled_gqa_at_equal_cache_on_real_minilm():
    from attnlab.analysis.pretrained import SENTENCES, load_minilm
    from attnlab.hf.conformance import sentence_embeddings

    m, tok = load_minilm()
    enc = dict(tok(list(SENTENCES), return_tensors="pt", padding=True))
    e0 = sentence_embeddings(m, **enc)

    def cos(model):
        return float((sentence_embeddings(model, **enc) * e0).sum(-1).mean())

    mla = {r: cos(ah.low_rank_kv(m, r, None)) for r in (384, 192, 96)}
    print(f"\nall-MiniLM-L6-v2 low-rank KV, embedding cosine by rank: {mla}")
    assert mla[384] > 1 - 1e-5  # rank d_model: the latent spans every key and value
    assert mla[96] < mla[192] < mla[384]
    # the same cache floats per token per layer (192 of 768): latent beats 3 pooled KV heads
    assert ah.mla_cache_floats(m, 192, None) == (192, 768)
    assert mla[192] > cos(ah.pool_kv_heads(m, 3))


def test_low_rank_kv_bad_inputs(model):
    m = rope_llama()
    with pytest.raises(ValueError, match="rank"):
        ah.low_rank_kv(m, 65, rope_pairs=0)
    with pytest.raises(ValueError, match="rope_pairs"):
        ah.low_rank_kv(m, 8, rope_pairs=9)
    with pytest.raises(ValueError, match="applies RoPE"):
        ah.low_rank_kv(m, 8, rope_pairs=None)
    with pytest.raises(ValueError, match="no rotary_emb"):
        ah.low_rank_kv(build("bert"), 8, rope_pairs=2)
