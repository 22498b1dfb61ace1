"""Quality of Reformer LSH attention against exact shared-QK attention.

- `relative_error`: |o_lsh − o_exact| / |o_exact| (Frobenius, over all rows);
- `topk_recall`: fraction of each query's k highest-scoring exact keys (self excluded)
  that LSH attended to in at least one round — the keys that carry most of the softmax
  mass, so recall bounds how much of it LSH can recover;
- `clustered_qk`: shared QK vectors around a few centres (about one chunk of tokens per
  centre), where attention is peaked as LSH assumes; i.i.d. Gaussian inputs make
  attention nearly uniform, the worst case for any sparse approximation.
Dense O(N²) evaluation: for N up to a few thousand.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int
from ..ops.lsh import lsh_attention, lsh_visible, random_rotations, shared_qk_attention
from ..ops.lsh.reference import normalized_keys


def clustered_qk(n: int, d: int = 64, n_clusters: int | None = None, spread: float = 8.0,
                 noise: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(qk, v), each (1, 1, N, d): qk = spread·centre + noise·ε, v ~ N(0, 1)."""
    check_positive_int("n", n)
    n_clusters = max(1, n // 32) if n_clusters is None else check_positive_int(
        "n_clusters", n_clusters)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, d, generator=g) * spread
    idx = torch.randint(0, n_clusters, (n,), generator=g)
    qk = centres[idx] + noise * torch.randn(n, d, generator=g)
    return qk.view(1, 1, n, d), torch.randn(1, 1, n, d, generator=g)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


def topk_recall(qk: torch.Tensor, rotations: torch.Tensor, chunk_size: int, k: int,
                causal: bool = False) -> float:
    """Mean fraction of each query's top-k exact keys (self excluded) that LSH sees."""
    n = qk.shape[2]
    scores = qk.float() @ normalized_keys(qk).transpose(-1, -2)  # (B, H, N, N)
    eye = torch.eye(n, dtype=torch.bool)
    scores = scores.masked_fill(eye, float("-inf"))
    if causal:
        scores = scores.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)),
                                    float("-inf"))
    kk = min(k, n - 1)
    top = scores.topk(kk, dim=-1).indices  # (B, H, N, k)
    valid = scores.gather(-1, top) > float("-inf")
    seen = lsh_visible(qk, rotations, chunk_size, causal).gather(-1, top)
    return float((seen & valid).sum() / valid.sum().clamp_min(1))


def quality_curve(qk: torch.Tensor, v: torch.Tensor, hashes: list[int], chunk_size: int,
                  n_buckets: int, k: int = 8, seed: int = 0, causal: bool = False
                  ) -> dict[int, dict[str, float]]:
    """For each n_hashes: relative error of the output and top-k recall (nested rounds)."""
    exact = shared_qk_attention(qk, v, causal=causal)
    out = {}
    for r in hashes:
        rot = random_rotations(qk.shape[-1], r, n_buckets, seed)
        approx = lsh_attention(qk, v, rotations=rot, chunk_size=chunk_size, causal=causal)
        out[r] = {"relative_error": relative_error(approx, exact),
                  "topk_recall": topk_recall(qk, rot, chunk_size, k, causal)}
    return out
