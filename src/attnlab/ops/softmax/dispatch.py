"""`attention(q, k, v, ...)`: one entry point over every exact softmax backend.

Backends are records (`backends.py`): "reference" (the dense oracle), "decode" (split-KV,
`decode.py`), "sdpa" (torch's fused scaled_dot_product_attention, `sdpa.py`),
"block_sparse" (executor over the mask's block layout, `block_sparse.py`) and "flash"
(tiled online softmax, `flash.py`). "auto" takes the first record, in that order, that
supports the call and prefers its shapes: split-KV for decode shapes (Nq <= 16,
Nk >= 2048), SDPA for no mask, the plain causal pattern and bool tensors when neither lse,
score_mod nor sink is asked for, else the block-sparse executor. Every backend returns the
reference's answer, non-finite entries included (docs/conventions.md §2, §5; tests/fuzz/).
"""
from __future__ import annotations

import torch

from . import block_sparse as _block_sparse  # noqa: F401  (each module registers its record)
from . import decode as _decode  # noqa: F401
from . import flash as _flash  # noqa: F401
from . import sdpa as _sdpa  # noqa: F401
from .backends import BACKENDS, Backend, register_backend, resolve
from .contract import Call, finish, validate
from .reference import attention_reference


def _reference_run(call: Call):
    """The oracle in its compute dtype (float32 for float16/bfloat16, as it computes
    anyway), so `finish` merges a sink before the one rounding to q's dtype."""
    cd = torch.float64 if call.q.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(cd) for t in (call.q, call.k, call.v))
    return attention_reference(q, k, v, mask=call.mask, scale=call.scale,
                               score_mod=call.score_mod, q_pos=call.q_pos, kv_pos=call.kv_pos,
                               return_lse=True)


register_backend(Backend("reference", _reference_run, score_mod=True, sink=True,
                         return_lse=True, doc="dense oracle, O(Nq·Nk) memory"))


def choose_backend(q, k, v, mask=None, q_pos=None, kv_pos=None, *, score_mod=None, sink=None,
                   return_lse: bool = False) -> str:
    """The backend "auto" picks for these inputs (rules in the module docstring)."""
    call = validate(q, k, v, mask=mask, score_mod=score_mod, sink=sink, return_lse=return_lse,
                    q_pos=q_pos, kv_pos=kv_pos)
    return resolve("auto", call).name


def attention(q, k, v, *, mask=None, scale: float | None = None, score_mod=None, sink=None,
              return_lse: bool = False, q_pos=None, kv_pos=None, backend: str = "auto",
              check_finite: bool = False):
    """Exact softmax attention. q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv).

    - `mask`: a `Mask` predicate or a bool tensor broadcastable to (B, Hq, Nq, Nk), True =
      attend; causal alignment is bottom-right (docs/conventions.md §2).
    - `scale`: a finite float > 0, default 1/sqrt(D).
    - `score_mod(score, b, h, q_idx, kv_idx)`: e.g. `alibi(slopes)`, `softcap(50.0)`.
    - `sink`: (Hq,) learned sink logits, one extra partial (o = 0, lse = s_h) merged once.
    - `q_pos` / `kv_pos`: integer absolute positions (default i + Nk − Nq and j).
    - `backend`: "auto" or a name in `BACKENDS`; a backend lacking a needed feature raises
      ValueError naming it and the backends that have it.
    - `check_finite=True`: ValueError naming the tensor and its first NaN/inf entry;
      otherwise non-finite values follow docs/conventions.md §2 on every backend.

    Returns `out` (q's dtype) or `(out, lse)`, lse (B, Hq, Nq) float32 (float64 for float64
    inputs), differentiable. Nq = 0 gives empty results; Nk = 0 gives out 0, lse −inf.
    """
    call = validate(q, k, v, mask=mask, scale=scale, score_mod=score_mod, sink=sink,
                    return_lse=return_lse, q_pos=q_pos, kv_pos=kv_pos,
                    check_finite_values=check_finite)
    rec = resolve(backend, call)
    if rec.unit_stride:
        call.q, call.k, call.v = (t if t.stride(-1) == 1 else t.contiguous()
                                  for t in (call.q, call.k, call.v))
    return finish(call, *rec.fn(call))


__all__ = ["BACKENDS", "Backend", "attention", "choose_backend", "register_backend"]
