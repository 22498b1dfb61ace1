"""Head detectors for natural text: any offset ±k, non-square (decode) patterns, padding
masks, token-based duplicate/induction targets, sinks on any key set, 4-D/5-D tables."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.analysis.heads import (
    duplicate_token_score,
    head_table,
    induction_score,
    next_token_score,
    offset_score,
    offset_target,
    previous_token_score,
    sink_score,
    top_heads,
)


def shifted(n, offset):
    """Ideal bidirectional offset head: row i reads i − offset, rows without one read key 0."""
    P = torch.zeros(n, n)
    for i in range(n):
        j = i - offset
        P[i, j if 0 <= j < n else 0] = 1.0
    return P


@pytest.mark.parametrize("offset", [-3, -1, 1, 2])
def test_offset_target_any_sign(offset):
    n = 6
    D, rows = offset_target(n, offset)
    assert bool(rows.all())
    expect = [(i, i - offset) for i in range(n) if 0 <= i - offset < n]
    assert D.sum() == len(expect) and all(D[i, j] == 1 for i, j in expect)
    P = shifted(n, offset)
    s = offset_score(P, offset, causal=False)
    assert float(s) == pytest.approx(len(expect) / n)
    assert float(offset_score(P, offset, causal=False, target_rows_only=True)) == 1.0


def test_next_token_is_offset_minus_one_and_needs_causal_false():
    P = shifted(7, -1)
    assert float(next_token_score(P, causal=False, target_rows_only=True)) == 1.0
    assert float(previous_token_score(P, causal=False)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="causal"):
        next_token_score(P)
    with pytest.raises(TypeError, match="offset"):
        offset_score(P, 1.0, causal=False)


def test_non_square_decode_rows_are_bottom_right_aligned():
    full = shifted(8, 1).tril()
    full[0, 0] = 1.0
    last3 = full[-3:]  # (3, 8): queries at positions 5, 6, 7
    assert float(previous_token_score(last3, target_rows_only=True)) == 1.0
    assert float(previous_token_score(last3)) == 1.0  # every decode row has a previous key
    D, _ = offset_target(3, 1, n_keys=8)
    assert D[0, 4] == 1 and D[2, 6] == 1 and D.sum() == 3


def test_padding_mask_excludes_padded_rows_and_keys():
    n = 6
    one = shifted(n, 1)  # (N, N)
    P = one.expand(2, 3, n, n).clone()  # (B, H, N, N)
    pad = torch.ones(2, n, dtype=torch.bool)
    pad[1, 4:] = False  # sequence 1 has 4 real tokens
    P[1, :, 4:] = 0.5  # garbage in padded query rows: must not count
    s = previous_token_score(P, causal=False, padding_mask=pad, target_rows_only=True)
    assert s.shape == (2, 3) and torch.allclose(s, torch.ones(2, 3))
    # next token: the last real token of sequence 1 has no next key (position 4 is padding)
    N = shifted(n, -1).expand(2, 3, n, n).clone()
    s = next_token_score(N, causal=False, padding_mask=pad)
    assert torch.allclose(s[0], torch.full((3,), 5 / 6)) and torch.allclose(s[1], torch.full((3,), 3 / 4))
    pooled = next_token_score(N, causal=False, padding_mask=pad, pool_batch=True)
    assert pooled.shape == (3,) and torch.allclose(pooled, torch.full((3,), 8 / 10))
    with pytest.raises(ValueError, match="padding_mask"):
        previous_token_score(P, causal=False, padding_mask=pad[:, :5])


def test_duplicate_and_induction_from_tokens():
    toks = torch.tensor([[5, 7, 9, 7, 3, 9, 1]])  # copies: 7 at 1→3, 9 at 2→5
    n = toks.shape[1]
    dup = torch.zeros(1, 1, n, n)  # (B, H, N, N)
    ind = torch.zeros(1, 1, n, n)
    for i in range(n):
        dup[0, 0, i, i] = ind[0, 0, i, i] = 1.0
    dup[0, 0, 3] = 0
    dup[0, 0, 3, 1] = 1.0
    dup[0, 0, 5] = 0
    dup[0, 0, 5, 2] = 1.0
    ind[0, 0, 3] = 0
    ind[0, 0, 3, 2] = 1.0  # after the earlier 7 comes 9
    ind[0, 0, 5] = 0
    ind[0, 0, 5, 3] = 1.0  # after the earlier 9 comes 7
    assert float(duplicate_token_score(dup, tokens=toks)) == 1.0  # only rows 3 and 5 scored
    assert float(induction_score(dup, tokens=toks)) == 0.0
    assert float(induction_score(ind, tokens=toks)) == 1.0
    with pytest.raises(ValueError, match="exactly one"):
        duplicate_token_score(dup, 2, tokens=toks)
    with pytest.raises(ValueError, match="exactly one"):
        induction_score(dup)
    with pytest.raises(ValueError, match="tokens"):
        duplicate_token_score(dup, tokens=toks[:, :4])
    with pytest.raises(ValueError, match="no query row is scored"):
        duplicate_token_score(dup, tokens=torch.arange(n)[None])


def test_token_targets_agree_with_period_on_a_repeated_sequence():
    torch.manual_seed(0)
    T, B = 5, 2
    toks = torch.randperm(20)[:T].repeat(B, 2)  # (B, 2T), no repeats within a period
    P = torch.softmax(torch.randn(B, 3, 2 * T, 2 * T), -1).tril()
    P = P / P.sum(-1, keepdim=True)
    for fn in (duplicate_token_score, induction_score):
        assert torch.allclose(fn(P, T), fn(P, tokens=toks), atol=1e-6)


def test_sinks_on_any_key_set():
    n = 5
    P = torch.zeros(n, n)
    P[:, 0] = 0.6
    P[:, n - 1] = 0.4  # bidirectional: every row on [CLS]=0 and [SEP]=4
    assert float(sink_score(P, causal=False)) == pytest.approx(0.6)  # rows 1..4
    assert float(sink_score(P, keys=[4], causal=False)) == pytest.approx(0.4)  # rows 0..3
    assert float(sink_score(P, keys=[0, 4], causal=False)) == pytest.approx(1.0)
    # per-sequence key masks: [SEP] at a different place in each padded sequence
    Pb = torch.zeros(2, 1, n, n)
    Pb[0, 0, :, 4] = 1.0
    Pb[1, 0, :, 2] = 1.0
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    sep = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    s = sink_score(Pb, keys=sep, causal=False, padding_mask=pad)
    assert torch.allclose(s, torch.ones(2, 1))
    with pytest.raises(ValueError, match="keys"):
        sink_score(P, keys=[5], causal=False)
    with pytest.raises(ValueError, match="keys"):
        sink_score(P, keys=[], causal=False)
    with pytest.raises(ValueError, match="keys mask"):
        sink_score(P, keys=torch.ones(3, dtype=torch.bool), causal=False)


def test_head_table_4d_5d_optional_period_and_top_heads():
    n = 8
    heads = torch.stack([shifted(n, 1), shifted(n, -1), torch.eye(n)])  # (H, N, N)
    pats5 = heads.expand(2, 3, 3, n, n).clone()  # (L, B, H, N, N)
    pats5[1, :, 2] = 0
    pats5[1, :, 2, :, 0] = 1.0  # layer 1, head 2: all mass on [CLS]
    tab = head_table(pats5, causal=False, target_rows_only=True,
                     sinks={"cls": (0,), "last": (n - 1,)})
    assert set(tab) == {"previous", "next", "cls", "last"}  # no period: no repetition scores
    assert tab["previous"].shape == (2, 3)
    assert float(tab["previous"][0, 0]) == 1.0 and float(tab["next"][0, 1]) == 1.0
    top = top_heads(tab, k=2)
    assert top["previous"][0][:2] in ((0, 0), (1, 0)) and top["previous"][0][2] == 1.0
    assert top["cls"][0] == (1, 2, 1.0)
    assert top_heads(tab, k=1, layers=[0])["cls"][0][0] == 0
    tab4 = head_table(pats5[0], causal=False)  # (B, H, N, N)
    assert tab4["previous"].shape == (3,)
    assert torch.allclose(tab4["previous"], tab["previous"][0] * 7 / 8)
    with_period = head_table(pats5, period=4, causal=False)
    assert {"duplicate", "induction"} <= set(with_period)
    with pytest.raises(ValueError, match="patterns"):
        head_table(heads, causal=False)


# --- property tests: every detector against a plain loop (random shapes and padding) -------


def loop_reference(P, pad, nq, target_of):
    """(B, H) mean over real query rows with a target of the mass on `target_of(b, p)`
    (p = the query's position; None or [] = row not scored, where noted)."""
    B, H, _, nk = P.shape
    out = torch.full((B, H), float("nan"))
    for b in range(B):
        for h in range(H):
            tot, rows = 0.0, 0
            for i in range(nq):
                p = nk - nq + i
                if not pad[b, p]:
                    continue
                keys = target_of(b, p)
                if keys is None:
                    continue
                tot += float(P[b, h, i, [k for k in keys if pad[b, k]]].sum())
                rows += 1
            out[b, h] = tot / rows if rows else float("nan")
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(2, 9), st.data())
def test_detectors_match_a_loop(B, H, nk, data):
    nq = data.draw(st.integers(1, nk))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    P = torch.softmax(torch.randn(B, H, nq, nk, generator=g), -1)
    lengths = [data.draw(st.integers(nk - nq + 1, nk)) for _ in range(B)]
    pad = torch.zeros(B, nk, dtype=torch.bool)
    for b, n in enumerate(lengths):
        pad[b, :n] = True
    toks = torch.randint(0, 3, (B, nk), generator=g)
    k = data.draw(st.integers(-3, 3))
    kw = {"causal": False, "padding_mask": pad}

    def offset_keys(b, p):
        return [p - k] if 0 <= p - k < nk else []
    ref = loop_reference(P, pad, nq, offset_keys)  # every real row scored
    torch.testing.assert_close(offset_score(P, k, **kw), ref, atol=1e-5, rtol=0)

    def offset_keys_only(b, p):
        j = p - k
        return [j] if 0 <= j < nk and pad[b, j] else None
    ref = loop_reference(P, pad, nq, offset_keys_only)
    if not torch.isnan(ref).any():
        got = offset_score(P, k, target_rows_only=True, **kw)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)

    def earlier_copies(b, p):
        return [j for j in range(p) if toks[b, j] == toks[b, p] and pad[b, j]] or None
    ref = loop_reference(P, pad, nq, earlier_copies)
    if not torch.isnan(ref).any():
        torch.testing.assert_close(duplicate_token_score(P, tokens=toks, **kw), ref,
                                   atol=1e-5, rtol=0)

    sinks = sorted(set(data.draw(st.lists(st.integers(0, nk - 1), min_size=1, max_size=3))))
    ref = loop_reference(P, pad, nq, lambda b, p: None if p in sinks else sinks)
    if not torch.isnan(ref).any():
        torch.testing.assert_close(sink_score(P, keys=sinks, **kw), ref, atol=1e-5, rtol=0)
