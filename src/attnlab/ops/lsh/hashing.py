"""Angular LSH for Reformer attention (Kitaev et al. 2020, §2; Andoni et al. 2015).

A random rotation R (D × n_buckets/2) per hash round maps x to
`bucket = argmax([xR ; −xR])`: vectors at a small angle land in the same bucket with high
probability. Hashing costs O(n_hashes · N · D · n_buckets/2). With Reformer's choice
n_buckets ≈ N / chunk this term is N²·D/(2·chunk) per round — quadratic, but 1/(2·chunk) of
full attention's N²·D; at N = 65536, chunk 64 it is about twice the chunked attention's
work, so it is computed in row blocks without materialising [xR ; −xR].
"""
from __future__ import annotations

import torch

from ..._checks import check_positive_int, check_tensor

Rotations = torch.Tensor | tuple[torch.Tensor, ...]


def check_n_buckets(n_buckets) -> int | tuple[int, ...]:
    """`n_buckets`: an even int >= 2 (half of the buckets are −xR), or a tuple of such
    factors (factorised hashing, bucket count = their product)."""
    if isinstance(n_buckets, tuple):
        if not n_buckets:
            raise ValueError("n_buckets must not be an empty tuple")
        return tuple(check_n_buckets(f) for f in n_buckets)  # type: ignore[misc]
    check_positive_int("n_buckets", n_buckets, minimum=2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets ({n_buckets}) must be even: buckets come in ±xR pairs")
    return n_buckets


def default_n_buckets(seq_len: int, chunk_size: int) -> int:
    """Reformer's choice: about one bucket per chunk, rounded up to an even count >= 2."""
    n = -(-seq_len // chunk_size)
    return max(2, n + (n % 2))


def random_rotations(head_dim: int, n_hashes: int, n_buckets: int | tuple[int, ...],
                     seed: int = 0, dtype: torch.dtype = torch.float32,
                     device="cpu") -> Rotations:
    """(n_hashes, D, n_buckets // 2) standard-normal rotations from a seeded generator.

    Rounds are drawn in order, so the first r rounds for `n_hashes = R` equal the rounds
    for `n_hashes = r` with the same seed (nested: more rounds only add hashes). A tuple
    `n_buckets = (n1, n2, …)` gives one rotation per factor (factorised hashing, as in
    trax's Reformer): bucket = b1 + n1·b2 + n1·n2·b3 …, n1·n2·… buckets for a hashing cost
    of O(N·D·(n1 + n2 + …)/2) instead of O(N·D·n1·n2·…/2).
    """
    check_positive_int("head_dim", head_dim)
    check_positive_int("n_hashes", n_hashes)
    n_buckets = check_n_buckets(n_buckets)
    check_positive_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    sizes = n_buckets if isinstance(n_buckets, tuple) else (n_buckets,)
    rots = tuple(torch.randn(n_hashes, head_dim, n // 2, generator=g).to(dtype=dtype,
                                                                        device=device)
                 for n in sizes)
    return rots if isinstance(n_buckets, tuple) else rots[0]


def check_rotations(rotations, head_dim: int) -> Rotations:
    """One (n_hashes, D, n_buckets // 2) tensor, or a tuple of them with equal n_hashes."""
    parts = rotations if isinstance(rotations, tuple) else (rotations,)
    if not parts:
        raise ValueError("rotations must not be an empty tuple")
    for r in parts:
        check_tensor("rotations", r, 3)
        if r.shape[1] != head_dim or r.shape[0] != parts[0].shape[0] or r.shape[2] < 1:
            raise ValueError(f"rotations has shape {tuple(r.shape)}; expected "
                             f"(n_hashes, head_dim={head_dim}, n_buckets // 2)")
    return rotations


def rotation_parts(rotations: Rotations) -> tuple[torch.Tensor, ...]:
    return rotations if isinstance(rotations, tuple) else (rotations,)


def total_buckets(rotations: Rotations) -> int:
    """Number of distinct bucket ids the rotations produce."""
    n = 1
    for r in rotation_parts(rotations):
        n *= 2 * r.shape[2]
    return n


def hash_buckets(x: torch.Tensor, rotations: Rotations, rows: int = 2048) -> torch.Tensor:
    """Bucket ids (B, H, n_hashes, N) in [0, total_buckets) of x (B, H, N, D).

    Per rotation, argmax([xR ; −xR]) without building the concatenation: with a = max(xR)
    and b = max(−xR) = −min(xR), the bucket is argmax(xR) if a >= b, else n_buckets/2 +
    argmin(xR) (identical ties: the first half wins, first index first). Computed `rows`
    tokens at a time so the (rows, n_buckets/2) projections stay small. Factorised
    rotations combine as b1 + n1·b2 + n1·n2·b3 + ….
    """
    B, H, N, _ = x.shape
    parts = rotation_parts(rotations)
    out = torch.zeros(B, H, parts[0].shape[0], N, dtype=torch.long, device=x.device)
    mult = 1
    for rot in parts:
        half = rot.shape[2]
        rot = rot.float()
        for n0 in range(0, N, rows):
            xr = torch.einsum("bhnd,rdk->bhrnk", x[:, :, n0:n0 + rows].float(), rot)  # (B, H, R, n, half)
            hi, arg_hi = xr.max(dim=-1)
            lo, arg_lo = xr.min(dim=-1)
            out[..., n0:n0 + rows] += mult * torch.where(hi >= -lo, arg_hi, arg_lo + half)
        mult *= 2 * half
    return out
