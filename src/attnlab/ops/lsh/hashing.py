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


def hash_buckets(x: torch.Tensor, rotations: torch.Tensor, rows: int = 2048) -> torch.Tensor:
    """Bucket ids (B, H, n_hashes, N) in [0, n_buckets) of x (B, H, N, D).

    argmax([xR ; −xR]) without building the concatenation: with a = max(xR) and
    b = max(−xR) = −min(xR), the bucket is argmax(xR) if a >= b, else n_buckets/2 +
    argmin(xR) (identical ties: the first half wins, first index first). Computed `rows`
    tokens at a time so the (rows, n_buckets/2) projections stay small.
    """
    B, H, N, _ = x.shape
    R, _, half = rotations.shape
    rot = rotations.float()
    out = torch.empty(B, H, R, N, dtype=torch.long, device=x.device)
    for n0 in range(0, N, rows):
        xr = torch.einsum("bhnd,rdk->bhrnk", x[:, :, n0:n0 + rows].float(), rot)  # (B, H, R, n, half)
        hi, arg_hi = xr.max(dim=-1)
        lo, arg_lo = xr.min(dim=-1)
        out[..., n0:n0 + rows] = torch.where(hi >= -lo, arg_hi, arg_lo + half)
    return out
