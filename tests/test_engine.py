"""Continuous-batching engine: batched greedy == one request at a time (the model's own
contiguous-cache `generate`), under preemption by swap and by recompute, with other
sequences' stored K/V untouched; EOS; prefix caching; bad input."""
import random

import pytest
import torch

from attnlab.grill.answers._tiny import tiny_lm
from attnlab.layers.attention import Attention, AttentionSpec
from attnlab.models.config import ModelConfig
from attnlab.models.lm import TinyLM
from attnlab.serving.engine import Engine, EngineConfig, Request, generate_one


@pytest.fixture(scope="module")
def model():
    return tiny_lm(seed=0, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)


def random_requests(n, seed, max_prompt=40, max_new=24, spread=8):
    rng = random.Random(seed)
    return [Request([rng.randrange(101) for _ in range(rng.randint(1, max_prompt))],
                    rng.randint(1, max_new), arrival_step=rng.randint(0, spread))
            for _ in range(n)]


@pytest.fixture(scope="module")
def reqs_and_reference(model):
    reqs = random_requests(8, seed=0)
    return reqs, [generate_one(model, r.prompt, r.max_new_tokens) for r in reqs]


def test_batched_equals_one_at_a_time(model, reqs_and_reference):
    reqs, ref = reqs_and_reference
    eng = Engine(model, EngineConfig(num_blocks=200, block_size=4, max_batch_tokens=48,
                                     prefill_chunk=16))
    res = eng.run(reqs)
    assert [r.tokens for r in res] == ref
    assert max(eng.stats.batch_sizes) > 1  # requests really shared steps
    assert eng.stats.preemptions == 0
    eng.cache.check_invariants()
    assert eng.cache.n_owned == 0  # everything freed at the end


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_continuation_is_identical(model, reqs_and_reference, mode):
    reqs, ref = reqs_and_reference
    eng = Engine(model, EngineConfig(num_blocks=20, block_size=4, max_batch_tokens=48,
                                     prefill_chunk=16, preemption=mode))
    res = eng.run(reqs)
    assert eng.stats.preemptions > 0
    assert sum(r.preemptions for r in res) == eng.stats.preemptions
    assert [r.tokens for r in res] == ref
    if mode == "swap":
        assert eng.stats.swapped_bytes > 0
    else:
        assert eng.stats.recomputed_tokens > 0
    eng.cache.check_invariants()


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_never_touches_other_sequences(model, mode):
    """Checksums of every resident sequence's stored K/V prefix, before and after each step."""
    eng = Engine(model, EngineConfig(num_blocks=10, block_size=4, max_batch_tokens=32,
                                     prefill_chunk=8, preemption=mode))
    for r in random_requests(6, seed=3, max_prompt=12, max_new=20, spread=1):
        eng.add_request(r)
    seen_preempt = False
    while not eng.done:
        before = {}
        for s in eng.running:
            n = s.computed
            sums = [torch.cat(eng.cache.gather(s.rid, li), -1)[:, :n].double().sum()
                    for li in range(model.cfg.n_layers)]
            before[s.rid] = (n, sums)
        p0 = eng.stats.preemptions
        eng.step()
        seen_preempt |= eng.stats.preemptions > p0
        for rid, (n, sums) in before.items():
            if eng.cache.has_sequence(rid):
                now = [torch.cat(eng.cache.gather(rid, li), -1)[:, :n].double().sum()
                       for li in range(model.cfg.n_layers)]
                assert now == sums, f"sequence {rid}'s stored K/V changed"
        eng.cache.check_invariants()
    assert seen_preempt


def test_eos_stops_request(model, reqs_and_reference):
    reqs, ref = reqs_and_reference
    eos = ref[0][2]  # the third greedy token of request 0 becomes its EOS
    r = Request(reqs[0].prompt, reqs[0].max_new_tokens, eos_id=eos)
    (res,) = Engine(model, EngineConfig(num_blocks=64)).run([r])
    assert res.finish_reason == "eos" and res.tokens == generate_one(
        model, r.prompt, r.max_new_tokens, eos_id=eos)
    assert res.tokens[-1] == eos and len(res.tokens) <= 3


def test_prefix_cache_hits_and_same_tokens(model):
    prompt = list(range(1, 38))
    reqs = [Request(prompt + [5], 6), Request(prompt + [9], 6, arrival_step=8)]
    eng = Engine(model, EngineConfig(num_blocks=64, block_size=8))
    res = eng.run(reqs)
    assert eng.stats.prefix_hit_tokens == 32  # the 4 full blocks of the shared prompt
    assert [r.tokens for r in res] == [generate_one(model, r.prompt, 6) for r in reqs]


def test_bad_input(model):
    with pytest.raises(ValueError, match="preemption"):
        EngineConfig(num_blocks=4, preemption="drop")
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(num_blocks=4, block_size=0)
    eng = Engine(model, EngineConfig(num_blocks=2, block_size=4))
    with pytest.raises(ValueError, match="blocks"):
        eng.add_request(Request([1, 2, 3], 10))
    with pytest.raises(ValueError, match="prompt"):
        eng.add_request(Request([], 3))
    with pytest.raises(ValueError, match=r"\[0, 101\)"):
        eng.add_request(Request([500], 1))
    torch.manual_seed(0)
    bidir = TinyLM(ModelConfig(vocab_size=11, d_model=16, n_layers=1,
                               mixers=AttentionSpec(n_heads=2)))
    bidir.blocks[0].mixer = Attention(16, 2, causal=False)
    with pytest.raises(ValueError, match=r"blocks\[0\].mixer \(Attention\) is not servable"):
        Engine(bidir, EngineConfig(num_blocks=4))


def test_cli_generate_matches_alone_under_preemption():
    import json

    from typer.testing import CliRunner

    from attnlab.cli import _load_commands, app

    _load_commands()
    r = CliRunner().invoke(app, ["generate", "--random", "4", "-n", "12", "--num-blocks", "24",
                                 "--block-size", "4", "--preemption", "swap", "--check",
                                 "--json", "-p", "1,2,3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["requests"]) == 5
    assert all(q["same_as_alone"] for q in out["requests"])
    assert out["stats"]["preemptions"] > 0
    r = CliRunner().invoke(app, ["generate", "--model", "hybrid-window", "--window", "4",
                                 "--random", "3", "-n", "10", "--num-blocks", "16",
                                 "--block-size", "4", "--check", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert all(q["same_as_alone"] for q in out["requests"])
    st = out["stats"]
    assert st["model"] == "hybrid-window" and st["generated_tokens"] == 30
    assert 0 < st["kv_peak_in_use_bytes"] <= st["kv_pool_bytes"] and st["tokens_per_s"] > 0
    bad = CliRunner().invoke(app, ["generate", "--model", "transformer-xl", "-p", "1"])
    assert bad.exit_code != 0 and "--model" in bad.output
    bad = CliRunner().invoke(app, ["generate", "-p", "1,x"])
    assert bad.exit_code != 0 and "comma-separated" in bad.output


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_requests_needing_the_whole_pool_finish(model, mode):
    """Each request needs every block of the pool: they take turns (preempting each
    other) and both finish with their uninterrupted tokens; none waits forever."""
    reqs = [Request(list(range(1, 11)), 14), Request(list(range(20, 30)), 14)]
    eng = Engine(model, EngineConfig(num_blocks=6, block_size=4, preemption=mode,
                                     prefill_chunk=4))
    res = eng.run(reqs, max_steps=500)
    assert [r.tokens for r in res] == [generate_one(model, r.prompt, 14) for r in reqs]
    assert eng.cache.n_owned == 0
