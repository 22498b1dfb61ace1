"""Reformer LSH attention: chunked fast path vs dense references, error vs n_hashes."""
import itertools

import pytest
import torch

from attnlab.ops.lsh import (
    hash_buckets,
    lsh_attention,
    lsh_attention_reference,
    lsh_visible,
    random_rotations,
    shared_qk_attention,
)
from attnlab.ops.softmax import merge_many

CASES = [  # (N, chunk, n_hashes, n_buckets, causal)
    (1, 4, 2, 4, False), (7, 4, 3, 4, True), (63, 8, 4, 8, False), (129, 16, 3, 8, True),
    (64, 8, 1, 8, False), (129, 16, 2, 16, False), (9, 1, 3, 6, True),
]


def _inputs(N, B=2, H=3, D=16, Dv=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, Dv, generator=g)


@pytest.mark.parametrize("N,c,R,nb,causal", CASES)
def test_fast_path_equals_dense_union_reference(N, c, R, nb, causal):
    qk, v = _inputs(N)
    rot = random_rotations(16, R, nb, seed=1)
    out, lse = lsh_attention(qk, v, rotations=rot, chunk_size=c, causal=causal, return_lse=True)
    ref, ref_lse = lsh_attention_reference(qk, v, rot, chunk_size=c, causal=causal,
                                           return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-4)
    # seeded default rotations are the same object as random_rotations(seed)
    same = lsh_attention(qk, v, n_hashes=R, n_buckets=nb, seed=1, chunk_size=c, causal=causal)
    torch.testing.assert_close(same, out, atol=0, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_reference(causal):
    qk, v = _inputs(37, B=1, H=2)
    rot = random_rotations(16, 3, 6, seed=2)
    qk1, v1 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    qk2, v2 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    w = torch.randn(1, 2, 37, 8)
    (lsh_attention(qk1, v1, rotations=rot, chunk_size=8, causal=causal) * w).sum().backward()
    (lsh_attention_reference(qk2, v2, rot, chunk_size=8, causal=causal) * w).sum().backward()
    torch.testing.assert_close(qk1.grad, qk2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v1.grad, v2.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("N", [1, 7, 63, 129])
@pytest.mark.parametrize("causal", [False, True])
def test_one_chunk_covering_everything_is_exact_shared_qk_attention(N, causal):
    qk, v = _inputs(N)
    out, lse = lsh_attention(qk, v, n_hashes=3, chunk_size=N, causal=causal, return_lse=True)
    ref, ref_lse = shared_qk_attention(qk, v, causal=causal, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-4)


def test_self_is_attended_only_when_nothing_else_is_visible():
    qk, v = _inputs(5, B=1, H=1)
    out = shared_qk_attention(qk, v, causal=True)
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])  # position 0 sees only itself
    vis = lsh_visible(qk, random_rotations(16, 2, 4), 2, causal=False)
    assert not torch.diagonal(vis, dim1=-2, dim2=-1).any()  # N >= 2: self never needed


