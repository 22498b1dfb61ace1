"""Paged decode in every cache dtype, read straight through the block tables.

PagedAttention (Kwon et al., SOSP 2023): a sequence's keys/values live in fixed-size
physical blocks of a pool `(Hkv, num_blocks, bs, D)` listed by its block table. Here the
kernel of `ops.softmax.kv_decode` finds each key's row through the table as it goes
(row = h·num_blocks·bs + table[b, j // bs]·bs + j mod bs), so nothing of the history is
gathered or copied, whatever the block order.
Pools may hold float32, bfloat16, float16 or int8 codes with float32 scale pools
`(Hkv, num_blocks, bs, g)` (docs/conventions.md §4). Same contract as `paged_attention`:
query i of sequence b sits at position seq_lens[b] − Nq + i and sees keys 0..that
position (bottom-right causal); slots past a sequence's length are never read.
Cost: O(Σ_b L_b·Hq·Nq·D) time, one read of each sequence's K/V; no history copy.
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_positive_int, check_tensor
from ..softmax.kv_decode import (
    DEFAULT_CHUNK,
    KVRows,
    _side_flat,
    check_kv_dtypes,
    check_table_entries,
    choose_impl,
    decode_rows,
    native_path,
)


def paged_decode(q, k_pool, v_pool, block_tables, seq_lens, *, k_scale=None, v_scale=None,
                 k_nonfinite=None, v_nonfinite=None, scale: float | None = None,
                 chunk: int = DEFAULT_CHUNK, impl: str = "auto", return_lse: bool = False):
    """q (B, Hq, Nq, D) against pools k_pool (Hkv, NB, bs, D), v_pool (Hkv, NB, bs, Dv) in
    float32/bfloat16/float16, or int8 codes with k_scale/v_scale (Hkv, NB, bs, g) float32
    and optional side tables (indices (n, 4) as (h, block, slot, d), values (n,)) of the
    codes −128. block_tables (B, W) integer, seq_lens (B,) in [0, W·bs]. `chunk`: keys per
    work item at most. Returns out (B, Hq, Nq, Dv) in q's dtype, or (out, lse)."""
    check_tensor("q", q, 4)
    check_tensor("k_pool", k_pool, 4)
    check_tensor("v_pool", v_pool, 4)
    check_tensor("block_tables", block_tables, 2)
    check_tensor("seq_lens", seq_lens, 1)
    B, Hq, _, D = q.shape
    Hkv, NB, bs, Dk = k_pool.shape
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"q dtype ({q.dtype}) must be float32, bfloat16 or float16")
    if v_pool.shape[:3] != k_pool.shape[:3] or Dk != D:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} must "
                         f"share (Hkv, num_blocks, block_size), with k head_dim = q's ({D})")
    if Hq == 0 or Hkv == 0 or D == 0 or Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a positive multiple of k/v heads ({Hkv}); "
                         f"head_dim ({D}) must be positive")
    check_kv_dtypes(k_pool, v_pool, k_scale, v_scale, names=("k_pool", "v_pool"))
    if block_tables.dtype not in (torch.int32, torch.int64) or seq_lens.dtype not in (
            torch.int32, torch.int64):
        raise TypeError(f"block_tables ({block_tables.dtype}) and seq_lens ({seq_lens.dtype}) "
                        "must be int32/int64 tensors")
    W = block_tables.shape[1]
    if block_tables.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} and seq_lens "
                         f"{tuple(seq_lens.shape)} must have batch {B}")
    lens = seq_lens.long()
    if B and bool(((lens < 0) | (lens > W * bs)).any()):
        raise ValueError(f"seq_lens must lie in [0, {W * bs}] (table width × block_size), "
                         f"got {lens.tolist()}")
    tables = block_tables.long().contiguous()
    chunk = check_positive_int("chunk", chunk)
    impl = choose_impl(impl)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale ({scale}) must be a finite float > 0")
    pools = [t.contiguous() for t in (k_pool, v_pool)]  # a layer of a pool: already so
    sc = [None, None] if k_scale is None else [t.contiguous().reshape(Hkv * NB * bs, -1)
                                               for t in (k_scale, v_scale)]
    kv = KVRows(pools[0].reshape(-1, D), pools[1].reshape(-1, v_pool.shape[3]), sc[0], sc[1],
                tables, NB * bs, bs, bs,
                _side_flat(k_nonfinite, tuple(k_pool.shape), "k_nonfinite"),
                _side_flat(v_nonfinite, tuple(v_pool.shape), "v_nonfinite"))
    if native_path(impl, kv):
        kv.nblocks = NB  # the kernel checks the entries it reads (no pass over the tables here)
    else:
        check_table_entries(tables, lens, bs, NB)
        kv.table = tables.clamp(0, NB - 1)  # unused entries are never read; keep them in range
    out, lse = decode_rows(q, kv, lens, torch.zeros(B, dtype=torch.int64), hkv=Hkv,
                           scale=scale, chunk=chunk, impl=impl)
    return (out, lse) if return_lse else out
