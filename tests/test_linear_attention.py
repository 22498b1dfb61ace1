"""Linear attention: parallel == chunked == recurrent == reference (outputs, final states,
gradients), odd lengths, Nq != Nk, GQA, initial states, bad input (conventions §3, §5, §6)."""
import pytest
import torch
from torch.testing import assert_close

from attnlab.ops.linear import LinearState, linear_attention, linear_attention_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}  # conventions §5, exact algorithms in float32


def make(B, Hq, Hkv, Nq, Nk, D=8, Dv=6, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g) * scale
    k = torch.randn(B, Hkv, Nk, D, generator=g) * scale
    v = torch.randn(B, Hkv, Nk, Dv, generator=g)
    return q, k, v


def rand_state(B, Hkv, Fd, Dv, seed=3):
    g = torch.Generator().manual_seed(seed)
    return LinearState(torch.randn(B, Hkv, Fd, Dv, generator=g), torch.rand(B, Hkv, Fd, generator=g) * 5)


@pytest.mark.parametrize("N", [1, 7, 63, 129])
@pytest.mark.parametrize("fmap,normalize", [("elu+1", True), ("relu", True), ("identity", False)])
def test_causal_forms_match_reference(N, fmap, normalize):
    """parallel == chunked == recurrent == per-query reference, outputs and final states."""
    q, k, v = make(2, 4, 2, N, N)
    ref, ref_st = linear_attention_reference(q, k, v, feature_map=fmap, normalize=normalize)
    for mode in ("parallel", "chunked", "recurrent"):
        out, st = linear_attention(q, k, v, feature_map=fmap, normalize=normalize, mode=mode,
                                   chunk_size=16, output_final_state=True)
        assert_close(out, ref, **TOL)
        assert_close(st.S, ref_st.S, **TOL)
        if normalize:
            assert_close(st.z, ref_st.z, **TOL)
        else:
            assert st.z is None


@pytest.mark.parametrize("Nq,Nk", [(5, 12), (12, 5), (1, 9)])
@pytest.mark.parametrize("mode", ["parallel", "chunked", "recurrent"])
def test_causal_nq_ne_nk_bottom_right(Nq, Nk, mode):
    q, k, v = make(2, 2, 1, Nq, Nk, seed=1)
    st0 = rand_state(2, 1, 8, 6)
    out, st = linear_attention(q, k, v, mode=mode, chunk_size=4, initial_state=st0,
                               output_final_state=True)
    ref, ref_st = linear_attention_reference(q, k, v, initial_state=st0)
    assert_close(out, ref, **TOL)
    assert_close(st.S, ref_st.S, **TOL)
    assert_close(st.z, ref_st.z, **TOL)


def test_rows_without_keys_are_zero_without_state():
    q, k, v = make(1, 2, 2, 6, 2)
    out = linear_attention(q, k, v, mode="chunked", chunk_size=4)
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mode", ["parallel", "chunked", "recurrent"])
def test_bidirectional_matches_reference(normalize, mode):
    fmap = "elu+1" if normalize else "identity"
    q, k, v = make(2, 4, 1, 9, 14, seed=2)
    st0 = rand_state(2, 1, 8, 6)
    out, st = linear_attention(q, k, v, causal=False, feature_map=fmap, normalize=normalize,
                               mode=mode, initial_state=st0, output_final_state=True)
    ref, ref_st = linear_attention_reference(q, k, v, causal=False, feature_map=fmap,
                                             normalize=normalize, initial_state=st0)
    assert_close(out, ref, **TOL)
    assert_close(st.S, ref_st.S, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 200])
def test_split_sequence_with_state_equals_whole(chunk_size):
    """Feeding a sequence in two calls through initial_state equals one call."""
    q, k, v = make(2, 2, 2, 37, 37, seed=4)
    whole, st = linear_attention(q, k, v, chunk_size=chunk_size, output_final_state=True)
    a, st_a = linear_attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], chunk_size=chunk_size,
                               output_final_state=True)
    b, st_b = linear_attention(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], chunk_size=chunk_size,
                               initial_state=st_a, output_final_state=True)
    assert_close(torch.cat([a, b], 2), whole, **TOL)
    assert_close(st_b.S, st.S, **TOL)
    assert_close(st_b.z, st.z, **TOL)