def clustered(N, D=32, n_clusters=16, noise=1.0, seed=0):
    """Shared QK vectors drawn around a few centres (about one chunk of tokens each):
    attention is peaked, as LSH assumes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, D, generator=g) * 8
    idx = torch.randint(0, n_clusters, (N,), generator=g)
    qk = centres[idx] + noise * torch.randn(N, D, generator=g)
    return qk.view(1, 1, N, D), torch.randn(1, 1, N, D, generator=g)


def test_error_falls_as_hash_rounds_grow():
    """Bound: relative error < 0.25 at 8 rounds and < 0.2x one round's error, falling at
    every doubling (nested rounds only enlarge the attended set)."""
    qk, v = clustered(512)
    exact = shared_qk_attention(qk, v)
    errs = []
    for R in (1, 2, 4, 8):
        out = lsh_attention(qk, v, n_hashes=R, chunk_size=32, n_buckets=16, seed=0)
        errs.append(float((out - exact).norm() / exact.norm()))
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.2 * errs[0] and errs[-1] < 0.25, errs
    # nested visibility: rounds drawn in order, so 4 rounds see a superset of 2 rounds
    v2 = lsh_visible(qk, random_rotations(32, 2, 16), 32, False)
    v4 = lsh_visible(qk, random_rotations(32, 4, 16), 32, False)
    assert (v4 | ~v2).all() and v4.sum() > v2.sum()


def test_without_dedup_rounds_merge_as_a_multiset():
    """dedup=False == merging independent single-round results through their lse."""
    qk, v = _inputs(50, B=1, H=2)
    rot = random_rotations(16, 3, 8, seed=4)
    out = lsh_attention(qk, v, rotations=rot, chunk_size=8, dedup=False)
    parts = [lsh_attention(qk, v, rotations=rot[r:r + 1], chunk_size=8, return_lse=True)
             for r in range(3)]
    ref, _ = merge_many([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert (out - lsh_attention(qk, v, rotations=rot, chunk_size=8)).abs().max() > 1e-4


def test_hashing_is_angular():
    x = torch.randn(1, 1, 20, 8)
    rot = random_rotations(8, 4, 6)
    b = hash_buckets(x, rot)
    assert b.shape == (1, 1, 4, 20) and int(b.min()) >= 0 and int(b.max()) < 6
    assert torch.equal(hash_buckets(3.0 * x, rot), b)  # scale-invariant
    assert torch.equal((hash_buckets(-x, rot) - b) % 6, torch.full_like(b, 3))  # -x: opposite
    # equals the definition argmax([xR; -xR]) written out, ties included, in row chunks
    xi = torch.randint(-2, 3, (2, 1, 37, 4)).float()
    ri = torch.randint(-1, 2, (3, 4, 5)).float()  # integer values: many exact ties
    xr = torch.einsum("bhnd,rdk->bhrnk", xi, ri)
    expect = torch.cat([xr, -xr], dim=-1).argmax(dim=-1)
    assert torch.equal(hash_buckets(xi, ri, rows=8), expect)


def test_bad_input():
    qk, v = _inputs(8)
    with pytest.raises(ValueError, match=r"n_hashes \(0\) must be >= 1"):
        lsh_attention(qk, v, n_hashes=0)
    with pytest.raises(ValueError, match=r"n_buckets \(5\) must be even"):
        lsh_attention(qk, v, n_buckets=5)
    with pytest.raises(ValueError, match=r"chunk_size \(0\) must be >= 1"):
        lsh_attention(qk, v, chunk_size=0)
    with pytest.raises(ValueError, match=r"v shape .* must match qk"):
        lsh_attention(qk, v[:, :, :7])
    with pytest.raises(ValueError, match=r"rotations has shape \(2, 4, 3\)"):
        lsh_attention(qk, v, rotations=torch.randn(2, 4, 3))
    with pytest.raises(TypeError, match=r"qk must be a torch.Tensor"):
        lsh_attention(qk.numpy(), v)


@pytest.mark.parametrize("causal", [False, True])
def test_factorised_hashing(causal):
    """n_buckets = (n1, n2): bucket = b1 + n1·b2 from two rotations; the fast path still
    equals the dense union reference, and with small factors it matches one big rotation's
    bucket count."""
    qk, v = _inputs(63)
    rot = random_rotations(16, 3, (4, 6), seed=2)
    assert isinstance(rot, tuple) and [r.shape for r in rot] == [(3, 16, 2), (3, 16, 3)]
    b = hash_buckets(qk, rot)
    b1, b2 = hash_buckets(qk, rot[0]), hash_buckets(qk, rot[1])
    assert torch.equal(b, b1 + 4 * b2) and int(b.max()) < 24
    out, lse = lsh_attention(qk, v, rotations=rot, chunk_size=8, causal=causal, return_lse=True)
    ref, ref_lse = lsh_attention_reference(qk, v, rot, chunk_size=8, causal=causal,
                                           return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-4)
    same = lsh_attention(qk, v, n_hashes=3, n_buckets=(4, 6), seed=2, chunk_size=8,
                         causal=causal)
    torch.testing.assert_close(same, out, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"n_buckets \(3\) must be even"):
        lsh_attention(qk, v, n_buckets=(4, 3))
    with pytest.raises(ValueError, match=r"rotations has shape \(2, 16, 3\)"):
        lsh_attention(qk, v, rotations=(rot[0], torch.randn(2, 16, 3)))
