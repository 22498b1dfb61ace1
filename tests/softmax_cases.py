"""The conventions §5 test matrix shared by the fast softmax paths (flash, block-sparse, decode,
dispatch): odd lengths (1, 7, 63, 129), Nq != Nk, GQA, batch > 1, fully masked rows."""
from __future__ import annotations

import torch

from attnlab import masks as M
from attnlab.ops.softmax import attention_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}  # conventions §5, exact algorithms in float32

SHAPES = [  # B, Hq, Hkv, Nq, Nk, D
    (1, 1, 1, 1, 1, 8),
    (2, 4, 2, 7, 7, 16),      # GQA, batch 2
    (1, 2, 2, 63, 129, 16),   # Nq < Nk (prefill chunk after a cache)
    (2, 4, 1, 129, 63, 8),    # Nq > Nk: causal rows with no visible key; MQA
    (1, 6, 3, 129, 129, 16),
]


def make_mask(name: str, nq: int, nk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    doc = torch.randint(0, 3, (max(nq, nk),), generator=g).sort().values
    return {
        "none": None,
        "causal": M.causal(),
        "window": M.sliding_window(9),
        "window_global": M.sliding_window(5) | M.global_tokens([0, 2]),
        "document_causal": M.document(doc) & M.causal(),
        "prefix_lm": M.prefix_lm(20),
        "bool": torch.rand(nq, nk, generator=g) > 0.7,  # random; some rows fully masked
    }[name]


MASKS = ["none", "causal", "window", "window_global", "document_causal", "prefix_lm", "bool"]


def rand_qkv(B, Hq, Hkv, Nq, Nk, D, Dv=None, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    q = torch.randn(B, Hq, Nq, D, generator=g)
    k = torch.randn(B, Hkv, Nk, D, generator=g)
    v = torch.randn(B, Hkv, Nk, Dv, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def check_against_reference(fn, q, k, v, mask, grads: bool = True, fast_kw=None, **kw):
    """fn(q, k, v, mask=..., return_lse=True, **fast_kw, **kw) == reference(**kw) in out,
    lse and grads (`kw` is shared: scale, q_pos, kv_pos)."""
    out, lse = fn(q, k, v, mask=mask, return_lse=True, **(fast_kw or {}), **kw)
    ref_out, ref_lse = attention_reference(q, k, v, mask=mask, return_lse=True, **kw)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(lse, ref_lse, **TOL)
    assert not torch.isnan(out).any()
    if grads:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        got = torch.autograd.grad(out, (q, k, v), g)
        want = torch.autograd.grad(ref_out, (q, k, v), g)
        for name, a, b in zip("qkv", got, want):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"d{n}: {m}")
    return out, lse
