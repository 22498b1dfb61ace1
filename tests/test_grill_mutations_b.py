"""Mutation tests for grill answers Q26–Q50: each breaks what an answer measures (a kernel,
a cache, a trained model, a count) and shows at least one of its non-timing checks fail.

`MUTATIONS` maps a question id to a factory of `(object, attribute, replacement)` patches;
`test_grill_mutation_coverage.py` checks that every answer with measured checks is here.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from grill_mutation import assert_mutation_fails

ANSWERS = "attnlab.grill.answers"


def _mod(name: str):
    return importlib.import_module(f"{ANSWERS}.{name}")


def _no_timing(module: str) -> tuple:
    """Skip an answer's wall-clock measurements (they feed timing checks only, which a
    mutation test ignores): keeps the mutation run fast."""
    return (_mod(module), "median_time", lambda fn, **kw: 1.0)


# --- Q37: decode without GQA folding (every query head re-reads its KV head) -----------
def _q37():
    from attnlab.ops.softmax import decode_attention, repeat_kv

    def unfolded(q, k, v, **kw):  # K/V expanded to one copy per query head: G× the bytes
        G = q.shape[1] // k.shape[1]
        return decode_attention(q, repeat_kv(k, G), repeat_kv(v, G), **kw)

    return [(_mod("q37_prefill_vs_decode"), "decode_attention", unfolded),
            _no_timing("q37_prefill_vs_decode")]


# --- Q47: "chunked" linear attention that silently evaluates the masked N×N form ------
def _q47():
    from attnlab.ops.linear import linear_attention

    def quadratic(q, k, v, **kw):
        return linear_attention(q, k, v, **{**kw, "mode": "parallel"})

    return [(_mod("q47_linear_complexity"), "linear_attention", quadratic),
            _no_timing("q47_linear_complexity")]


# --- Q48: a "tiled" kernel that materialises the N×N scores (dense attention) ---------
def _q48():
    from attnlab.ops.softmax import attention_reference

    def dense(q, k, v, q_block=None, kv_block=None, **kw):
        return attention_reference(q, k, v, **kw)

    return [(_mod("q48_flash_sequence_complexity"), "flash_attention", dense)]


# --- Q49: an LSH attention whose chunks are twice the size it was asked for -------------
def _q49():
    from attnlab.ops.lsh.attention import lsh_attention

    def wide_chunks(qk, v, **kw):
        return lsh_attention(qk, v, **{**kw, "chunk_size": 2 * kw["chunk_size"]})

    def untimed(mechs, ns, **kw):  # the wall-clock part feeds timing checks only
        return [SimpleNamespace(name=k, seconds=[1.0] * len(ns), slope=1.0) for k in mechs]

    return [(_mod("q49_reformer_complexity"), "lsh_attention", wide_chunks),
            (_mod("q49_reformer_complexity"), "measure_scaling", untimed)]


MUTATIONS: dict[int, Callable[[], list[tuple]]] = {
    37: _q37,
    47: _q47,
    48: _q48,
    49: _q49,
}


@pytest.mark.parametrize("qid", sorted(MUTATIONS))
def test_mutation_fails_a_measured_check(qid):
    assert assert_mutation_fails(qid, MUTATIONS[qid]())
