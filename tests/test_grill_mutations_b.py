"""Mutation tests for grill answers Q26–Q50: each breaks what an answer measures (a kernel,
a cache, a trained model, a count) and shows at least one of its non-timing checks fail.

`MUTATIONS` maps a question id to a factory of `(object, attribute, replacement)` patches;
`test_grill_mutation_coverage.py` checks that every answer with measured checks is here.
"""
from __future__ import annotations

import functools
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


# --- Q26: an SSD kernel that ignores the decay A (every a_t = 1) ------------------------
def _q26():
    import torch

    from attnlab.ops.ssd import ssd

    def no_decay(x, dt, A, B, C, **kw):
        return ssd(x, dt, torch.zeros_like(A), B, C, **kw)

    return [(_mod("q26_linear_attention_ssm"), "ssd", no_decay)]


# --- Q27: a "tiled" kernel that is really the dense one (N×N scores materialised) -------
def _dense_flash(module: str):
    def factory():
        from attnlab.ops.softmax import attention_reference

        def dense(q, k, v, q_block=None, kv_block=None, **kw):
            return attention_reference(q, k, v, **kw)

        return [(_mod(module), "flash_attention", dense)]
    return factory


# --- Q28: a blockwise softmax that never subtracts the running maximum ------------------
def _q28():
    import torch

    def no_max(q, k, v, *, scale=None, return_lse=False, **kw):
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        e = torch.exp(s)
        out = (e / e.sum(-1, keepdim=True)) @ v
        return (out, torch.log(e.sum(-1))) if return_lse else out

    return [(_mod("q28_online_softmax"), "flash_attention", no_max)]


# --- Q30–32, Q50: the induction model barely trained (25 steps): no circuit forms -----
@functools.lru_cache(maxsize=1)
def _undertrained_induction(seed: int = 0, full: bool = False):
    from attnlab.experiments.induction import InductionConfig, train_one

    c = InductionConfig(steps=25, eval_every=25, seeds=(seed,))
    box: dict = {}
    res = train_one(c, seed, keep=box)
    return box["model"], res, c


def _heads(module: str):
    return lambda: [(_mod(module), "induction_run", _undertrained_induction)]


# --- Q33: a pruning curve whose record of removed heads is not what it pruned -----------
def _q33():
    import attnlab.experiments.redundancy as red

    real = red.pruning_curve

    def misrecorded(model, imp, evt, step=1):
        c = real(model, imp, evt, step=step)
        c.order = c.order[::-1]
        return c

    def short_run(seed: int = 0, full: bool = False):  # a small, fast, uncached run
        box: dict = {}
        c = red.RedundancyConfig(steps=30, lr=1e-2, n_heads=4, n_layers=2, prune_step=1)
        return red.one_seed(c, seed, keep=box), box["model"], box["eval_tokens"]

    return [(red, "pruning_curve", misrecorded), (_mod("q33_head_redundancy"), "_run", short_run)]


# --- Q34: the sink models barely trained (10 steps): no head has become a sink ----------
def _q34():
    m = _mod("q34_attention_sinks")
    return [(m, "_run", lambda seed=0, full=False: m._train(seed, full, steps=10))]


# --- Q35: an attention that drops the 1/√d scale ------------------------------------
def _q35():
    from attnlab.ops.softmax import attention

    def unscaled(q, k, v, scale=None, **kw):
        return attention(q, k, v, scale=1.0, **kw)

    return [(_mod("q35_scale_temperature"), "attention", unscaled)]


# --- Q36: fork shares blocks without counting references (no copy-on-write) -----------
def _q36():
    from attnlab.cache.paged import PagedKVCache

    def fork_without_refcount(self, parent, child):
        table = self._seq(parent)
        self.tables[child] = list(table)
        self.lens[child] = self.lens[parent]
        self.tokens[child] = list(self.tokens[parent])
        self._hashed[child] = list(self._hashed[parent])

    return [(PagedKVCache, "fork", fork_without_refcount)]


# --- Q37: decode without GQA folding (every query head re-reads its KV head) -----------
def _q37():
    from attnlab.ops.softmax import decode_attention, repeat_kv

    def unfolded(q, k, v, **kw):  # K/V expanded to one copy per query head: G× the bytes
        G = q.shape[1] // k.shape[1]
        return decode_attention(q, repeat_kv(k, G), repeat_kv(v, G), **kw)

    return [(_mod("q37_prefill_vs_decode"), "decode_attention", unfolded),
            _no_timing("q37_prefill_vs_decode")]


