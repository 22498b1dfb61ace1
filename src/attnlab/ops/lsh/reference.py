"""Dense references for Reformer LSH attention (float32, obviously correct, O(N²)).

- `shared_qk_attention`: exact shared-QK attention (Kitaev et al. 2020, §2): keys are the
  unit-normalised queries, a token attends to itself only when no other key is visible.
- `lsh_visible`: the dense set of (query, key) pairs LSH attention looks at: the pair is
  visible when, in some hash round, after sorting tokens by (bucket, position) and cutting
  the order into chunks, the key sits in the query's chunk or the chunk before it.
- `lsh_attention_reference`: exact softmax over that set, each key counted once. The fast
  path with `dedup=True` must equal it to float32 tolerance.
"""
from __future__ import annotations

import math

import torch

from ..softmax.reference import attention_reference
from .hashing import hash_buckets


def normalized_keys(qk: torch.Tensor) -> torch.Tensor:
    """k = qk / |qk| (float32); a zero vector stays zero."""
    x = qk.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def self_rule(visible: torch.Tensor) -> torch.Tensor:
    """Drop the diagonal from a (…, N, N) visibility mask, except in rows where the
    diagonal is the only visible entry (Reformer: self only when nothing else is seen)."""
    n = visible.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=visible.device)
    other = visible & ~eye
    alone = ~other.any(-1, keepdim=True)  # (…, N, 1)
    return other | (eye & alone)


def shared_qk_attention(qk: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        scale: float | None = None, return_lse: bool = False):
    """Exact shared-QK attention: qk (B, H, N, D), v (B, H, N, Dv)."""
    n = qk.shape[2]
    vis = torch.ones(n, n, dtype=torch.bool, device=qk.device)
    if causal:
        vis = torch.tril(vis)
    mask = self_rule(vis)
    scale = 1.0 / math.sqrt(qk.shape[-1]) if scale is None else scale
    return attention_reference(qk.float(), normalized_keys(qk), v.float(), mask=mask,
                               scale=scale, return_lse=return_lse)


def chunk_index(buckets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(…, N) bucket ids -> (…, N) chunk of each token after a stable sort by (bucket, pos)."""
    n = buckets.shape[-1]
    pos = torch.arange(n, device=buckets.device)
    order = torch.argsort(buckets * n + pos, dim=-1)  # unique keys: the sort is stable
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, pos.expand_as(order))  # rank[token] = place in sorted order
    return rank // chunk_size


def lsh_visible(qk: torch.Tensor, rotations: torch.Tensor, chunk_size: int,
                causal: bool) -> torch.Tensor:
    """(B, H, N, N) bool: the pairs LSH attention sees (self rule applied)."""
    chunks = chunk_index(hash_buckets(qk, rotations), chunk_size)  # (B, H, R, N)
    diff = chunks.unsqueeze(-1) - chunks.unsqueeze(-2)  # (B, H, R, Nq, Nk)
    vis = ((diff == 0) | (diff == 1)).any(dim=2)  # own chunk or previous, in any round
    if causal:
        vis = torch.tril(vis)
    return self_rule(vis)


def lsh_attention_reference(qk: torch.Tensor, v: torch.Tensor, rotations: torch.Tensor, *,
                            chunk_size: int, causal: bool = False,
                            scale: float | None = None, return_lse: bool = False):
    """Softmax over the union of LSH-visible keys (each counted once), dense."""
    mask = lsh_visible(qk, rotations, chunk_size, causal)
    scale = 1.0 / math.sqrt(qk.shape[-1]) if scale is None else scale
    return attention_reference(qk.float(), normalized_keys(qk), v.float(), mask=mask,
                               scale=scale, return_lse=return_lse)
