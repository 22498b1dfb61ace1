"""Mutation tests for grill answers Q1–Q25: each breaks what an answer measures (a cache's
size, a layer's projection, a mask's window, an LSH round, a recurrence) and shows at least
one of its non-timing checks fail.

`MUTATIONS` maps a question id to a factory of `(object, attribute, replacement)` patches;
`test_grill_mutation_coverage.py` checks that every answer with measured checks is here.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
from grill_mutation import assert_mutation_fails

ANSWERS = "attnlab.grill.answers"


def _mod(name: str):
    return importlib.import_module(f"{ANSWERS}.{name}")


def _no_timing(module: str, name: str = "median_time", value: float = 1.0) -> tuple:
    """Skip an answer's wall-clock measurements (they feed timing checks only, which a
    mutation test ignores): keeps the mutation run fast."""
    return (_mod(module), name, lambda *a, **kw: value)


# --- KV caches built wrong ------------------------------------------------------------
def _cache_in_fp32() -> tuple:
    """Every cache allocated in fp32 whatever dtype was asked: twice the bytes."""
    from attnlab.analysis.memory import build_cache

    def fp32(cfg, context, batch=1, dtype="fp16", *a, **kw):
        return build_cache(cfg, context, batch, "fp32", *a, **kw)

    return (_mod("_measure"), "build_cache", fp32)


def _cache_ignores_sharing() -> tuple:
    """Caches that keep one K/V head per query head (GQA/MQA sharing ignored)."""
    from attnlab.analysis.memory import build_cache

    def unshared(cfg, *a, **kw):
        return build_cache(cfg if cfg.mla is not None else cfg.variant("mha"), *a, **kw)

    return (_mod("_measure"), "build_cache", unshared)


def _q01():  # the layer silently rotates q/k (RoPE) where MHA's formula has none; fp32 cache
    from attnlab.layers.attention import Attention

    def with_rope(d, n_heads, n_kv_heads=None, rope=False, **kw):
        return Attention(d, n_heads, n_kv_heads, rope=True, **kw)

    return [(_mod("q01_mha"), "Attention", with_rope), _cache_in_fp32()]


def _q02():
    return [_cache_in_fp32()]


def _q03():  # "uptraining" that keeps each group's first K head instead of the mean
    from attnlab.layers.convert import mha_to_gqa

    def first_head(layer, groups):
        out = mha_to_gqa(layer, groups)
        H, D = layer.n_heads, layer.head_dim
        with torch.no_grad():
            w = layer.k_proj.weight.view(groups, H // groups, D, -1)[:, 0]  # (G, D, d)
            out.k_proj.weight.copy_(w.reshape(groups * D, -1))
        return out

    return [(_mod("q03_gqa"), "mha_to_gqa", first_head)]


def _q04():
    return [_cache_in_fp32()]


def _q05():
    return [_cache_ignores_sharing(), _no_timing("q05_gqa_default", "decode_step_ms")]


def _q06():
    return [_cache_ignores_sharing(), _no_timing("q06_mqa_quality", "decode_step_ms")]


def _q07():
    return [_cache_ignores_sharing()]


def _q08():  # the layer forgets RoPE that the hand-written forward applies
    from attnlab.layers.attention import Attention

    def no_rope(d, n_heads, n_kv_heads=None, **kw):
        return Attention(d, n_heads, n_kv_heads, rope=False, **kw)

    return [(_mod("q08_mqa_forward"), "Attention", no_rope)]


def _q09():  # a "causal" mask that leaks the next token
    from attnlab.masks import Mask

    return [(_mod("q09_causal_mask"), "causal",
             lambda: Mask(lambda b, h, q, k: k <= q + 1, "leaky_causal"))]


def _bidirectional_tiny_lm(*a, **kw):
    """The grill's TinyLM with its attention masks removed: the parallel pass sees the future."""
    from attnlab.grill.answers._tiny import tiny_lm

    model = tiny_lm(*a, **kw)
    for block in model.blocks:
        block.mixer.mask = None
    return model


def _q10():
    return [(_mod("q10_parallel_training"), "tiny_lm", _bidirectional_tiny_lm),
            _no_timing("q10_parallel_training")]


def _q11():  # cross-attention at the wrong temperature
    from attnlab.layers.cross import CrossAttention

    return [(_mod("q11_cross_attention"), "CrossAttention",
             lambda *a, **kw: CrossAttention(*a, **kw, scale=0.5))]


