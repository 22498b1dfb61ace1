"""How the fused block-sparse path calls torch's fused CPU flash kernel: the layouts of
stacked query blocks (copies or strided views), the compute dtype of float16/bfloat16
inputs on this CPU, and the default block sizes per dtype (block_sparse.py uses these).

Stacked blocks: consecutive query blocks whose key runs have the same length, offset and
mask go into ONE kernel call. The forward puts the nb blocks in the kernel's batch
dimension and folds (B, Hkv) into its head dimension, so the overlapping key ranges are a
strided view of K and V (batch stride n·D, head stride Nk·D) and nothing is copied; the
backward keeps the (nb·B, Hkv) layout with copied key ranges (bounded by
block_sparse.BATCH_COPY_BYTES). Cost of a probe: O((Nq + Nk)·D) per call.
"""
from __future__ import annotations

import time

import torch

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def batch_rows(x, a: int, nb: int, n: int, B: int, Hkv: int, G: int):
    """Rows [a, a + nb·n) of x (B, Hkv, G, N, ·) -> (nb·B, Hkv, G·n, ·), block-major."""
    c = x.shape[-1]
    y = x[:, :, :, a:a + nb * n].reshape(B, Hkv, G, nb, n, c)
    return y.permute(3, 0, 1, 2, 4, 5).reshape(nb * B, Hkv, G * n, c)


def unbatch_rows(y, nb: int, n: int, B: int, Hkv: int, G: int):
    """Inverse of `batch_rows`: (nb·B, Hkv, G·n, ·) -> (B, Hkv, G, nb·n, ·)."""
    c = y.shape[-1]
    return y.reshape(nb, B, Hkv, G, n, c).permute(1, 2, 3, 0, 4, 5).reshape(B, Hkv, G, nb * n, c)


def batch_keys(x, r0: int, length: int, nb: int, n: int):
    """Key ranges [r0 + i·n, r0 + i·n + length) of x (B, Hkv, Nk, D) -> (nb·B, Hkv, length, D)
    (a view when nb == 1, else a copy of the overlapping ranges)."""
    if nb == 1:
        return x[:, :, r0:r0 + length]
    B, Hkv, _, D = x.shape
    u = x[:, :, r0:r0 + (nb - 1) * n + length].unfold(2, length, n)  # (B, Hkv, nb, D, length)
    return u.permute(2, 0, 1, 4, 3).reshape(nb * B, Hkv, length, D)


# The forward's views: torch's fused kernel reads q, k, v through their strides (unit
# stride on the last dim). Measured (N=16384, W=512, interleaved in one run,
# kernels_notes.md): the unfold copies had cost 1.2–1.8× the view form's time.


def view_rows(x, a: int, nb: int, n: int, B: int, Hkv: int, G: int):
    """Rows [a, a + nb·n) of x (B, Hkv, G, N, ·) -> (nb, B·Hkv, G·n, ·); a view when G == 1."""
    c = x.shape[-1]
    y = x[:, :, :, a:a + nb * n].reshape(B, Hkv, G, nb, n, c)
    return y.permute(3, 0, 1, 2, 4, 5).reshape(nb, B * Hkv, G * n, c)


def unview_rows(y, nb: int, n: int, B: int, Hkv: int, G: int):
    """Inverse of `view_rows`: (nb, B·Hkv, G·n, ·) -> (B, Hkv, G, nb·n, ·)."""
    c = y.shape[-1]
    return y.reshape(nb, B, Hkv, G, n, c).permute(1, 2, 3, 0, 4, 5).reshape(B, Hkv, G, nb * n, c)


def view_keys(xf, r0: int, length: int, nb: int, n: int):
    """Key ranges [r0 + i·n, r0 + i·n + length) of xf (B·Hkv, Nk, D) -> (nb, B·Hkv, length, D),
    a strided view (overlapping ranges share memory; nothing is copied)."""
    u = xf[:, r0:r0 + (nb - 1) * n + length].unfold(1, length, n)  # (B·Hkv, nb, D, length)
    return u.permute(1, 0, 3, 2)


