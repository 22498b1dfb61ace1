"""Tiled online-softmax attention (FlashAttention-2), dense: every tile is visited.

The engine lives in `tiles.py` (forward, recomputing backward with lse gradients,
score_mod, the non-finite rules); this module is its public dense front and its
`attention()` record. Dao et al., "FlashAttention" (2022), "FlashAttention-2" (2023).

Cost: O(B·Hq·Nq·Nk·D) time like the dense reference, but O(B·Hq·(Nq + Nk)·D) memory plus
one (q_block × segment) tile: the (Nq, Nk) score matrix never exists.

Accepts float16/bfloat16/float32/float64: tiles are computed in float32 (float64 stays
float64, with float64 statistics and lse) and the output is cast back to the input dtype.
"""
from __future__ import annotations

import torch

from ..._checks import check_positive_int
from .backends import Backend, register_backend
from .contract import Call, finish, validate
from .tiles import (  # noqa: F401  (re-exported: the engine's names, used by other modules)
    TiledAttentionFn,
    TileMask,
    TilePlan,
    compute_dtype,
    make_tile_mask,
    positions,
    recompute_function,
    run_tiles,
)


def check_result(out: torch.Tensor, lse: torch.Tensor) -> None:
    """For paths outside `attention()` that still reject non-finite data (paged
    attention): raise when a NaN/inf reached the result. One reduction first; only a
    non-finite sum pays for the elementwise test. lse may be -inf (a row with no key)."""
    total = out.sum()
    bad_out = not bool(torch.isfinite(total)) and not bool(torch.isfinite(out).all())
    if bad_out or bool((torch.isnan(lse) | (lse == float("inf"))).any()):
        raise ValueError("q, k or v contains NaN or inf that reaches the output; "
                         "expected finite values in every visible query/key/value")


def flash_run(call: Call, q_block: int = 128, kv_block: int = 256):
    """`attention()`'s "flash" backend on a validated call: (out, lse)."""
    if call.Nq == 0 or call.Nk == 0:
        return degenerate(call)
    plan = TilePlan.dense(call.Nq, call.Nk, q_block, kv_block, masked=call.mask is not None)
    return run_tiles(call, plan, segment_keys=kv_block)  # tiles of exactly kv_block keys


def degenerate(call: Call):
    """Nq = 0 (empty out/lse) or Nk = 0 (out 0, lse −inf), connected to autograd."""
    from .reference import attention_reference

    return attention_reference(call.q, call.k, call.v, mask=call.mask, scale=call.scale,
                               q_pos=call.q_pos, kv_pos=call.kv_pos, return_lse=True)


def flash_attention(q, k, v, *, mask=None, scale: float | None = None, score_mod=None,
                    sink=None, q_block: int = 128, kv_block: int = 256,
                    return_lse: bool = False, q_pos=None, kv_pos=None,
                    check_finite: bool = False):
    """Exact attention by FlashAttention-2 tiling (dense: every tile is visited; the mask,
    a `Mask` or a bool tensor, and `score_mod` are evaluated tile by tile). Differentiable
    w.r.t. q, k, v and through `lse`, with O(N) saved state. q (B, Hq, Nq, D),
    k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv). Returns `out` or `(out, lse)`; rows with no
    visible key give 0 and lse = -inf; non-finite inputs follow docs/conventions.md §2."""
    call = validate(q, k, v, mask=mask, scale=scale, score_mod=score_mod, sink=sink,
                    return_lse=return_lse, q_pos=q_pos, kv_pos=kv_pos,
                    check_finite_values=check_finite)
    check_positive_int("q_block", q_block)
    check_positive_int("kv_block", kv_block)
    return finish(call, *flash_run(call, q_block, kv_block))


register_backend(Backend(
    "flash", flash_run, score_mod=True, sink=True, return_lse=True,  # rank None: by name only
    doc="tiled online softmax in plain torch (FlashAttention-2), every tile visited"))