def _q12():  # a cross-attention that ignores its cache and re-projects every step
    from attnlab.layers.cross import CrossAttention

    class Reprojecting(CrossAttention):
        def forward(self, x, encoder_out=None, cache=None, encoder_mask=None):
            if encoder_out is not None:
                self._enc = encoder_out
            return super().forward(x, self._enc, None, encoder_mask)

    return [(_mod("q12_cross_cache"), "CrossAttention", Reprojecting)]


def _q13():  # a "prefix-LM" mask that is plain causal
    from attnlab.masks import causal

    return [(_mod("q13_decoder_only"), "prefix_lm", lambda P: causal())]


def _wider_window(module: str) -> tuple:
    """The answer's `sliding_window(W)` silently builds a window of W + 1 keys."""
    from attnlab.masks import sliding_window

    return (_mod(module), "sliding_window", lambda W: sliding_window(W + 1))


def _q14():
    return [_wider_window("q14_sliding_window")]


def _q15():
    return [_wider_window("q15_stacked_windows")]


def _q16():  # the "Longformer" pattern loses its global token
    from attnlab.grill.answers._sparse import band

    return [(_mod("q16_global_tokens"), "window_plus_globals", lambda r, g: band(r))]


def _q17():
    return [_wider_window("q17_window_tradeoff")]


def _q18():  # an LSH kernel that counts a key seen in both hash rounds twice
    from attnlab.ops.lsh import lsh_attention

    return [(_mod("q18_sparse_in_production"), "lsh_attention",
             lambda *a, **kw: lsh_attention(*a, **{**kw, "dedup": False})),
            _no_timing("q18_sparse_in_production")]


def _q19():  # "BigBird" without its random blocks
    from attnlab.masks import bigbird

    def no_random(n, b, w, g, r, **kw):
        return bigbird(n, b, w, g, 0, **kw)

    return [(_mod("q19_bigbird"), "bigbird", no_random)]


def _q20():  # an LSH kernel at the wrong softmax temperature
    from attnlab.ops.lsh import lsh_attention

    def hot(qk, v, **kw):
        return lsh_attention(qk, v, **{**kw, "scale": 2.0 / qk.shape[-1] ** 0.5})

    return [(_mod("q20_reformer_lsh"), "lsh_attention", hot),
            (importlib.import_module("attnlab.analysis.lsh_quality"), "lsh_attention", hot)]


def _q21():  # "linear" attention that silently evaluates the N×N order
    from attnlab.ops.linear import linear_attention

    return [(_mod("q21_linear_attention"), "linear_attention",
             lambda q, k, v, **kw: linear_attention(q, k, v, **{**kw, "mode": "parallel"})),
            _no_timing("q21_linear_attention")]


def _q22():  # a decode step that forgets the state it was handed
    import attnlab.layers.linear_attention as la

    real = la.linear_attention_features

    def forgetful(qf, kf, v, *, initial_state=None, **kw):
        return real(qf, kf, v, **kw)

    return [(la, "linear_attention_features", forgetful)]


def _q23():  # "linear" attention that is secretly softmax attention
    from attnlab.ops.softmax import attention

    def softmax_in_disguise(q, k, v, causal=True, **kw):
        return attention(q, k, v, scale=1.0)

    return [(_mod("q23_linear_vs_softmax"), "linear_attention", softmax_in_disguise)]


def _q24():  # orthogonal random features whose QR sign fix is silently skipped
    from attnlab.ops.linear import draw_random_features

    def no_fix(*a, **kw):
        return draw_random_features(*a, **{**kw, "sign_fix": False})

    return [(_mod("q24_performer"), "draw_random_features", no_fix)]


def _q25():  # an RNN mode whose decay is 10% too fast
    from attnlab.ops.rwkv import wkv4

    def drifting(w, u, k, v, *, mode="chunked", **kw):
        return wkv4(w * 1.1 if mode == "recurrent" else w, u, k, v, mode=mode, **kw)

    return [(_mod("q25_rwkv"), "wkv4", drifting)]


MUTATIONS: dict[int, Callable[[], list[tuple]]] = {
    1: _q01, 2: _q02, 3: _q03, 4: _q04, 5: _q05, 6: _q06, 7: _q07, 8: _q08,
    9: _q09, 10: _q10, 11: _q11, 12: _q12, 13: _q13,
    14: _q14, 15: _q15, 16: _q16, 17: _q17, 18: _q18, 19: _q19, 20: _q20,
    21: _q21, 22: _q22, 23: _q23, 24: _q24, 25: _q25,
}


@pytest.mark.parametrize("qid", sorted(MUTATIONS))
def test_mutation_fails_a_measured_check(qid):
    assert assert_mutation_fails(qid, MUTATIONS[qid]())
