"""The paged oracle: copy each sequence's blocks into a contiguous tensor, then dense attention.

Obviously correct and O(L·Hkv·D) extra memory per sequence — exactly the copy the fast
path avoids.
"""
from __future__ import annotations

import torch

from ...masks import causal
from ..softmax.reference import attention_reference


def gather_sequence(pool: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """pool (Hkv, num_blocks, bs, D), table (n_blocks,) -> (Hkv, length, D), a copy."""
    Hkv, _, bs, D = pool.shape
    n = -(-length // bs)  # blocks holding the sequence
    blocks = pool.index_select(1, table[:n].long())  # (Hkv, n, bs, D)
    return blocks.reshape(Hkv, n * bs, D)[:, :length]  # (Hkv, length, D)


def paged_attention_reference(q, k_pool, v_pool, block_tables, seq_lens, *, scale=None,
                              return_lse: bool = False):
    """Same contract as `paged_attention`, one sequence at a time, dense float32."""
    outs, lses = [], []
    for b in range(q.shape[0]):
        L = int(seq_lens[b])
        k = gather_sequence(k_pool, block_tables[b], L).unsqueeze(0)  # (1, Hkv, L, D)
        v = gather_sequence(v_pool, block_tables[b], L).unsqueeze(0)  # (1, Hkv, L, Dv)
        o, lse = attention_reference(q[b:b + 1], k, v, mask=causal(), scale=scale,
                                     return_lse=True)
        outs.append(o)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out
