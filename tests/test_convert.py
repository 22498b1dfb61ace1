"""mha_to_gqa (GQA paper's mean-pooling conversion) and the KV-sharing equivalences
MQA == GQA(1) == MHA with tied heads, MHA == GQA(H) (conventions §5)."""
import pytest
import torch

from attnlab.layers import Attention, gqa_to_mha, mha_to_gqa

D_MODEL, H, D = 48, 6, 8


def tie_kv_heads(layer: Attention, n_groups: int) -> Attention:
    """Make every KV head inside each group a copy of the group's first head."""
    per = layer.n_kv_heads // n_groups
    with torch.no_grad():
        for proj in (layer.k_proj, layer.v_proj):
            w = proj.weight.view(n_groups, per, D, D_MODEL)  # (G, heads per group, D, d)
            w.copy_(w[:, :1].expand_as(w).clone())
            if proj.bias is not None:
                b = proj.bias.view(n_groups, per, D)
                b.copy_(b[:, :1].expand_as(b).clone())
    return layer


@pytest.mark.parametrize("bias", [False, True])
def test_identity_conversion_keeps_outputs(bias):
    torch.manual_seed(0)
    mha = Attention(D_MODEL, H, bias=bias)
    same = mha_to_gqa(mha, H)
    x = torch.randn(2, 7, D_MODEL)
    torch.testing.assert_close(same(x), mha(x), atol=0, rtol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_weights_are_the_mean_of_each_group(bias):
    torch.manual_seed(1)
    mha = Attention(D_MODEL, H, bias=bias)
    gqa = mha_to_gqa(mha, 2)
    assert (gqa.n_heads, gqa.n_kv_heads) == (H, 2)
    for name in ("k_proj", "v_proj"):
        src, dst = getattr(mha, name), getattr(gqa, name)
        for g in range(2):
            rows = [src.weight[(g * 3 + j) * D:(g * 3 + j + 1) * D] for j in range(3)]
            torch.testing.assert_close(dst.weight[g * D:(g + 1) * D], sum(rows) / 3)
            if bias:
                parts = [src.bias[(g * 3 + j) * D:(g * 3 + j + 1) * D] for j in range(3)]
                torch.testing.assert_close(dst.bias[g * D:(g + 1) * D], sum(parts) / 3)
    torch.testing.assert_close(gqa.q_proj.weight, mha.q_proj.weight, atol=0, rtol=0)
    torch.testing.assert_close(gqa.o_proj.weight, mha.o_proj.weight, atol=0, rtol=0)


@pytest.mark.parametrize("N", [1, 7, 63])
def test_mqa_equals_gqa1_equals_mha_with_tied_heads(N):
    torch.manual_seed(2)
    mha = tie_kv_heads(Attention(D_MODEL, H, window=5), 1)
    mqa = Attention(D_MODEL, H, 1, window=5)  # built directly as MQA
    with torch.no_grad():
        mqa.q_proj.weight.copy_(mha.q_proj.weight)
        mqa.o_proj.weight.copy_(mha.o_proj.weight)
        mqa.k_proj.weight.copy_(mha.k_proj.weight[:D])
        mqa.v_proj.weight.copy_(mha.v_proj.weight[:D])
    gqa1 = mha_to_gqa(mha, 1)  # mean of identical heads: exact
    torch.testing.assert_close(gqa1.k_proj.weight, mqa.k_proj.weight)
    x = torch.randn(2, N, D_MODEL)
    ref = mha(x)
    torch.testing.assert_close(mqa(x), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gqa1(x), ref, atol=1e-5, rtol=1e-4)


def test_gqa_equals_mha_with_heads_tied_per_group_and_chains():
    torch.manual_seed(3)
    mha = tie_kv_heads(Attention(D_MODEL, H, bias=True), 3)
    gqa = mha_to_gqa(mha, 3)
    x = torch.randn(3, 9, D_MODEL)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-4)
    # pooling in two steps (6 -> 3 -> 1) equals pooling at once when groups are equal-sized
    rnd = Attention(D_MODEL, H)
    torch.testing.assert_close(mha_to_gqa(mha_to_gqa(rnd, 3), 1).k_proj.weight,
                               mha_to_gqa(rnd, 1).k_proj.weight)


def test_untied_conversion_changes_outputs_and_keeps_cache_equivalence():
    """With distinct heads the pooled layer is an approximation (uptraining closes the gap),
    yet it is a valid layer: parallel == cached decode."""
    torch.manual_seed(4)
    mha = Attention(D_MODEL, H)
    gqa = mha_to_gqa(mha, 2)
    x = torch.randn(2, 8, D_MODEL)
    assert (gqa(x) - mha(x)).abs().max() > 1e-3
    cache = gqa.new_cache(2, 8)
    inc = torch.cat([gqa(x[:, :3], cache)] + [gqa(x[:, t:t + 1], cache) for t in range(3, 8)], 1)
    torch.testing.assert_close(inc, gqa(x), atol=1e-5, rtol=1e-4)
    assert cache.nbytes * 3 == mha.new_cache(2, 8).nbytes  # 6 -> 2 KV heads: 3x smaller


@pytest.mark.parametrize("Hkv,bias", [(2, True), (1, False), (3, False)])
def test_gqa_to_mha_is_exact_and_inverts_pooling(Hkv, bias):
    torch.manual_seed(5)
    gqa = Attention(D_MODEL, H, Hkv, bias=bias, window=4)
    mha = gqa_to_mha(gqa)
    assert (mha.n_kv_heads, mha.window, mha.bias) == (H, 4, bias)
    x = torch.randn(2, 11, D_MODEL)
    torch.testing.assert_close(mha(x), gqa(x), atol=1e-5, rtol=1e-4)
    back = mha_to_gqa(mha, Hkv)  # mean of copies is the original head (to rounding)
    for a, b in zip(back.parameters(), gqa.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert mha.new_cache(1, 4).nbytes == (H // Hkv) * gqa.new_cache(1, 4).nbytes


def test_bad_input():
    mha = Attention(D_MODEL, H)
    with pytest.raises(ValueError, match=r"layer.n_kv_heads \(6\) must be divisible by n_kv_heads \(4\)"):
        mha_to_gqa(mha, 4)
    with pytest.raises(ValueError, match=r"n_kv_heads \(0\) must be >= 1"):
        mha_to_gqa(mha, 0)
    with pytest.raises(TypeError, match=r"layer must be an Attention, got Linear"):
        mha_to_gqa(torch.nn.Linear(2, 2), 1)
    with pytest.raises(TypeError, match=r"layer must be an Attention, got Linear"):
        gqa_to_mha(torch.nn.Linear(2, 2))


def test_conversion_keeps_every_setting_including_the_rolling_cache():
    from attnlab.cache.rolling import RollingKVCache

    torch.manual_seed(0)
    layer = Attention(D_MODEL, H, window=3, kv_cache="rolling", rope_base=500.0, layer_idx=2)
    for new in (mha_to_gqa(layer, 2), gqa_to_mha(mha_to_gqa(layer, 3))):
        assert new.kv_cache == "rolling" and isinstance(new.new_cache(1, 16), RollingKVCache)
        assert (new.window, new.rope_base, new.layer_idx) == (3, 500.0, 2)
