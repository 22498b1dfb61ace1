import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab import masks as M
from attnlab.ops.softmax import alibi, alibi_slopes, attention_reference, merge, merge_many, softcap

SHAPES = [  # B, Hq, Hkv, Nq, Nk, D
    (1, 1, 1, 1, 1, 8), (2, 4, 4, 7, 7, 16), (2, 4, 2, 63, 63, 32), (1, 8, 1, 5, 129, 16),
    (3, 6, 3, 33, 70, 8),
]


def rand(B, Hq, Hkv, Nq, Nk, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Nq, D, generator=g), torch.randn(B, Hkv, Nk, D, generator=g),
            torch.randn(B, Hkv, Nk, D, generator=g))


def sdpa_oracle(q, k, v, mask_bool=None):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bool)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", [None, "causal", "window", "global"])
def test_reference_vs_sdpa(shape, mask):
    q, k, v = rand(*shape)
    Nq, Nk = shape[3], shape[4]
    m = {None: None, "causal": M.causal(), "window": M.sliding_window(5),
         "global": M.sliding_window(3) | M.global_tokens([0])}[mask]
    out = attention_reference(q, k, v, mask=m)
    dense = None if m is None else m.to_dense(Nq, Nk)
    expect = sdpa_oracle(q, k, v, dense)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-4)
    for backend in ("sdpa", "auto"):
        torch.testing.assert_close(attnlab.attention(q, k, v, mask=m, backend=backend), expect,
                                   atol=1e-5, rtol=1e-4)


def test_bottom_right_causal_matches_decoding():
    q, k, v = rand(1, 2, 2, 6, 6, 16)
    full = attention_reference(q, k, v, mask=M.causal())
    last3 = attention_reference(q[:, :, 3:], k, v, mask=M.causal())  # Nq=3, Nk=6
    torch.testing.assert_close(last3, full[:, :, 3:], atol=1e-6, rtol=1e-5)


def test_fully_masked_rows_are_zero_with_neg_inf_lse():
    q, k, v = rand(2, 2, 2, 4, 4, 8)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    for backend in ("reference", "sdpa"):
        out = attnlab.attention(q, k, v, mask=mask, backend=backend)
        assert torch.isfinite(out).all()
        assert (out[:, :, 1] == 0).all()
    out, lse = attention_reference(q, k, v, mask=mask, return_lse=True)
    assert torch.isneginf(lse[:, :, 1]).all() and torch.isfinite(lse[:, :, 0]).all()


def test_lse_matches_logsumexp_and_gradients_flow():
    q, k, v = rand(2, 4, 2, 9, 11, 16)
    q.requires_grad_(True)
    out, lse = attention_reference(q, k, v, mask=M.causal(), return_lse=True)
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / 4.0
    s = s.masked_fill(~M.causal().to_dense(9, 11), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    assert lse.dtype == torch.float32
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_score_mods_and_sink():
    q, k, v = rand(1, 4, 4, 5, 5, 8)
    slopes = alibi_slopes(4)
    out = attention_reference(q, k, v, mask=M.causal(), score_mod=alibi(slopes))
    i = torch.arange(5)
    bias = -slopes.view(4, 1, 1) * (i.view(5, 1) - i.view(1, 5)).float()
    s = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
    s = s.masked_fill(~M.causal().to_dense(5, 5), float("-inf"))
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v)
    capped = attention_reference(q * 100, k, v, score_mod=softcap(5.0))
    s = 5 * torch.tanh((q * 100) @ k.transpose(-1, -2) / math.sqrt(8) / 5)
    torch.testing.assert_close(capped, torch.softmax(s, -1) @ v)
    # sink logit 0 = softmax-off-by-one: weights sum to < 1
    sink = torch.zeros(4)
    out, lse = attention_reference(q, k, v, sink=sink, return_lse=True)
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    p = torch.exp(s) / (1 + torch.exp(s).sum(-1, keepdim=True))
    torch.testing.assert_close(out, p @ v)
    torch.testing.assert_close(lse, torch.log1p(torch.exp(s).sum(-1)))
    assert alibi_slopes(8)[0].item() == pytest.approx(0.5)
    assert alibi_slopes(6).shape == (6,)


