"""Decode in every cache dtype (fp32, bf16, fp16, int8 per token / per group), contiguous
and paged, ragged batches: the numba kernel and its torch fallback against the float64
reference on the same stored values (docs/conventions.md §5: fp32 and int8 (exact on the
dequantised values) to 1e-5/1e-4; bf16/fp16 outputs within 2× a naive same-dtype path's
error plus the floor), odd lengths, GQA groups 1/4/8, Nq > 1, masked rows, Nk not a
multiple of the block size, scattered block tables, and non-finite values (§2) in visible
slots, in slots past a sequence's end, and in the int8 side table."""
import pytest
import torch
from fuzz.decode_cases import (
    IMPLS,
    KINDS,
    TOL,
    case,
    check,
    gen,
    q_dtype,
    reference,
    to_paged,
)

from attnlab.cache.quantized import NONFINITE_CODE, quantize_symmetric_int8
from attnlab.ops.paged import paged_decode
from attnlab.ops.softmax.kv_decode import _flat_view, kv_decode


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("G,Nq", [(1, 1), (4, 1), (8, 1), (4, 3)])
def test_contiguous_every_dtype_ragged_batch(impl, kind, G, Nq):
    lens = [1 if Nq == 1 else 3, 63, 129, 7]
    q, (k, ks, kval), (v, vs, vval), lens_t = case(kind, 4, 2 * G, 2, Nq, 133, 32, lens)
    k[0, :, 5:] = k[0, :, 5:].to(torch.float32).fill_(float("nan")).to(k.dtype) \
        if k.is_floating_point() else NONFINITE_CODE  # past sequence 0's end: never read
    out, lse = kv_decode(q, k, v, lens=lens_t, k_scale=ks, v_scale=vs, chunk=32, impl=impl,
                         return_lse=True)
    ref, ref_lse = reference(q, kval, vval, lens_t)
    check(out, lse, ref, ref_lse, q, kval, vval, lens_t)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("G", [1, 4, 8])
