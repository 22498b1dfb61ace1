"""Paged attention: split-KV decoding whose chunks are block ranges of a paged pool.

PagedAttention (Kwon et al., SOSP 2023) stores a sequence's keys/values in fixed-size
physical blocks listed by a block table. Here the table is cut into ranges of
`blocks_per_chunk` logical blocks; each range gives a partial `(o_c, lse_c)` — with
torch's fused CPU flash kernel when every key of the range is visible to every query, with
the masked split-KV chunk kernel of `ops.softmax.decode` (Flash-Decoding) otherwise — and
the partials are combined exactly by `merge_many` (conventions §3). Slots past the longest
sequence are dropped, not masked. The whole history is never copied:
- a range whose physical blocks are consecutive (the usual case right after allocation)
  is read in place through a view;
- any other range is gathered (`index_select`) into one chunk-sized buffer, so extra
  memory is O(B·Hkv·chunk·D), independent of the context length.

Per step this reads 2·L·Hkv·D elements per sequence and does ≈4·L·Hq·Nq·D FLOPs
(memory-bound for decode). Pool layout: `(Hkv, num_blocks, block_size, D)`, so a run of
consecutive blocks of one head is one contiguous slab.
"""
from __future__ import annotations

import math

import torch

from ..._checks import check_positive_int, check_tensor
from ..softmax.decode import _chunk_partial
from ..softmax.flash import check_result, compute_dtype
from ..softmax.merge import merge_many

# chunk sizes (tokens), measured in benchmarks/results/serving.md: a block range read in
# place streams best in long chunks (as split-KV's 8192); a gathered chunk should stay
# cache-sized (512–1024 tokens of 8 heads × 128 dims gathered fastest)
VIEW_CHUNK_TOKENS = 8192
GATHER_CHUNK_TOKENS = 1024


def check_paged_inputs(q, k_pool, v_pool, block_tables, seq_lens):
    """Validate shapes at the public boundary. Returns (B, Hq, Hkv, Nq, D, Dv, bs, NB)."""
    check_tensor("q", q, 4)
    check_tensor("k_pool", k_pool, 4)
    check_tensor("v_pool", v_pool, 4)
    check_tensor("block_tables", block_tables, 2)
    check_tensor("seq_lens", seq_lens, 1)
    B, Hq, Nq, D = q.shape
    Hkv, NB, bs, Dk = k_pool.shape
    if v_pool.shape[:3] != k_pool.shape[:3]:
        raise ValueError(f"v_pool shape {tuple(v_pool.shape)} must match k_pool "
                         f"{tuple(k_pool.shape)} in (Hkv, num_blocks, block_size)")
    if Dk != D:
        raise ValueError(f"k_pool head_dim ({Dk}) must equal q head_dim ({D})")
    if not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        raise ValueError("k_pool and v_pool must be contiguous (one layer of a pool), got a "
                         "strided view; expected e.g. cache.k_pool[layer]")
    if Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be divisible by k/v heads ({Hkv})")
    if q.dtype != k_pool.dtype or q.dtype != v_pool.dtype:
        raise TypeError(f"q, k_pool, v_pool dtypes ({q.dtype}, {k_pool.dtype}, "
                        f"{v_pool.dtype}) must be one dtype")
    if block_tables.dtype not in (torch.int32, torch.int64) or seq_lens.dtype not in (
            torch.int32, torch.int64):
        raise TypeError(f"block_tables ({block_tables.dtype}) and seq_lens ({seq_lens.dtype}) "
                        "must be integer tensors")
    if block_tables.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} and seq_lens "
                         f"{tuple(seq_lens.shape)} must have batch {B}")
    if block_tables.numel() and (int(block_tables.min()) < 0 or int(block_tables.max()) >= NB):
        raise ValueError(f"block_tables entries must lie in [0, {NB}), got range "
                         f"[{int(block_tables.min())}, {int(block_tables.max())}]")
    lo, hi = int(seq_lens.min()), int(seq_lens.max())
    if lo < Nq or hi > block_tables.shape[1] * bs:
        raise ValueError(f"seq_lens must lie in [Nq={Nq}, {block_tables.shape[1] * bs}] "
                         f"(table width × block_size), got range [{lo}, {hi}]")
    return B, Hq, Hkv, Nq, D, v_pool.shape[-1], bs, NB


