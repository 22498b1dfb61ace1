"""The engine's decode step reads K/V through `ops.paged.paged_decode` straight from the
block tables, the whole batch in one call per layer; prefill chunks, windows, gradients
and a missing numba keep the `paged_attention` path, and both paths agree
(docs/conventions.md §5: exact algorithm, float32 atol=1e-5, rtol=1e-4)."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlab.cache.paged_view as pv
from attnlab.cache.paged import PagedKVCache
from attnlab.ops.paged import paged_attention, paged_attention_reference
from attnlab.serving.engine import Engine, EngineConfig, Request, generate_one
from attnlab.serving.zoo import serving_model

pytestmark = pytest.mark.skipif(not pv.decode_kernel_available(),
                                reason="the paged_decode path needs a compiled kernel")


def fragmented_pool(lens, *, hkv=2, d=16, bs=4, seed=0):
    """A one-layer pool whose sequences' blocks interleave (reserved a few tokens at a
    time in turn), filled with random K/V; returns (pool, tables, lens tensor)."""
    g = torch.Generator().manual_seed(seed)
    pool = PagedKVCache(1, hkv, d, num_blocks=256, block_size=bs, prefix_caching=False)
    for s in range(len(lens)):
        pool.add_sequence(s)
    left = list(lens)
    while any(left):
        for s, n in enumerate(left):
            t = min(n, 3)
            if t:
                slots = pool.reserve(s, t)
                pool.write(0, slots, torch.randn(hkv, t, d, generator=g),
                           torch.randn(hkv, t, d, generator=g))
                left[s] -= t
    return pool, pool.tables_tensor(list(range(len(lens)))), torch.tensor(lens)


def spy(monkeypatch):
    calls = []
    real = pv.paged_decode

    def wrapped(q, *a, **kw):
        calls.append(tuple(q.shape))
        return real(q, *a, **kw)

    monkeypatch.setattr(pv, "paged_decode", wrapped)
    return calls


@pytest.mark.parametrize("hq", [2, 4])  # MHA and GQA (2 query heads per KV head)
def test_decode_read_equals_the_fallback_and_the_reference(monkeypatch, hq):
    lens = [1, 7, 13, 4, 29]  # ragged, odd, one shorter than a block
    pool, tables, L = fragmented_pool(lens)
    q = torch.randn(len(lens), hq, 1, 16, generator=torch.Generator().manual_seed(1))
    calls = spy(monkeypatch)
    fast = pv.paged_attend(pool, 0, tables, L, q, scale=None, window=None, attention=None)
    assert calls == [tuple(q.shape)]  # one call for the whole batch
    kp, vp = pool.k_pool[0], pool.v_pool[0]
    slow = paged_attention(q, kp, vp, tables, L)
    ref = paged_attention_reference(q, kp, vp, tables, L)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 40), min_size=1, max_size=6), groups=st.sampled_from([1, 2, 3]),
       bs=st.sampled_from([1, 4, 5]), seed=st.integers(0, 2**16))
def test_property_decode_read_equals_the_fallback(lens, groups, bs, seed):
    """Property test (hypothesis): ragged lengths, block sizes, GQA groups."""
    pool, tables, L = fragmented_pool(lens, bs=bs, seed=seed)
    q = torch.randn(len(lens), 2 * groups, 1, 16, generator=torch.Generator().manual_seed(seed))
    kp, vp = pool.k_pool[0], pool.v_pool[0]
    assert pv.uses_paged_decode(q, kp, vp, None)
    fast = pv.paged_attend(pool, 0, tables, L, q, scale=0.3, window=None, attention=None)
    torch.testing.assert_close(fast, paged_attention(q, kp, vp, tables, L, scale=0.3),
                               atol=1e-5, rtol=1e-4)


def test_fallback_cases_do_not_use_paged_decode(monkeypatch):
    pool, tables, L = fragmented_pool([5, 9])
    kp, vp = pool.k_pool[0], pool.v_pool[0]
    q1 = torch.randn(2, 2, 1, 16)
    assert pv.uses_paged_decode(q1, kp, vp, None)
    assert not pv.uses_paged_decode(q1, kp, vp, 4)  # window
    assert not pv.uses_paged_decode(torch.randn(2, 2, 3, 16), kp, vp, None)  # prefill chunk
    assert not pv.uses_paged_decode(q1.to(torch.float64), kp, vp, None)  # dtype it lacks
    assert not pv.uses_paged_decode(q1.clone().requires_grad_(), kp, vp, None)  # gradient
    with torch.no_grad():  # no gradient is recorded: the kernel may run
        assert pv.uses_paged_decode(q1.clone().requires_grad_(), kp, vp, None)
    monkeypatch.setattr(pv, "decode_kernel_available", lambda: False)
    assert not pv.uses_paged_decode(q1, kp, vp, None)  # no compiled kernel

    # a query that needs a gradient still gets one, through the fallback
    monkeypatch.undo()
    calls = spy(monkeypatch)
    q = q1.clone().requires_grad_()
    out = pv.paged_attend(pool, 0, tables, L, q, scale=None, window=None, attention=None)
    out.sum().backward()
    assert calls == [] and q.grad is not None and bool(torch.isfinite(q.grad).all())


def test_engine_decode_steps_go_through_paged_decode(monkeypatch):
    """Spy on the kernel during an engine run: every decode step of the batch calls it
    once per layer with Nq == 1 and B > 1; the tokens equal `generate` one at a time and
    a run with the kernel disabled (the fallback path)."""
    model = serving_model("gqa", d_model=32, max_seq_len=128)
    rng = random.Random(3)
    reqs = [Request([rng.randrange(101) for _ in range(rng.randint(1, 20))],
                    rng.randint(2, 10), arrival_step=rng.randint(0, 3)) for _ in range(6)]
    ref = [generate_one(model, r.prompt, r.max_new_tokens) for r in reqs]
    cfg = EngineConfig(num_blocks=120, block_size=4, max_batch_tokens=32, prefill_chunk=8)

    calls = spy(monkeypatch)
    got = [r.tokens for r in Engine(model, cfg).run(reqs)]
    assert got == ref
    assert calls and all(c[2] == 1 for c in calls)
    assert max(c[0] for c in calls) > 1  # several sequences in one call

    monkeypatch.undo()
    calls_off = spy(monkeypatch)
    monkeypatch.setattr(pv, "decode_kernel_available", lambda: False)
    assert [r.tokens for r in Engine(model, cfg).run(reqs)] == ref
    assert calls_off == []


def test_engine_decode_logits_equal_the_fallback(monkeypatch):
    """Every decode batch of an engine run, forwarded twice on the same engine state
    (slots reserved once; the second forward rewrites the same K/V): the logits through
    `paged_decode` equal those of the fallback path."""
    model = serving_model("mha", d_model=32, max_seq_len=128)
    rng = random.Random(5)
    reqs = [Request([rng.randrange(101) for _ in range(rng.randint(1, 30))], 6)
            for _ in range(5)]
    eng = Engine(model, EngineConfig(num_blocks=120, block_size=4, max_batch_tokens=64,
                                     prefill_chunk=32))
    real, compared = eng._forward, []

    def both(items):
        fast = real(items)
        if items[0][1] == 1:  # a decode batch
            with monkeypatch.context() as m:
                m.setattr(pv, "numba_available", lambda: False)
                slow = real(items)
            torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
            compared.append(len(items))
        return fast

    eng._forward = both
    assert [r.tokens for r in eng.run(reqs)] == \
        [generate_one(model, r.prompt, r.max_new_tokens) for r in reqs]
    assert compared and max(compared) > 1