@pytest.mark.parametrize("n_parts", [2, 3, 5])
def test_merge_of_random_key_partitions_is_exact(n_parts):
    q, k, v = rand(2, 4, 2, 7, 40, 16)
    full, lse_full = attention_reference(q, k, v, return_lse=True)
    g = torch.Generator().manual_seed(n_parts)
    part = torch.randint(0, n_parts, (40,), generator=g)
    outs, lses = [], []
    for p in range(n_parts):
        m = (part == p).view(1, 40).expand(7, 40)
        o, l = attention_reference(q, k, v, mask=m, return_lse=True)
        outs.append(o)
        lses.append(l)
    o, l = outs[0], lses[0]
    for o2, l2 in zip(outs[1:], lses[1:]):
        o, l = merge(o, l, o2, l2)
    torch.testing.assert_close(o, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(l, lse_full, atol=1e-5, rtol=1e-4)
    o, l = merge_many(outs, lses)
    torch.testing.assert_close(o, full, atol=1e-5, rtol=1e-4)


def test_merge_with_empty_sides():
    o = torch.randn(3, 4)
    lse = torch.randn(3)
    empty_o, empty_lse = torch.zeros(3, 4), torch.full((3,), float("-inf"))
    m, l = merge(o, lse, empty_o, empty_lse)
    torch.testing.assert_close(m, o)
    torch.testing.assert_close(l, lse)
    m, l = merge(empty_o, empty_lse, empty_o, empty_lse)
    assert (m == 0).all() and torch.isneginf(l).all()
    with pytest.raises(ValueError, match="o1"):
        merge(o, lse, o[:2], lse[:2])


def test_bad_inputs_name_the_argument():
    q, k, v = rand(1, 4, 2, 3, 3, 8)
    with pytest.raises(ValueError, match="divisible"):
        attention_reference(q, k[:, :1].expand(1, 3, 3, 8).contiguous(), v[:, :1].expand(1, 3, 3, 8))
    with pytest.raises(ValueError, match="head_dim"):
        attention_reference(q, k[..., :4], v)
    with pytest.raises(ValueError, match="dimensions"):
        attention_reference(q[0], k, v)
    with pytest.raises(TypeError, match="dtype"):
        attention_reference(q.double(), k, v)
    with pytest.raises(TypeError, match="bool"):
        attention_reference(q, k, v, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="mask shape"):
        attention_reference(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend"):
        attnlab.attention(q, k, v, backend="cuda-magic")
    with pytest.raises(ValueError, match="sink"):
        attention_reference(q, k, v, sink=torch.zeros(3))


def _naive_softmax(q, k, v, mask=None):
    """Textbook softmax(q kᵀ / sqrt(D)) v in q's dtype (MHA only)."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def test_float64_inputs_are_computed_in_float64():
    q, k, v = [t.double() for t in rand(2, 2, 2, 7, 9, 16)]
    out, lse = attention_reference(q, k, v, mask=M.causal(), return_lse=True)
    want = _naive_softmax(q, k, v, M.causal().to_dense(7, 9))
    assert out.dtype == torch.float64 and lse.dtype == torch.float64  # conventions §1, §3
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)  # float32 math misses this


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computes_in_float32_and_returns_input_dtype(dtype):
    q, k, v = rand(2, 4, 2, 7, 63, 16)
    ql, kl, vl = q.to(dtype), k.to(dtype), v.to(dtype)
    out, lse = attention_reference(ql, kl, vl, mask=M.sliding_window(5), return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    # computed in float32 from the rounded inputs: equals the float32 run on those inputs,
    # rounded once at the end
    want, want_lse = attention_reference(ql.float(), kl.float(), vl.float(),
                                         mask=M.sliding_window(5), return_lse=True)
    torch.testing.assert_close(out, want.to(dtype), atol=0, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=0, rtol=0)


def test_integer_inputs_raise_naming_dtype():
    q, k, v = [t.long() for t in rand(1, 1, 1, 3, 3, 4)]
    with pytest.raises(TypeError, match=r"q dtype \(torch.int64\)"):
        attention_reference(q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("extra", ["none", "sink", "alibi", "softcap", "sink_off"])
def test_empty_rows_are_zero_never_nan(dtype, extra):
    B, H, N = 2, 4, 7
    q, k, v = [t.to(dtype) for t in rand(B, H, 2, N, N, 8)]
    mask = M.causal() & ~M.Mask(lambda b, h, qi, ki: qi < 3, "q<3")  # rows 0-2 see nothing
    kw = {"none": {}, "sink": {"sink": torch.linspace(-1, 1, H)},
          "alibi": {"score_mod": alibi(alibi_slopes(H))}, "softcap": {"score_mod": softcap(2.0)},
          "sink_off": {"sink": torch.full((H,), float("-inf"))}}[extra]
    out, lse = attention_reference(q, k, v, mask=mask, return_lse=True, **kw)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert (out[:, :, :3] == 0).all() and torch.isfinite(out[:, :, 3:].float()).all()
    if extra == "sink":  # only the sink logit is left: lse = s_h
        torch.testing.assert_close(lse[:, :, :3], torch.linspace(-1, 1, H).view(1, H, 1)
                                   .expand(B, H, 3))
    else:
        assert torch.isneginf(lse[:, :, :3]).all()


def test_nonfinite_inputs_propagate_exactly_pair_by_pair():
    q, k, v = rand(1, 2, 2, 6, 6, 8)
    mask = M.causal()
    base = attention_reference(q, k, v, mask=mask)
    # NaN / inf values at key 4: rows 0-3 do not see it and are unchanged (no 0·inf)
    for bad in (float("nan"), float("inf"), float("-inf")):
        v2 = v.clone()
        v2[0, 1, 4, 2] = bad
        out = attention_reference(q, k, v2, mask=mask)
        torch.testing.assert_close(out[:, :, :4], base[:, :, :4], atol=0, rtol=0)
        torch.testing.assert_close(out[:, 0], base[:, 0], atol=0, rtol=0)  # other head
        torch.testing.assert_close(out[0, 1, 4:, [0, 1, 3]], base[0, 1, 4:, [0, 1, 3]])
        assert out[0, 1, 4:, 2].isnan().all() if math.isnan(bad) else \
            (out[0, 1, 4:, 2] == bad).all()
    # a NaN key at position 5 poisons only the last row (the only one that sees it)
    k2 = k.clone()
    k2[0, 0, 5, 0] = float("nan")
    out, lse = attention_reference(q, k2, v, mask=mask, return_lse=True)
    assert out[0, 0, 5].isnan().all() and lse[0, 0, 5].isnan()
    torch.testing.assert_close(out[0, 0, :5], base[0, 0, :5], atol=0, rtol=0)
    # an infinite key: score -inf acts as masked, +inf leaves the row undefined (NaN)
    k3 = k.clone()
    k3[0, 0, 2, 0] = float("inf")
    q3 = q.clone()
    q3[0, 0, :, 0] = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    out, lse = attention_reference(q3, k3, v, mask=mask, return_lse=True)
    clean = attention_reference(q3, k, v, mask=mask & ~M.Mask(lambda b, h, qi, ki: ki == 2, "k2"))
    torch.testing.assert_close(out[0, 0, 3:5], clean[0, 0, 3:5])
    assert out[0, 0, [2, 5]].isnan().all() and (lse[0, 0, [2, 5]] == float("inf")).all()
    torch.testing.assert_close(out[0, 0, :2], attention_reference(q3, k, v, mask=mask)[0, 0, :2],
                               atol=0, rtol=0)  # rows 0-1 do not see key 2
    # NaN in a masked key or value changes nothing at all
    k4, v4 = k.clone(), v.clone()
    k4[..., 5, :] = float("nan")
    v4[..., 5, :] = float("nan")
    torch.testing.assert_close(attention_reference(q[:, :, :5], k4, v4, mask=mask,
                                                   q_pos=torch.arange(5)),
                               base[:, :, :5], atol=0, rtol=0)


def test_positions_are_validated():
    q, k, v = rand(1, 2, 2, 3, 5, 8)
    with pytest.raises(ValueError, match=r"q_pos must have shape \(3,\)"):
        attention_reference(q, k, v, mask=M.causal(), q_pos=torch.arange(4))
    with pytest.raises(ValueError, match=r"kv_pos must have shape \(5,\)"):
        attention_reference(q, k, v, score_mod=alibi(alibi_slopes(2)), kv_pos=torch.arange(3))
    with pytest.raises(TypeError, match="q_pos must hold integer positions"):
        attention_reference(q, k, v, mask=M.causal(), q_pos=torch.arange(3.0))


def test_merge_propagates_poisoned_partials_instead_of_zeroing_them():
    o, lse = torch.randn(3, 4), torch.randn(3)
    for bad in (float("nan"), float("inf")):
        lse_bad = lse.clone()
        lse_bad[1] = bad
        m, _ = merge(o, lse, o, lse_bad)
        assert m[1].isnan().all() and torch.isfinite(m[[0, 2]]).all()
        m, _ = merge_many([o, o, o], [lse, lse_bad, lse])
        assert m[1].isnan().all() and torch.isfinite(m[[0, 2]]).all()
    # an empty side is still exact, and a half-precision o keeps its dtype
    m, l = merge(o.half(), lse, torch.zeros(3, 4).half(), torch.full((3,), float("-inf")))
    assert m.dtype == torch.float16 and l.dtype == torch.float32
    torch.testing.assert_close(m, o.half())
