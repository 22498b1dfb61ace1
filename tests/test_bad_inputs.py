"""Issue 2's bad-input list in one place (conventions §6): each error names the argument, its
value and what was expected. Device mismatches use the 'meta' device, so they are tested
without a GPU (every check here fires before any compute)."""
from __future__ import annotations

import pytest
import torch

from attnlab import masks as M
from attnlab.analysis.configs import get_config
from attnlab.cache import CacheOverflowError, ContiguousKVCache, LatentKVCache, StaticCrossCache
from attnlab.cli import _load_commands, app
from attnlab.layers import AttentionSpec, MLASpec
from attnlab.layers.attention import Attention
from attnlab.layers.convert import mha_to_gqa
from attnlab.layers.cross import CrossAttention
from attnlab.layers.mla import MultiLatentAttention
from attnlab.models import ModelConfig, TinyLM, generate
from attnlab.ops.rope import apply_rope
from attnlab.ops.softmax import attention, attention_reference

MLA = {"n_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
       "v_head_dim": 8}


def qkv(Hq=4, Hkv=2, N=3, D=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, Hq, N, D, generator=g), torch.randn(1, Hkv, N, D, generator=g),
            torch.randn(1, Hkv, N, D, generator=g))


q, k, v = qkv()
META = torch.device("meta")

