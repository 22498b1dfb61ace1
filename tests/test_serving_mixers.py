"""Every mixer kind served by the engine == `generate` one sequence at a time, token for
token: random arrivals, preemption by swap and by recompute (forced at random steps and
by a small pool), prefix sharing; windowed layers keep O(W) blocks per sequence."""
import random

import pytest
import torch

from attnlab.serving.engine import Engine, EngineConfig, Request, generate_one
from attnlab.serving.zoo import MODEL_KINDS, serving_model

KINDS = MODEL_KINDS
PAGED_FULL = {"mha", "gqa", "mqa", "mla"}  # prefix caching applies (one full-attention group)


def make(kind):
    return serving_model(kind, d_model=32, window=6, max_seq_len=128)


def requests(seed, n=6):
    rng = random.Random(seed)
    return [Request([rng.randrange(101) for _ in range(rng.randint(1, 24))],
                    rng.randint(1, 14), arrival_step=rng.randint(0, 6)) for _ in range(n)]


_REF: dict = {}


def reference(kind):
    if kind not in _REF:
        model = make(kind)
        reqs = requests(1)
        _REF[kind] = model, reqs, [generate_one(model, r.prompt, r.max_new_tokens) for r in reqs]
    return _REF[kind]


def run_forced(model, reqs, cfg, seed):
    """Run with a preemption forced on a random running request every few steps."""
    eng, rng = Engine(model, cfg), random.Random(seed)
    ids = [eng.add_request(r) for r in reqs]
    while not eng.done:
        if eng.running and rng.random() < 0.3:
            assert eng.preempt(rng.choice(eng.running).rid)
        eng.step()
        eng.cache.check_invariants()
    return eng, [eng.results[i].tokens for i in ids]


@pytest.mark.parametrize("kind", KINDS)
def test_engine_equals_generate_one_at_a_time(kind):
    model, reqs, ref = reference(kind)
    eng = Engine(model, EngineConfig(num_blocks=120, block_size=4, max_batch_tokens=32,
                                     prefill_chunk=8))
    assert [r.tokens for r in eng.run(reqs)] == ref
    assert max(eng.stats.batch_sizes) > 1 and eng.stats.preemptions == 0
    assert eng.cache.n_owned == 0 and eng.cache.used_nbytes == 0  # all freed at the end