# --- Q38: a cache whose used bytes do not grow with the tokens it holds ----------------
def _q38():
    from attnlab.cache.contiguous import ContiguousKVCache

    return [(ContiguousKVCache, "used_nbytes", property(lambda self: self.nbytes))]


# --- Q39: sliding-window layers built one key wider than asked -------------------------
def _q39():
    from attnlab.layers.attention import Attention

    def wider(*a, window=None, **kw):
        return Attention(*a, window=window + 1, **kw)

    return [(_mod("q39_receptive_field"), "Attention", wider)]


# --- Q40: "window + globals" that silently drops the global tokens ---------------------
def _q40():
    from attnlab.grill.answers._sparse import band

    return [(_mod("q40_window_plus_global"), "window_plus_globals", lambda r, g: band(r))]


# --- Q41: the attention layer calls attention without the 1/√d_k scale -----------------
def _q41():
    import attnlab.layers.attention as layer_mod

    real = layer_mod.attention

    def unscaled(q, k, v, scale=None, **kw):
        return real(q, k, v, scale=1.0, **kw)

    return [(layer_mod, "attention", unscaled)]


# --- Q42: a layer cache sized for every query head (MQA's saving lost) -----------------
def _q42():
    from attnlab.cache.contiguous import ContiguousKVCache
    from attnlab.layers.attention import Attention

    def per_query_head_cache(self, batch, capacity, *, dtype=None, device="cpu"):
        return ContiguousKVCache(1, batch, self.n_heads, self.head_dim, capacity)

    return [(Attention, "new_cache", per_query_head_cache)]


# --- Q43: GQA conversion that pools strided heads (0, 2, 4, …) instead of neighbours ----
def _q43():
    import copy

    import torch

    from attnlab.layers.convert import mha_to_gqa

    def strided(layer, n_kv_heads):
        m = copy.deepcopy(layer)
        H, D = m.n_kv_heads, m.head_dim
        perm = torch.arange(H).view(H // n_kv_heads, n_kv_heads).T.reshape(-1)
        with torch.no_grad():
            for proj in (m.k_proj, m.v_proj):
                proj.weight.copy_(proj.weight.view(H, D, -1)[perm].reshape(H * D, -1))
        return mha_to_gqa(m, n_kv_heads)

    return [(_mod("q43_gqa_paper"), "mha_to_gqa", strided)]


# --- Q44: absorbed MLA that folds W_UV where W_UK belongs (and back) -------------------
def _q44():
    from attnlab.layers.mla import MultiLatentAttention

    real = MultiLatentAttention._up_weights

    def swapped(self):
        w_uk, w_uv = real(self)
        return w_uv, w_uk  # same shapes in the evidence's small layer (nope = v = 16)

    return [(MultiLatentAttention, "_up_weights", swapped)]


# --- Q45: grouped attention that tiles KV heads (query head h reads h mod 8) ------------
def _q45():
    from attnlab.ops.softmax import attention

    def tiled(q, k, v, **kw):
        G = q.shape[1] // k.shape[1]
        return attention(q, k.repeat(1, G, 1, 1), v.repeat(1, G, 1, 1), **kw)

    return [(_mod("q45_llama2_70b_kv_heads"), "attention", tiled)]


# --- Q46: a rolling buffer one slot larger than the window -----------------------------
def _q46():
    from attnlab.cache.rolling import RollingKVCache

    def one_too_many(n_layers, batch, n_kv_heads, head_dim, window, **kw):
        return RollingKVCache(n_layers, batch, n_kv_heads, head_dim, window + 1, **kw)

    return [(_mod("q46_mistral_window"), "RollingKVCache", one_too_many)]


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
    26: _q26,
    27: _dense_flash("q27_flashattention"),
    28: _q28,
    29: _dense_flash("q29_flash_complexity"),
    30: _heads("q30_induction_heads"),
    31: _heads("q31_why_induction_matters"),
    32: _heads("q32_previous_token_heads"),
    33: _q33,
    34: _q34,
    35: _q35,
    36: _q36,
    37: _q37,
    38: _q38,
    39: _q39,
    40: _q40,
    41: _q41,
    42: _q42,
    43: _q43,
    44: _q44,
    45: _q45,
    46: _q46,
    47: _q47,
    48: _q48,
    49: _q49,
    50: _heads("q50_induction_function"),
}


@pytest.mark.parametrize("qid", sorted(MUTATIONS))
def test_mutation_fails_a_measured_check(qid):
    assert assert_mutation_fails(qid, MUTATIONS[qid]())