def test_custom_feature_map_hook():
    def squared(x):  # a positive map with a different width F = 2D
        return torch.cat([x.relu(), (-x).relu()], -1) ** 2

    q, k, v = make(1, 2, 2, 11, 11, seed=5)
    out, st = linear_attention(q, k, v, feature_map=squared, output_final_state=True, chunk_size=4)
    ref, ref_st = linear_attention_reference(q, k, v, feature_map=squared)
    assert_close(st.S, ref_st.S, **TOL)
    assert st.S.shape == (1, 2, 16, 6)
    assert_close(out, ref, **TOL)


@pytest.mark.parametrize("mode", ["parallel", "chunked"])
def test_gradients_match_reference(mode):
    q, k, v = make(2, 4, 2, 23, 23, seed=6)
    st0 = rand_state(2, 2, 8, 6)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, st0.S, st0.z)]
    out, st = linear_attention(*leaves[:3], mode=mode, chunk_size=8,
                               initial_state=LinearState(leaves[3], leaves[4]),
                               output_final_state=True)
    w = torch.randn_like(out)
    ((out * w).sum() + st.S.square().sum() * 1e-2 + st.z.sum()).backward()
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, st0.S, st0.z)]
    ref, ref_st = linear_attention_reference(*ref_leaves[:3],
                                             initial_state=LinearState(*ref_leaves[3:]))
    ((ref * w).sum() + ref_st.S.square().sum() * 1e-2 + ref_st.z.sum()).backward()
    for a, b in zip(leaves, ref_leaves):
        assert_close(a.grad, b.grad, **TOL)


def test_gqa_equals_repeated_heads():
    q, k, v = make(2, 6, 2, 10, 10, seed=7)
    out = linear_attention(q, k, v, chunk_size=4)
    rep = linear_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), chunk_size=4)
    assert_close(out, rep, **TOL)


def test_bad_input():
    q, k, v = make(1, 2, 2, 5, 5)
    with pytest.raises(ValueError, match="feature_map .*identity.* negative"):
        linear_attention(q, k, v, feature_map="identity", normalize=True)
    with pytest.raises(ValueError, match="chunk_size \\(0\\)"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="mode"):
        linear_attention(q, k, v, mode="fast")
    with pytest.raises(ValueError, match="feature_map \\('softmax'\\)"):
        linear_attention(q, k, v, feature_map="softmax")
    bad = q.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="q contains NaN"):
        linear_attention(bad, k, v)
    with pytest.raises(ValueError, match="initial_state.S has shape"):
        linear_attention(q, k, v, initial_state=LinearState(torch.zeros(1, 2, 7, 8), torch.zeros(1, 2, 8)))
    with pytest.raises(ValueError, match="initial_state.z is None"):
        linear_attention(q, k, v, initial_state=LinearState(torch.zeros(1, 2, 8, 6), None))
    with pytest.raises(ValueError, match="q heads \\(3\\)"):
        linear_attention(q[:, :1].repeat(1, 3, 1, 1), k, v)
    with pytest.raises(ValueError, match="returned"):
        linear_attention(q, k, v, feature_map=lambda x: x.sum(-2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_the_naive_path(dtype):
    """conventions §5: against a float64 reference, the chunked form in fp16/bf16 errs at most 2x
    the masked quadratic form run in the same dtype."""
    q, k, v = make(2, 2, 2, 57, 57, D=16, Dv=16, seed=9)
    ref = linear_attention(q.double(), k.double(), v.double(), mode="parallel")
    low = [t.to(dtype) for t in (q, k, v)]
    err_naive = float((linear_attention(*low, mode="parallel").double() - ref).abs().max())
    fast = linear_attention(*low, chunk_size=16)
    assert fast.dtype == dtype
    err_fast = float((fast.double() - ref).abs().max())
    assert err_fast <= 2 * err_naive, (err_fast, err_naive)
