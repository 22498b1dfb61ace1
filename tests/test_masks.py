import pytest
import torch

from attnlab import masks as M

LENGTHS = [(1, 1), (7, 7), (63, 63), (129, 129), (5, 17), (33, 70)]


def brute(mask_fn, nq, nk):
    off = nk - nq
    return torch.tensor([[bool(mask_fn(off + i, j)) for j in range(nk)] for i in range(nq)])


@pytest.mark.parametrize("nq,nk", LENGTHS)
def test_factories_dense_match_definition(nq, nk):
    cases = [
        (M.causal(), lambda i, j: j <= i),
        (M.sliding_window(4), lambda i, j: 0 <= i - j < 4),
        (M.sliding_window(1), lambda i, j: i == j),
        (M.prefix_lm(3), lambda i, j: j < 3 or j <= i),
        (M.global_tokens([0, 2]) | M.sliding_window(3),
         lambda i, j: i in (0, 2) or j in (0, 2) or 0 <= i - j < 3),
        (M.causal() & ~M.sliding_window(2), lambda i, j: j <= i and not (0 <= i - j < 2)),
    ]
    for m, ref in cases:
        assert torch.equal(m.to_dense(nq, nk), brute(ref, nq, nk)), m.name


def test_window_semantics_counts_self():
    # conventions §2: W keys including itself -> far from the start each row has exactly W keys
    d = M.sliding_window(5).to_dense(20, 20)
    assert d.sum(-1)[10:].tolist() == [5] * 10
    assert d.sum(-1)[:5].tolist() == [1, 2, 3, 4, 5]


def test_document_mask_per_batch():
    ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    m = M.document(ids) & M.causal()
    d = m.to_dense(5, 5, batch=2, heads=1)
    assert d.shape == (2, 1, 5, 5)
    assert d[0, 0, 3].tolist() == [False, False, True, True, False]
    assert d[1, 0, 4].tolist() == [False, False, False, True, True]
    with pytest.raises(ValueError, match="batch"):
        m.to_dense(5, 5)


