"""Angular LSH for Reformer attention (Kitaev et al. 2020, §2; Andoni et al. 2015).

A random rotation R (D × n_buckets/2) per hash round maps x to
`bucket = argmax([xR ; −xR])`: vectors at a small angle land in the same bucket with high
probability. Hashing costs O(n_hashes · N · D · n_buckets/2).
"""
from __future__ import annotations

import torch

from ..._checks import check_positive_int, check_tensor


def check_n_buckets(n_buckets) -> int:
    """`n_buckets` must be an even int >= 2 (half of the buckets are −xR)."""
    check_positive_int("n_buckets", n_buckets, minimum=2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets ({n_buckets}) must be even: buckets come in ±xR pairs")
    return n_buckets


def default_n_buckets(seq_len: int, chunk_size: int) -> int:
    """Reformer's choice: about one bucket per chunk, rounded up to an even count >= 2."""
    n = -(-seq_len // chunk_size)
    return max(2, n + (n % 2))


def random_rotations(head_dim: int, n_hashes: int, n_buckets: int, seed: int = 0,
                     dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """(n_hashes, D, n_buckets // 2) standard-normal rotations from a seeded generator.

    Rounds are drawn in order, so the first r rounds for `n_hashes = R` equal the rounds
    for `n_hashes = r` with the same seed (nested: more rounds only add hashes).
    """
    check_positive_int("head_dim", head_dim)
    check_positive_int("n_hashes", n_hashes)
    check_n_buckets(n_buckets)
    check_positive_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(n_hashes, head_dim, n_buckets // 2, generator=g)
    return rot.to(dtype=dtype, device=device)


def check_rotations(rotations, head_dim: int) -> torch.Tensor:
    check_tensor("rotations", rotations, 3)
    if rotations.shape[1] != head_dim:
        raise ValueError(f"rotations has shape {tuple(rotations.shape)}; expected "
                         f"(n_hashes, head_dim={head_dim}, n_buckets // 2)")
    return rotations


def hash_buckets(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Bucket ids (B, H, n_hashes, N) in [0, n_buckets) of x (B, H, N, D)."""
    rotated = torch.einsum("bhnd,rdk->bhrnk", x.float(), rotations.float())  # (B, H, R, N, nb/2)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # (B, H, R, N)
