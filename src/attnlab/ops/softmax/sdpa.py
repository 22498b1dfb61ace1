"""The "sdpa" backend: torch's `scaled_dot_product_attention` (fused CPU flash kernel for
no mask and the plain causal pattern; a dense boolean `attn_mask` otherwise).

SDPA returns no lse and takes no score hook, so the record has neither (a call that needs
them names the backends that do). `is_causal=True` is top-left aligned, so it is used only
for the plain causal pattern with Nq == Nk and default positions (docs/conventions.md §2).
Non-finite inputs: the fused kernel computes P @ V over masked slots and returns 0 for a
row whose scores are all NaN, so q, k, v are probed (one sum each, O((Nq + Nk)·D)) and a
call holding a NaN/inf runs on the exact tiled engine instead.
"""
from __future__ import annotations

import torch.nn.functional as F

from .backends import Backend, register_backend
from .contract import Call, nonfinite
from .flash import degenerate
from .reference import dense_mask
from .tiles import TilePlan, run_tiles


def sdpa_run(call: Call):
    """(out, None) from torch's SDPA; exact fallbacks for empty shapes and NaN/inf."""
    if call.Nq == 0 or call.Nk == 0:
        return degenerate(call)[0], None
    q, k, v = call.q, call.k, call.v
    if nonfinite(q, k, v):
        plan = TilePlan.dense(call.Nq, call.Nk, 128, 256, masked=call.mask is not None)
        return run_tiles(call, plan)[0], None
    gqa = call.Hkv != call.Hq
    kind = call.mask_kind
    if kind == "none":
        return F.scaled_dot_product_attention(q, k, v, scale=call.scale, enable_gqa=gqa), None
    if kind == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=call.scale,
                                              enable_gqa=gqa), None
    m = dense_mask(call.mask, call.B, call.Hq, call.Nq, call.Nk, q_pos=call.q_pos,
                   kv_pos=call.kv_pos)  # (B|1, Hq|1, Nq, Nk)
    empty = ~m.any(-1, keepdim=True)  # rows with no visible key: 0 (conventions §2)
    if bool(empty.any()):  # keep SDPA away from all-masked rows (NaN in its backward)
        m = m | empty
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=call.scale,
                                             enable_gqa=gqa)
        return out.masked_fill(empty, 0.0), None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=call.scale,
                                          enable_gqa=gqa), None


def _prefers(call: Call) -> bool:
    return call.mask_kind in ("none", "causal", "tensor")


register_backend(Backend(
    "sdpa", sdpa_run, rank=20, prefers=_prefers,
    doc="torch.nn.functional.scaled_dot_product_attention (no lse, no score_mod, no sink)"))