def view_mask(add, B: int):
    """An additive mask (1, Hkv|1, G·n, L) for the folded head dimension (B·Hkv)."""
    if add is None or add.shape[1] == 1 or B == 1:
        return add
    return add.expand(B, *add.shape[1:]).reshape(1, B * add.shape[1], *add.shape[2:])


def fix_empty(o, l, empty):
    """The kernel reports lse = 0 on rows whose keys are all masked: make them -inf / 0."""
    if empty is not None and bool(empty.any()):
        e = empty.expand_as(l)
        l = l.masked_fill(e, float("-inf"))
        o = o.masked_fill(e.unsqueeze(-1), 0.0)
    return o, l


# Default (q_block, kv_block), chosen by measurement (kernels_notes.md). Narrow sliding
# windows (a `Mask` whose structure says window <= NARROW_WINDOW) use 32 × 32: the fused
# kernel splits a call's G·n query rows into 32-row tiles below 192 rows anyway, so small
# blocks cost no tile shape and waste fewer scores in the two partial blocks of each row
# (W=512: 94% of the computed scores are visible with 32-row blocks, 80% with 128), and
# the stacked calls read K/V as views. Everything else (wide windows, causal, documents)
# keeps 128 × 128: with 32-row blocks a W=4096 window or a causal prefix became 4× as many
# unstacked calls, each with its own mask (1.3–2× slower in the same run).
BLOCKS = (128, 128)
NARROW_BLOCKS = (32, 32)
NARROW_WINDOW = 1024


def default_blocks(window: int | None) -> tuple[int, int]:
    """(q_block, kv_block) for a mask of this window width (None: not a plain window)."""
    return NARROW_BLOCKS if window is not None and window <= NARROW_WINDOW else BLOCKS


# float16/bfloat16 inputs run the fused kernel in their own dtype unless it is clearly
# slower than float32 on this CPU (measured once per process and dtype on a small stacked
# window, see `lowp_is_fast`): a CPU without native fp16 (or bf16) arithmetic emulates it, e.g. the
# fp16 window took 2× the time of the float32 path on an AVX512-BF16 part without
# AVX512-FP16. In float32 the inputs are widened (exact), statistics stay float32 and the
# output is rounded to the input dtype once. "auto" | "native" | "float32" (tests force).
LOWP_COMPUTE = "auto"
LOWP_SLOWER = 1.25
_LOWP_FAST: dict = {}


def lowp_is_fast(dtype: torch.dtype) -> bool:
    """Whether the fused path should compute in `dtype` rather than widen to float32 here:
    best of 4 interleaved runs of a small stacked window (16 blocks of 32 rows × 544 keys,
    8 heads, D = 64, K/V as views, as `_fused_forward` calls it), the float32 side paying
    its widening. Ties go to the native dtype (half the bytes, no widened copies): it is
    rejected only when LOWP_SLOWER times slower, as an emulated dtype is (fp16 without
    AVX512-FP16: 2×); bf16 with AVX512-BF16 and float32 were within ±10% of each other on
    the window, and a plain comparison flipped under load. Memoised per process (~0.1 s)."""
    if dtype not in _LOWP_FAST:
        g = torch.Generator().manual_seed(0)
        low = [torch.randn(1, 8, n, 64, generator=g).to(dtype) for n in (512, 1056, 1056)]

        def window(q, k, v):  # (16, 8, 32, 64) queries against (16, 8, 544, 64) keys
            qs = view_rows(q.view(1, 8, 1, 512, 64), 0, 16, 32, 1, 8, 1)
            _FLASH(qs, view_keys(k[0], 0, 544, 16, 32), view_keys(v[0], 0, 544, 16, 32))

        runs = {"native": lambda: window(*low),
                "float32": lambda: window(*(t.to(torch.float32) for t in low))}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(5):  # the first round warms up both
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        _LOWP_FAST[dtype] = best["native"] <= LOWP_SLOWER * best["float32"]
    return _LOWP_FAST[dtype]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the fused path computes `dtype` inputs in (module note on LOWP_COMPUTE)."""
    if dtype not in (torch.float16, torch.bfloat16) or LOWP_COMPUTE == "native":
        return dtype
    if LOWP_COMPUTE == "float32" or not lowp_is_fast(dtype):
        return torch.float32
    return dtype