def _chunk_kv(pool: torch.Tensor, tables: torch.Tensor, j0: int, j1: int,
              buf: list[torch.Tensor | None]):
    """Keys (or values) of logical blocks [j0, j1) of every sequence: (B, Hkv, c·bs, D).

    Consecutive physical blocks of a single sequence are returned as a view; otherwise the
    blocks are gathered into `buf[0]`, a chunk-sized buffer reused across chunks (a fresh
    allocation per chunk costs page faults: ~5× slower gathers, measured)."""
    Hkv, NB, bs, D = pool.shape
    B, c = tables.shape[0], j1 - j0
    ids = tables[:, j0:j1]  # (B, c)
    if B == 1 and (c == 1 or bool((ids[0, 1:] - ids[0, :-1] == 1).all())):
        first = int(ids[0, 0])
        return pool[:, first:first + c].reshape(1, Hkv, c * bs, D)  # view, no copy
    rows = (torch.arange(Hkv)[:, None] * NB + ids.reshape(1, -1)).reshape(-1)  # (Hkv·B·c,)
    if buf[0] is None or buf[0].shape[0] < rows.numel():
        buf[0] = torch.empty(rows.numel(), bs * D, dtype=pool.dtype, device=pool.device)
    out = buf[0][: rows.numel()]
    torch.index_select(pool.reshape(Hkv * NB, bs * D), 0, rows, out=out)  # one chunk
    return out.view(Hkv, B, c * bs, D).transpose(0, 1)  # (B, Hkv, c·bs, D)


def _visible_partial(qg, kc, vc, scale):
    """(o, lse) of a chunk with no masked key: torch's fused CPU flash kernel (one op,
    returns lse) in float32, the split-KV chunk kernel otherwise."""
    if qg.dtype == torch.float32 and qg.device.type == "cpu" and kc.shape[2] > 0 \
            and vc.shape[-1] == qg.shape[-1]:  # the fused kernel needs Dv == D
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qg, kc, vc, 0.0, False, scale=scale)[:2]
        return o, lse.float()
    return _chunk_partial(qg, kc, vc, scale, None)


def paged_attention(q, k_pool, v_pool, block_tables, seq_lens, *, scale: float | None = None,
                    blocks_per_chunk: int | None = None, return_lse: bool = False):
    """Exact attention of the last Nq tokens of B sequences over their paged history.

    q (B, Hq, Nq, D); k_pool (Hkv, num_blocks, bs, D); v_pool (Hkv, num_blocks, bs, Dv);
    block_tables (B, max_blocks) integer (entries past a sequence's last block are ignored
    but must be valid ids); seq_lens (B,) tokens stored per sequence, including the Nq new
    ones. Query i of sequence b sits at position seq_lens[b] − Nq + i and sees keys
    0..that position (bottom-right causal, conventions §2). Returns out (B, Hq, Nq, Dv) or
    (out, lse) with lse float32 (B, Hq, Nq).
    """
    B, Hq, Hkv, Nq, D, Dv, bs, _ = check_paged_inputs(q, k_pool, v_pool, block_tables, seq_lens)
    lens = seq_lens.long()
    n_blocks = -(-int(lens.max()) // bs)
    tables = block_tables.long()
    if blocks_per_chunk is None:
        used = tables[0, :n_blocks]
        in_place = B == 1 and bool((used[1:] - used[:-1] == 1).all())
        c = max(1, (VIEW_CHUNK_TOKENS if in_place else GATHER_CHUNK_TOKENS) // bs)
    else:
        c = check_positive_int("blocks_per_chunk", blocks_per_chunk)
    cd = compute_dtype(q)
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qg = q.to(cd).reshape(B, Hkv, G * Nq, D)  # (B, Hkv, G·Nq, D): group rows share a read
    q_pos = lens[:, None] - Nq + torch.arange(Nq)  # (B, Nq) absolute query positions
    min_q = int(q_pos[:, 0].min())  # every key below this is visible to every query
    max_len = int(lens.max())
    outs, lses = [], []
    kbuf: list[torch.Tensor | None] = [None]
    vbuf: list[torch.Tensor | None] = [None]
    for j0 in range(0, n_blocks, c):
        j1 = min(j0 + c, n_blocks)
        kc = _chunk_kv(k_pool, tables, j0, j1, kbuf).to(cd)
        vc = _chunk_kv(v_pool, tables, j0, j1, vbuf).to(cd)
        stop = j1 * bs  # key positions of this range: [j0·bs, stop)
        if stop > max_len:  # slots past the longest sequence hold no key: drop them
            stop = max_len
            kc, vc = kc[:, :, : stop - j0 * bs], vc[:, :, : stop - j0 * bs]
        if stop - 1 <= min_q:  # every key of the range is visible to every query
            o, lse = _visible_partial(qg, kc, vc, scale)
        else:
            kp = torch.arange(j0 * bs, stop)  # (n,) key positions
            vis = kp[None, None, :] <= q_pos[:, :, None]  # (B, Nq, n)
            keep = vis[:, None, None].expand(B, 1, G, Nq, kp.numel())
            keep = keep.reshape(B, 1, G * Nq, kp.numel())  # rows ordered (group, query)
            o, lse = _chunk_partial(qg, kc, vc, scale, keep)
        outs.append(o)
        lses.append(lse)
    o, lse = merge_many(outs, lses)
    out = o.reshape(B, Hq, Nq, Dv)  # (B, Hq, Nq, Dv)
    lse = lse.reshape(B, Hq, Nq)
    check_result(out, lse)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