@pytest.mark.parametrize("mode", ["swap", "recompute"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_preemption_continuation_is_identical(kind, mode):
    model, reqs, ref = reference(kind)
    cfg = EngineConfig(num_blocks=120, block_size=4, max_batch_tokens=32, prefill_chunk=8,
                       preemption=mode)
    eng, got = run_forced(model, reqs, cfg, seed=len(kind))
    assert got == ref and eng.stats.preemptions > 0
    assert (eng.stats.swapped_bytes if mode == "swap" else eng.stats.recomputed_tokens) > 0
    if kind in ("gqa", "window", "hybrid-ssd", "mla"):  # and by memory pressure
        small = EngineConfig(num_blocks=14, block_size=4, max_batch_tokens=32,
                             prefill_chunk=8, preemption=mode)
        eng = Engine(model, small)
        assert [r.tokens for r in eng.run(reqs)] == ref
        assert eng.stats.preemptions > 0


@pytest.mark.parametrize("kind", KINDS)
def test_shared_prefix_gives_the_unshared_continuation(kind):
    model = make(kind)
    prefix = [(7 * i + 3) % 101 for i in range(21)]
    reqs = [Request(prefix + [5], 6), Request(prefix + [9, 4], 6, arrival_step=6)]
    eng = Engine(model, EngineConfig(num_blocks=64, block_size=4, prefill_chunk=8))
    got = [r.tokens for r in eng.run(reqs)]
    assert got == [generate_one(model, r.prompt, 6) for r in reqs]
    # full-attention pools share the prompt's full blocks; models with windowed or
    # recurrent layers recompute the prefix (serving.state_slots documents the choice)
    assert eng.stats.prefix_hit_tokens == (20 if kind in PAGED_FULL else 0)


def test_windowed_memory_per_sequence_is_flat_beyond_the_window():
    model = make("window")
    peaks = {}
    for n in (40, 70):
        eng = Engine(model, EngineConfig(num_blocks=64, block_size=4, prefill_chunk=8))
        rid = eng.add_request(Request([3] * 8, n))
        peak = 0
        while not eng.done:
            eng.step()
            if eng.cache.has_sequence(rid):
                peak = max(peak, eng.cache.sequence_nbytes(rid))
        peaks[n] = peak
    per_block = eng.cache.pools[0].bytes_per_block
    assert peaks[40] == peaks[70] <= (-(-(6 - 1 + 8) // 4) + 1) * per_block
    full = Engine(make("gqa"), EngineConfig(num_blocks=64, block_size=4, prefill_chunk=8))
    rid = full.add_request(Request([3] * 8, 70))
    while full.cache.has_sequence(rid) or not full.done:
        if full.cache.has_sequence(rid):
            grown = full.cache.sequence_nbytes(rid)
        full.step()
    assert grown > 3 * peaks[70]  # a full-attention sequence keeps growing


def test_mla_pool_stores_the_latent_once():
    model = make("mla")
    spec = model.blocks[0].mixer.spec
    eng = Engine(model, EngineConfig(num_blocks=8, block_size=4))
    (pool,) = eng.cache.pools
    assert pool.values_are_keys and pool.v_pool is pool.k_pool
    # 2 layers × (kv_lora_rank + rope key) elements × 4 tokens × 4 bytes: no values
    assert pool.bytes_per_block == 2 * (spec.kv_lora_rank + spec.qk_rope_head_dim) * 4 * 4
    assert eng.cache.blocks_for(30, 8) == 8


def test_measured_sequence_memory_equals_the_layout_formula():
    from attnlab.serving.measure import sequence_memory

    for kind in ("window", "hybrid-ssd", "ssd"):
        got = sequence_memory(kind, [40, 150, 300], d_model=32, window=16, prefill_chunk=32)
        assert all(v["measured"] == v["formula"] > 0 for v in got.values()), (kind, got)
    assert got[40]["measured"] == got[300]["measured"]  # SSD: constant state
    win = sequence_memory("window", [150, 300], d_model=32, window=16, prefill_chunk=32)
    assert win[150] == win[300]  # flat beyond the window


@pytest.mark.parametrize("kind", ["window", "mla"])
def test_model_on_a_paged_batch_view_equals_contiguous(kind):
    """`model(tokens, pool.batch_view(ids))`: the model's forward on a windowed pool
    (which releases blocks behind the window) or a latent pool equals the contiguous
    cache, chunked prefill and decode alike; the view reads blocks in place."""
    from attnlab.cache.paged import EVICTED, PagedKVCache

    model = make(kind)
    lay = model.blocks[0].mixer.serving_layout()
    pool = PagedKVCache(2, lay.n_kv_heads, lay.head_dim, 40, 4, lay.v_head_dim,
                        prefix_caching=False, window=lay.window,
                        values_are_keys=lay.values_are_keys)
    for s in ("a", "b"):
        pool.add_sequence(s)
    view, cont = pool.batch_view(["a", "b"]), model.new_cache(2, 40)
    toks = torch.randint(0, 101, (2, 31), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for lo, hi in ((0, 13), (13, 14), (14, 22), (22, 23), (23, 31)):
            torch.testing.assert_close(model(toks[:, lo:hi], view), model(toks[:, lo:hi], cont),
                                       atol=2e-5, rtol=1e-4)
    pool.check_invariants()
    if kind == "window":  # W = 6, block 4: blocks before the last chunk's window released
        assert EVICTED in pool.block_table("a") and pool.live_blocks("a") <= 4


def test_engine_serves_hf_style_layers_through_their_own_forward():
    """q/k norms, YaRN-scaled RoPE and q/k/v biases (Qwen/OLMo-style checkpoints) live
    in the layer's forward; the engine calls it, so it serves them unchanged."""
    from attnlab.layers.attention import AttentionSpec
    from attnlab.models.config import ModelConfig
    from attnlab.models.lm import TinyLM
    from attnlab.ops.rope_scaling import RopeScaling

    torch.manual_seed(0)
    spec = AttentionSpec(n_heads=4, n_kv_heads=2, qk_norm="head", bias=(True, True, True, False),
                         rope_scaling=RopeScaling(kind="yarn", factor=4.0,
                                                  original_max_position=32))
    model = TinyLM(ModelConfig(vocab_size=101, d_model=32, n_layers=2, mixers=spec,
                               max_seq_len=128, init_std=0.1)).eval()
    reqs = requests(5, n=4)
    eng = Engine(model, EngineConfig(num_blocks=20, block_size=4, max_batch_tokens=32,
                                     prefill_chunk=8))
    assert [r.tokens for r in eng.run(reqs)] == \
        [generate_one(model, r.prompt, r.max_new_tokens) for r in reqs]