CASES = [  # (label, call, exception, message pattern)
    # head counts that do not divide
    ("Attention heads", lambda: Attention(48, 12, 5), ValueError,
     r"n_heads \(12\) must be divisible by n_kv_heads \(5\)"),
    ("AttentionSpec heads", lambda: AttentionSpec(6, 4), ValueError,
     r"n_heads \(6\) must be divisible by n_kv_heads \(4\)"),
    ("CrossAttention heads", lambda: CrossAttention(48, 6, 4), ValueError,
     r"n_heads \(6\) must be divisible by n_kv_heads \(4\)"),
    ("head_dim from d_model", lambda: CrossAttention(30, 4), ValueError,
     r"d_model \(30\) must be divisible by n_heads \(4\)"),
    ("mha_to_gqa groups", lambda: mha_to_gqa(Attention(64, 8), 3), ValueError,
     r"layer.n_kv_heads \(8\) must be divisible by n_kv_heads \(3\)"),
    ("op q/k heads", lambda: attention(torch.randn(1, 3, 3, 8), k, v), ValueError,
     r"q heads \(3\) must be divisible by k/v heads \(2\)"),
    # wrong ranks or shapes
    ("op rank", lambda: attention_reference(q[0], k, v), ValueError,
     r"q must have 4 dimensions, got shape \(4, 3, 8\)"),
    ("op v length", lambda: attention(q, k, v[:, :, :2]), ValueError,
     r"v shape \(1, 2, 2, 8\) must match k in heads and length \(2, 3\)"),
    ("op head_dim", lambda: attention(q, k[..., :4], v), ValueError,
     r"k head_dim \(4\) must equal q head_dim \(8\)"),
    ("layer rank", lambda: Attention(32, 4)(torch.randn(5, 32)), ValueError,
     r"x must have 3 dimensions, got shape \(5, 32\)"),
    ("cross encoder width", lambda: CrossAttention(32, 4, d_encoder=16)(
        torch.randn(1, 2, 32), torch.randn(1, 5, 32)), ValueError,
     r"encoder_out last dimension \(32\) must equal d_model \(16\)"),
    ("cache update shape", lambda: ContiguousKVCache(1, 1, 2, 8, 10).update(
        0, torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8)), ValueError,
     r"k has shape \(1, 3, 2, 8\); expected \(1, 2, T, 8\)"),
    ("latent update shape", lambda: LatentKVCache(1, 1, 16, 4, 10).update(
        0, torch.randn(1, 2, 8), torch.randn(1, 2, 4)), ValueError,
     r"c_kv has shape \(1, 2, 8\); expected \(1, T, 16\)"),
    ("rope positions", lambda: apply_rope(q, torch.arange(4)), ValueError,
     r"positions must have shape \(3,\), got \(4,\)"),
    ("reference q_pos", lambda: attention_reference(q, k, v, mask=M.causal(),
                                                    q_pos=torch.arange(5)), ValueError,
     r"q_pos must have shape \(3,\), got \(5,\)"),
    # mismatched dtypes
    ("op dtypes", lambda: attention(q.half(), k, v), TypeError,
     r"k has dtype torch.float32 but q has dtype torch.float16"),
    ("layer dtype", lambda: Attention(32, 4)(torch.randn(1, 2, 32, dtype=torch.float64)),
     TypeError, r"x has dtype torch.float64 but the layer's weights are torch.float32"),
    ("cache dtype", lambda: ContiguousKVCache(1, 1, 2, 8, 10).update(0, k.double(), v.double()),
     TypeError, r"k has dtype torch.float64; this cache stores torch.float32"),
    # mismatched devices (meta tensors: no GPU needed)
    ("op devices", lambda: attention(q, k.to(META), v), ValueError,
     r"k is on meta but q is on cpu; expected one device"),
    ("reference devices", lambda: attention_reference(q, k, v.to(META)), ValueError,
     r"v is on meta but q is on cpu; expected one device"),
    ("layer device", lambda: Attention(32, 4)(torch.randn(1, 2, 32, device=META)), ValueError,
     r"x is on meta but the layer's weights are on cpu; expected cpu"),
    ("MLA device", lambda: MultiLatentAttention(32, MLASpec(**MLA))(
        torch.randn(1, 2, 32, device=META)), ValueError, r"x is on meta but the layer's weights"),
    ("cross encoder device", lambda: CrossAttention(32, 4)(
        torch.randn(1, 2, 32), torch.randn(1, 5, 32, device=META)), ValueError,
     r"encoder_out is on meta but the layer's weights are on cpu"),
    ("cache device", lambda: ContiguousKVCache(1, 1, 2, 8, 10).update(0, k.to(META), v.to(META)),
     ValueError, r"k is on meta; this cache lives on cpu"),
    ("layer vs cache device", lambda: Attention(32, 4)(
        torch.randn(1, 2, 32), cache=ContiguousKVCache(1, 1, 4, 8, 10, device=META)),
     ValueError, r"k is on cpu; this cache lives on meta"),
    ("static cache devices", lambda: StaticCrossCache(1).set(0, k, v.to(META)), ValueError,
     r"v is on meta but k is on cpu; expected one device"),
    # window < 1
    ("mask window", lambda: M.sliding_window(0), ValueError, r"window \(0\) must be >= 1"),
    ("layer window", lambda: Attention(32, 4, window=-2), ValueError,
     r"window \(-2\) must be >= 1"),
    ("spec window", lambda: AttentionSpec(4, window=0), ValueError, r"window \(0\) must be >= 1"),
    ("window type", lambda: M.sliding_window(2.5), TypeError, r"window must be an int"),
    # unknown backend
    ("op backend", lambda: attention(q, k, v, backend="magic"), ValueError,
     r"backend \('magic'\) must be 'auto' or one of \[.*'reference'.*\]"),
    ("layer backend", lambda: Attention(32, 4, backend="magic"), ValueError,
     r"backend \('magic'\) must be 'auto' or one of"),
    ("cross backend", lambda: CrossAttention(32, 4, backend="magic"), ValueError,
     r"backend \('magic'\) must be 'auto' or one of"),
    ("MLA backend", lambda: MLASpec(**MLA, backend="magic"), ValueError,
     r"backend \('magic'\) must be 'auto' or one of"),
    # unknown model name
    ("model name", lambda: get_config("gpt-5"), ValueError,
     r"unknown model \('gpt-5'\); known models: .*Llama-2-70B"),
    # a context longer than a cache's capacity
    ("cache overflow", lambda: ContiguousKVCache(1, 1, 2, 8, 4).update(
        0, torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)), CacheOverflowError,
     r"0 stored \+ 5 new = 5 tokens requested, capacity is 4"),
    ("static cache overflow", lambda: StaticCrossCache(1, capacity=2).set(0, k, v),
     CacheOverflowError, r"encoder length \(3\) exceeds capacity \(2\)"),
]