def test_paged_scattered_blocks_every_dtype(impl, kind, G):
    g = gen(3)
    lens = [45, 1, 100]  # not multiples of the block size 8
    q, (k, ks, kval), (v, vs, vval), lens_t = case(kind, 3, 2 * G, 2, 1, 100, 32, lens, seed=2)
    kp, tab = to_paged(k, lens_t, 8, g)
    vp, _ = to_paged(v, lens_t, 8, gen(3))
    ksp = to_paged(ks, lens_t, 8, gen(3))[0] if ks is not None else None
    vsp = to_paged(vs, lens_t, 8, gen(3))[0] if vs is not None else None
    _, tab2 = to_paged(v, lens_t, 8, gen(3))
    assert torch.equal(tab, tab2)
    out, lse = paged_decode(q, kp, vp, tab, lens_t, k_scale=ksp, v_scale=vsp, chunk=24,
                            impl=impl, return_lse=True)
    ref, ref_lse = reference(q, kval, vval, lens_t)
    check(out, lse, ref, ref_lse, q, kval, vval, lens_t)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_kernels_equal_the_torch_fallback(impl, kind):
    q, (k, ks, _), (v, vs, _), lens = case(kind, 3, 8, 2, 2, 70, 32, [70, 2, 33], seed=5)
    a = kv_decode(q, k, v, lens=lens, k_scale=ks, v_scale=vs, impl=impl, return_lse=True)
    b = kv_decode(q, k, v, lens=lens, k_scale=ks, v_scale=vs, impl="torch", return_lse=True)
    tol = TOL if q.dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}  # output rounding
    torch.testing.assert_close(a[0], b[0], **tol)
    torch.testing.assert_close(a[1], b[1], **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_starts_and_short_sequences_give_empty_rows(impl):
    q, (k, _, kval), (v, _, vval), lens = case("fp32", 3, 4, 2, 3, 20, 8, [20, 9, 2], seed=7)
    starts = torch.tensor([20, 4, 0])  # sequence 0 sees nothing; 2 has 2 keys for 3 queries
    out, lse = kv_decode(q, k, v, lens=lens, starts=starts, impl=impl, return_lse=True)
    ref, ref_lse = reference(q, kval, vval, lens, starts)
    assert bool((out[0] == 0).all()) and bool(torch.isneginf(lse[0]).all())
    assert bool(torch.isneginf(lse[2, :, 0]).all())  # query 0 of sequence 2 sits at −1
    torch.testing.assert_close(out.double(), ref, **TOL)
    torch.testing.assert_close(lse, ref_lse.float(), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_non_finite_visible_values_follow_the_reference(impl, kind):
    """NaN score (row NaN), +inf score (lse +inf, out NaN), −inf score (key unseen), a
    NaN/inf in v (one column), a NaN in a key no query of the row sees (causal tail)."""
    q, (k, ks, _), (v, vs, _), lens = case("fp32", 2, 8, 2, 2, 40, 8, [40, 40], seed=9)
    kf, vf = k.clone(), v.clone()
    kf[0, 0, 3] = float("nan")  # every row of head group 0, sequence 0: NaN
    kf[1, 1, 7] = 0.0
    kf[1, 1, 7, 0] = float("inf")  # +inf or −inf score by the sign of q
    vf[1, 0, 11, 2] = float("inf")  # column 2 of group 0 rows
    vf[1, 0, 12, 5] = float("nan")
    vf[0, 1, 39, 1] = float("nan")  # the last key: visible to query 1 only
    if kind == "int8":
        (kc, ks), (vc, vs) = quantize_symmetric_int8(kf), quantize_symmetric_int8(vf)
        side = [(torch.nonzero(~torch.isfinite(x)), x[~torch.isfinite(x)]) for x in (kf, vf)]
        ka, va = kc, vc
        kval = kc.double() * ks.double()
        vval = vc.double() * vs.double()
        for val, (idx, bad) in zip((kval, vval), side):
            val[tuple(idx.T)] = bad.double()
    else:
        side = [None, None]
        dt = q_dtype(kind)
        ka, va, ks, vs = kf.to(dt), vf.to(dt), None, None
        kval, vval = ka.double(), va.double()
        q = q.to(dt)
    out, lse = kv_decode(q, ka, va, lens=lens, k_scale=ks, v_scale=vs, k_nonfinite=side[0],
                         v_nonfinite=side[1], impl=impl, return_lse=True)
    ref, ref_lse = reference(q, kval, vval, lens)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse))
    assert torch.equal(torch.isposinf(lse), torch.isposinf(ref_lse))
    fin = torch.isfinite(ref)
    tol = 1e-4 if q.dtype == torch.float32 else 2e-2
    assert float((out.double() - ref)[fin].abs().max()) <= tol


@pytest.mark.parametrize("impl", IMPLS)
def test_int8_minus_128_without_side_table_reads_nan(impl):
    q, (k, ks, _), (v, vs, _), _ = case("int8", 1, 4, 1, 1, 30, 8, [30])
    k[0, 0, 4, 2] = NONFINITE_CODE
    out, lse = kv_decode(q, k, v, k_scale=ks, v_scale=vs, impl=impl, return_lse=True)
    assert bool(torch.isnan(out).all()) and bool(torch.isnan(lse).all())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_every_16_bit_pattern_widens_exactly(impl, kind):
    """q = 0 and one key per sequence: out = v, so the kernel's widening of every finite
    bf16/fp16 bit pattern (normals, subnormals, ±0, extremes) is checked bit for bit."""
    dt = torch.bfloat16 if kind == "bf16" else torch.float16
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    v = bits.view(dt).reshape(512, 1, 1, 128)
    v = torch.where(torch.isfinite(v), v, torch.zeros((), dtype=dt))
    k = torch.zeros_like(v)
    q = torch.zeros(512, 1, 1, 128)
    out = kv_decode(q, k, v, impl=impl)
    assert torch.equal(out, v.float())