@pytest.mark.parametrize("nq,nk", LENGTHS)
@pytest.mark.parametrize("qb,kb", [(1, 1), (4, 4), (8, 16), (16, 5), (64, 64)])
def test_block_layout_matches_dense(nq, nk, qb, kb):
    for m in [M.causal(), M.sliding_window(6), M.full(),
              M.sliding_window(3) | M.global_tokens([1]), M.prefix_lm(4) & M.causal()]:
        dense = m.to_dense(nq, nk)
        lay = m.block_layout(nq, nk, qb, kb)
        assert lay.kind.shape == (1, 1, -(-nq // qb), -(-nk // kb))
        assert torch.equal(lay.kind[0, 0], dense_kinds(dense, qb, kb)), m.name


def test_block_layout_is_banded_for_window():
    lay = M.sliding_window(64).block_layout(4096, 4096, 64)
    c = lay.counts()
    # each query block touches its own (partial, diagonal) and one previous block
    assert c["partial"] + c["full"] <= 2 * lay.n_q_blocks
    assert lay.density() < 0.04


def test_describe_renders_grid():
    s = M.sliding_window(2).describe(4)
    rows = s.splitlines()[1:]
    assert [r.split(" ")[1] for r in rows] == ["█···", "██··", "·██·", "··██"]
    with pytest.raises(ValueError, match="max_size"):
        M.causal().describe(1000)
    assert "█" in M.causal().block_layout(8, 8, 2).describe()


def test_bad_inputs():
    with pytest.raises(ValueError, match="window"):
        M.sliding_window(0)
    with pytest.raises(TypeError, match="window"):
        M.sliding_window(2.5)
    with pytest.raises(ValueError, match="repeat"):
        M.global_tokens([1, 1])
    with pytest.raises(ValueError, match="seq_len"):
        M.global_tokens([9], seq_len=4)
    with pytest.raises(ValueError, match="q_block"):
        M.causal().block_layout(8, 8, 0)
    with pytest.raises(TypeError, match="Mask"):
        M.and_masks(M.causal(), "causal")
    bad = M.Mask(lambda b, h, q, k: (q - k).float(), "bad")
    with pytest.raises(TypeError, match="bool"):
        bad.to_dense(3, 3)


def dense_kinds(dense: torch.Tensor, qb: int, kb: int) -> torch.Tensor:
    """Block kinds (..., n_qb, n_kb) straight from a dense mask (..., nq, nk): padding is
    False for "any" and True for "all", so ragged blocks count only their valid entries."""
    nq, nk = dense.shape[-2:]
    n_qb, n_kb = -(-nq // qb), -(-nk // kb)
    pad = (0, n_kb * kb - nk, 0, n_qb * qb - nq)
    shape = (*dense.shape[:-2], n_qb, qb, n_kb, kb)
    any_b = torch.nn.functional.pad(dense, pad, value=False).view(shape).any(-1).any(-2)
    all_b = torch.nn.functional.pad(dense, pad, value=True).view(shape).all(-1).all(-2)
    return torch.where(all_b, M.FULL, torch.where(any_b, M.PARTIAL, M.EMPTY)).to(torch.int8)


@pytest.mark.parametrize("nq,nk", [(1, 1), (7, 7), (63, 63), (129, 129), (5, 17), (33, 70)])
@pytest.mark.parametrize("qb,kb", [(1, 1), (4, 4), (8, 16), (16, 5), (7, 3)])
def test_global_and_or_layouts_equal_dense_classification(nq, nk, qb, kb):
    """The O(N) global-token classifier and the OR-from-parts path are exact."""
    cases = [M.global_tokens([0]), M.global_tokens([2, 5, 40, 69]),
             M.sliding_window(5) | M.global_tokens([0, 3]),
             M.causal() | M.global_tokens([6]) | M.prefix_lm(2),
             (M.sliding_window(2) | M.global_tokens([1])) | M.sliding_window(9),
             M.sliding_window(4) | (M.global_tokens([0]) & M.causal()),
             ~(M.sliding_window(3) | M.global_tokens([4])) | M.global_tokens([0])]
    for m in cases:
        lay = m.block_layout(nq, nk, qb, kb)
        assert torch.equal(lay.kind[0, 0], dense_kinds(m.to_dense(nq, nk), qb, kb)), m.name


def test_or_layout_with_batch_masks_and_explicit_positions():
    ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]])
    m = (M.document(ids) & M.causal()) | M.global_tokens([0]) | M.sliding_window(2)
    lay = m.block_layout(11, 11, 3, 2, batch=2)
    assert torch.equal(lay.kind, dense_kinds(m.to_dense(11, 11, batch=2, heads=1), 3, 2))
    # unsorted slots (a rolling buffer) and queries at explicit positions
    kv_pos = torch.tensor([8, 9, 10, 3, 4, 5, 6, 7])
    q_pos = torch.tensor([9, 10])
    m2 = M.sliding_window(4) | M.global_tokens([5])
    lay = m2.block_layout(2, 8, 1, 3, q_pos=q_pos, kv_pos=kv_pos)
    dense = m2.to_dense(2, 8, q_pos=q_pos, kv_pos=kv_pos)
    assert torch.equal(lay.kind[0, 0], dense_kinds(dense, 1, 3))


def test_window_or_global_layout_evaluates_only_undecided_blocks():
    """Cost: sliding_window(W) | global_tokens(g) costs O(N·(W + block)) predicate
    evaluations, not the O(N²) of its key-bound hull (counted, not timed)."""
    evaluated = []

    def counting(m):
        return M.Mask(lambda b, h, q, k: (evaluated.append(q.numel() * k.numel()), m.fn(b, h, q, k))[1],
                      m.name, kv_bounds=m._kv_bounds, classify_blocks=m.classify_blocks)

    n, w, blk = 2048, 64, 32
    window, glob = counting(M.sliding_window(w)), counting(M.global_tokens([0]))
    lay = (window | glob).block_layout(n, n, blk)
    assert sum(evaluated) <= 4 * n * (w + 2 * blk)  # the hull would be n²/2 = 2.1M
    dense = (M.sliding_window(w) | M.global_tokens([0])).to_dense(n, n)
    assert torch.equal(lay.kind[0, 0], dense_kinds(dense, blk, blk))
