"""Measurements of the engine for benchmarks and grill evidence (Q36 paged serving, Q38
KV growth): serve a built-in model kind and compare with `generate`; measure the bytes
one sequence really holds in the pools at a given context length.

- `serve_and_check(kind)`: a few requests with random arrivals served together (with
  preemption), each compared token for token with `generate` one at a time.
- `sequence_memory(kind, contexts)`: bytes one sequence holds (its live blocks in every
  layer group + its state slot) after a prompt of `context` tokens, read from the pools
  (`ServingCache.sequence_nbytes`), with the layout formula beside it.
"""
from __future__ import annotations

import random

import torch

from .._checks import check_positive_int
from .engine import Engine, EngineConfig, Request, generate_one
from .zoo import serving_model


def serve_and_check(kind: str, *, n_requests: int = 4, max_new_tokens: int = 12,
                    seed: int = 0, window: int = 8, block_size: int = 4,
                    num_blocks: int = 24, preemption: str = "swap") -> dict:
    """Serve `n_requests` random prompts of a tiny `kind` model together (a small pool, so
    sequences get preempted) and compare each with `generate` alone. Returns
    {"same": [bool per request], "preemptions", "max_batch", "peak_blocks",
    "prefix_hit_tokens", "steps"}."""
    check_positive_int("n_requests", n_requests)
    rng = random.Random(seed)
    reqs = [Request([rng.randrange(101) for _ in range(rng.randint(4, 20))], max_new_tokens,
                    arrival_step=rng.randint(0, 3)) for _ in range(n_requests)]
    model = serving_model(kind, d_model=32, window=window, seed=seed, max_seq_len=128)
    eng = Engine(model, EngineConfig(num_blocks=num_blocks, block_size=block_size,
                                     max_batch_tokens=32, prefill_chunk=8,
                                     preemption=preemption))
    res = eng.run(reqs)
    same = [r.tokens == generate_one(model, q.prompt, q.max_new_tokens)
            for r, q in zip(res, reqs)]
    st = eng.stats
    return {"same": same, "preemptions": st.preemptions, "max_batch": max(st.batch_sizes),
            "peak_blocks": st.peak_blocks, "prefix_hit_tokens": st.prefix_hit_tokens,
            "steps": st.steps}


@torch.no_grad()
def sequence_memory(kind: str, contexts, *, d_model: int = 64, window: int = 64,
                    block_size: int = 16, prefill_chunk: int = 256, seed: int = 0) -> dict:
    """Bytes one sequence of a `kind` model holds once its prompt of `context` tokens is
    prefilled (in chunks of `prefill_chunk`), for each context: {context: {"measured":
    bytes read from the pools (the sequence's peak over the run), "formula": bytes the
    layer layouts predict}}."""
    contexts = [check_positive_int("context", c) for c in contexts]
    model = serving_model(kind, d_model=d_model, window=window, seed=seed,
                          max_seq_len=max(contexts) + 2)
    out = {}
    for ctx in contexts:
        need = -(-(ctx + 2) // block_size) + 2
        eng = Engine(model, EngineConfig(num_blocks=need, block_size=block_size,
                                         max_batch_tokens=prefill_chunk,
                                         prefill_chunk=prefill_chunk, max_running=1))
        prompt = torch.randint(0, 101, (ctx,), generator=torch.Generator().manual_seed(ctx))
        rid = eng.add_request(Request(prompt.tolist(), 2))  # measured before it is freed
        peak = 0
        while not eng.done:
            eng.step()
            if eng.cache.has_sequence(rid):
                peak = max(peak, eng.cache.sequence_nbytes(rid))
        out[ctx] = {"measured": peak, "formula": formula_bytes(eng, ctx, prefill_chunk)}
    return out


def formula_bytes(eng: Engine, context: int, chunk: int) -> int:
    """What the layouts say one sequence holds once `context` prompt tokens are
    prefilled, at its peak over the prefill chunks [s, e): full groups ⌈e/bs⌉ blocks,
    windowed groups the blocks from the one holding position s − W + 1 to the one holding
    e − 1 (the window plus one chunk); plus its state slot."""
    c = eng.cache
    bs = c.block_size
    peaks = []
    for s in range(0, context, chunk):  # after the prefill chunk [s, e)
        e = min(context, s + chunk)
        held = 0
        for lay, _, pool in c.groups:
            lo = 0 if lay.window is None else max(0, s - lay.window + 1) // bs
            held += (-(-e // bs) - lo) * pool.bytes_per_block
        peaks.append(held)
    total = max(peaks)
    if c.states is not None:
        total += c.states.bytes_per_sequence()
    return total