def test_cache_views_are_read_in_place():
    buf = torch.randn(2, 3, 50, 8)
    flat, n = _flat_view(buf[:, :, :20])
    assert n == 50 and flat.data_ptr() == buf.data_ptr()
    q, kb, vb = torch.randn(2, 6, 1, 8), torch.randn(2, 3, 50, 8), torch.randn(2, 3, 50, 8)
    a = kv_decode(q, kb[:, :, :20], vb[:, :, :20], impl=IMPLS[0])
    b = kv_decode(q, kb[:, :, :20].contiguous(), vb[:, :, :20].contiguous(), impl=IMPLS[0])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_errors_name_the_argument():
    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    with pytest.raises(TypeError, match="share one stored dtype"):
        kv_decode(q, k, v.bfloat16())
    with pytest.raises(ValueError, match="k_scale"):
        kv_decode(q, k.to(torch.int8), v.to(torch.int8))
    with pytest.raises(ValueError, match="lens must lie in"):
        kv_decode(q, k, v, lens=torch.tensor([10]))
    with pytest.raises(ValueError, match="impl"):
        kv_decode(q, k, v, impl="fast")
    with pytest.raises(ValueError, match="block_tables entries"):
        paged_decode(q, k.reshape(2, 9, 1, 8)[:, :8].reshape(2, 4, 2, 8).contiguous(),
                     v.reshape(2, 9, 1, 8)[:, :8].reshape(2, 4, 2, 8).contiguous(),
                     torch.tensor([[0, 4]]), torch.tensor([3]))


def test_decode_attention_sends_low_precision_decode_here():
    q, (k, _, kval), (v, _, vval), lens = case("bf16", 2, 8, 2, 1, 37, 16, [37, 37], seed=11)
    from attnlab.ops.softmax.decode import decode_attention
    out, lse = decode_attention(q, k, v, return_lse=True)
    ref, ref_lse = reference(q, kval, vval, lens)
    check(out, lse, ref, ref_lse, q, kval, vval, lens)


@pytest.mark.parametrize("impl", IMPLS)
def test_paged_table_entries_checked_only_where_used(impl):
    """An entry a sequence reads must name a block of the pool (ValueError naming the
    range, whichever kernel runs — the native one checks inside the kernel); entries past
    a sequence's last block may hold anything and are never read."""
    q, (k, _, kval), (v, _, vval), lens = case("fp32", 2, 4, 2, 1, 32, 16, [32, 9], seed=13)
    kp, tab = to_paged(k, lens, 8, gen(4))
    vp, _ = to_paged(v, lens, 8, gen(4))
    NB = kp.shape[1]
    tab = tab.clone()
    tab[1, 2:] = torch.tensor([-5, NB + 7])  # sequence 1 (9 keys) reads blocks 0 and 1 only
    out, lse = paged_decode(q, kp, vp, tab, lens, impl=impl, return_lse=True)
    ref, ref_lse = reference(q, kval, vval, lens)
    check(out, lse, ref, ref_lse, q, kval, vval, lens)
    bad = tab.clone()
    bad[0, 3] = NB  # sequence 0 reads all 4 of its blocks
    with pytest.raises(ValueError, match=rf"block_tables entries in use must lie in \[0, {NB}\)"):
        paged_decode(q, kp, vp, bad, lens, impl=impl)


def test_work_items_follow_the_rule():
    """Work items against a plain statement of the rule: each sequence's keys [start, len)
    cut at multiples of the chunk, in order; no shrinking when threads = 0."""
    from attnlab.ops.softmax.kv_decode import _items
    g = gen(21)
    for B in (1, 5, 64, 65, 200):
        lens = torch.randint(0, 3000, (B,), generator=g)
        starts = (lens * torch.rand(B, generator=g)).long()
        want = [(b, j, min((j // 700 + 1) * 700, e))
                for b, (s0, e) in enumerate(zip(starts.tolist(), lens.tolist()))
                for j in sorted({s0} | set(range((s0 // 700 + 1) * 700, e, 700))) if j < e]
        got = _items(lens, starts, 700, 2, 0)
        assert got.tolist() == [list(w) for w in want], B