@pytest.mark.parametrize("label,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(label, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_unknown_model_on_the_cli():
    from typer.testing import CliRunner

    _load_commands()
    res = CliRunner().invoke(app, ["kv", "gpt-5", "--json"])
    assert res.exit_code != 0
    assert "unknown model ('gpt-5')" in res.output and "Llama-2-70B" in res.output


def _model(mixers, max_seq_len=64):
    torch.manual_seed(0)
    n = len(mixers) if isinstance(mixers, list) else 2
    return TinyLM(ModelConfig(50, 32, n, mixers, d_ff=48, max_seq_len=max_seq_len))


def _checksum(cache) -> list[float]:
    """Per layer: sum and sum of squares of every stored slab (stored tokens and empty)."""
    out = []
    for c in cache.caches:
        for buf in c.buffers:
            b = buf.detach().double()
            out += [float(b.sum()), float(b.pow(2).sum())]
    return out


def test_tinylm_overflow_leaves_every_layer_and_sequence_intact():
    """conventions §4: an append that does not fit raises before anything is written."""
    model = _model([AttentionSpec(4, 2), MLASpec(**MLA, absorb=True), AttentionSpec(4, 1)])
    cache = model.new_cache(2, 6)
    toks = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    model(toks[:, :4], cache)
    before, lens = _checksum(cache), [cache.seq_len(i) for i in range(3)]
    with pytest.raises(CacheOverflowError, match=r"4 stored \+ 3 new = 7 .*capacity is 6"):
        model(toks[:, 4:7], cache)
    assert _checksum(cache) == before and [cache.seq_len(i) for i in range(3)] == lens
    # the cache still works: the two tokens that fit give the parallel forward's logits
    torch.testing.assert_close(model(toks[:, 4:6], cache), model(toks[:, :6])[:, 4:],
                               atol=1e-5, rtol=1e-4)


def test_latent_cache_overflow_is_checked_before_writing():
    cache = LatentKVCache(2, 2, 16, 4, capacity=5)
    g = torch.Generator().manual_seed(0)
    for layer in (0, 1):
        cache.update(layer, torch.randn(2, 4, 16, generator=g), torch.randn(2, 4, 4, generator=g))
    before = [b.clone() for b in cache.buffers]
    with pytest.raises(CacheOverflowError, match=r"4 stored \+ 2 new = 6 .*capacity is 5"):
        cache.update(1, torch.randn(2, 2, 16), torch.randn(2, 2, 4))
    for b0, b1 in zip(before, cache.buffers):
        torch.testing.assert_close(b1, b0, atol=0, rtol=0)
    assert cache.seq_len(1) == 4 and cache.used_nbytes == 2 * 2 * 4 * (16 + 4) * 4


def test_tinylm_and_generate_beyond_max_seq_len_raise_before_any_forward():
    model = _model(AttentionSpec(4, 2), max_seq_len=8)
    calls = []
    model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"positions up to 9 exceed max_seq_len \(8\)"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"max_new_tokens \(5\) with a prompt of 5 tokens needs "
                                         r"9 positions; expected at most max_seq_len \(8\)"):
        generate(model, torch.zeros(1, 5, dtype=torch.long), 5)
    assert calls == []
    # the last sampled token is never fed back: 5 + 4 tokens use positions 0..7 only
    assert generate(model, torch.zeros(1, 5, dtype=torch.long), 4).shape == (1, 9)
    # a cache shorter than the request overflows at prefill, before any layer writes
    cache = model.new_cache(1, 4)
    with pytest.raises(CacheOverflowError, match=r"capacity is 4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)
    assert [cache.seq_len(i) for i in range(2)] == [0, 0]


def test_alibi_with_too_few_slopes_names_them():
    from attnlab.ops.softmax import alibi, alibi_slopes

    with pytest.raises(ValueError, match=r"slopes has 2 entries but query head 3 was scored"):
        attention_reference(q, k, v, score_mod=alibi(alibi_slopes(2)))
