"""Differential fuzz of the decode kernels in every cache dtype (fp32, bf16, fp16, int8 per
token and per group), contiguous (`kv_decode`) and paged through shuffled block tables
(`paged_decode`), against the float64 reference: random shapes and head dims (8: the numba
kernel; 16, 32: the native one where it builds), GQA groups, ragged lengths, block sizes,
chunks, and a NaN or ±inf in a key or value, in a visible or a hidden slot. Examples per the profile in
tests/conftest.py (derandomised "ci" in `make test`; "deep" in `make fuzz`)."""
from decode_cases import KINDS, case, check, gen, reference, to_paged
from hypothesis import given
from hypothesis import strategies as st

from attnlab.ops.paged import paged_decode
from attnlab.ops.softmax.kv_decode import kv_decode


@given(kind=st.sampled_from(KINDS), G=st.sampled_from([1, 2, 4, 8]),
       Nq=st.integers(1, 3), B=st.integers(1, 3), N=st.integers(1, 70),
       bs=st.sampled_from([1, 3, 8, 16]), chunk=st.integers(1, 80),
       D=st.sampled_from([8, 16, 32]), seed=st.integers(0, 2 ** 16), data=st.data())
def test_property_paged_and_contiguous_equal_the_reference(kind, G, Nq, B, N, bs, chunk, D,
                                                           seed, data):
    """Random shapes, ragged lengths, block sizes, chunks and a NaN placed in a visible or
    a hidden slot: both layouts equal the float64 reference (property test of this path)."""
    lens = data.draw(st.lists(st.integers(0, N), min_size=B, max_size=B))
    q, (k, ks, kval), (v, vs, vval), lens_t = case(kind, B, 2 * G, 2, Nq, N, D, lens, seed)
    if data.draw(st.booleans()) and kind in ("fp32", "bf16", "fp16"):
        b, j = data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, N - 1))
        x, xval = (k, kval) if data.draw(st.booleans()) else (v, vval)
        bad = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        x[b, 0, j, 1] = bad  # visible when j < lens[b], never read otherwise
        xval[b, 0, j, 1] = bad
    ref, ref_lse = reference(q, kval, vval, lens_t)
    out, lse = kv_decode(q, k, v, lens=lens_t, k_scale=ks, v_scale=vs, chunk=chunk,
                         return_lse=True)
    check(out, lse, ref, ref_lse, q, kval, vval, lens_t)
    g = gen(seed)
    pools = [to_paged(x, lens_t, bs, gen(seed))[0] if x is not None else None
             for x in (k, v, ks, vs)]
    tab = to_paged(k, lens_t, bs, g)[1]
    out, lse = paged_decode(q, pools[0], pools[1], tab, lens_t, k_scale=pools[2],
                            v_scale=pools[3], chunk=chunk, return_lse=True)
    check(out, lse, ref, ref_lse, q, kval, vval, lens_t)
