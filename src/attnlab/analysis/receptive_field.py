"""Receptive field of stacked sparse attention: the formula, the graph, and autograd.

With L layers of sliding-window attention of W keys (self included), output position i
depends on inputs `i − L·(W−1) … i`: each layer reaches W − 1 positions further back, so
the field spans `L·(W−1) + 1` positions (conventions §2). Mistral 7B (docs/sources.md: 32 layers,
W = 4096) gives 32·4095 + 1 = 131,041, which the Mistral paper rounds to "≈131K"
(32 × 4096 = 131,072 overcounts by L − 1 = 31).

Three views that must agree:
- `theoretical_receptive_field(L, W)`: the closed form for a pure window stack;
- `graph_reach(mask, L, N)`: boolean powers of the dense mask (with the residual path):
  input j reaches output i iff a chain of L attention hops (each a visible key or staying
  put) joins them — exact for any mask (window, globals, BigBird);
- `measured_reach(...)`: autograd on a randomly initialised stack: the inputs whose
  gradient into one output is nonzero. Masked entries have probability exactly 0, so an
  input outside the field gets a gradient of exactly 0 (and perturbing it changes the
  output by exactly 0, `perturbation_effect`).
Cost: the measurement runs dense reference attention, O(L·N²·d); keep N small.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_positive_int
from ..masks import Mask
from ..ops.softmax import attention_reference


def theoretical_receptive_field(n_layers: int, window: int) -> int:
    """`L·(W−1) + 1` positions: the span of a stack of L windows of W keys each."""
    check_positive_int("n_layers", n_layers)
    check_positive_int("window", window)
    return n_layers * (window - 1) + 1


def graph_reach(mask: Mask, n_layers: int, seq_len: int, query: int | None = None) -> torch.Tensor:
    """(N,) bool: inputs that can influence output `query` (default: the last position)
    through L layers of `mask` with residual connections."""
    check_positive_int("n_layers", n_layers)
    check_positive_int("seq_len", seq_len)
    query = seq_len - 1 if query is None else query
    if not 0 <= query < seq_len:
        raise ValueError(f"query ({query}) must be in [0, {seq_len})")
    hop = mask.to_dense(seq_len, seq_len) | torch.eye(seq_len, dtype=torch.bool)  # (N, N)
    reach = torch.zeros(seq_len, dtype=torch.bool)
    reach[query] = True
    for _ in range(n_layers):  # positions reachable in one more hop backwards
        reach = (hop[reach].any(0)) | reach
    return reach


@dataclass
class RandomAttentionStack:
    """L layers `h ← h + softmax(mask, (hWq)(hWk)ᵀ/√d) (hWv)` with random weights (float64).

    A stand-in for any attention model's dependency structure: the pattern of nonzero
    input gradients depends only on the masks, not on the weights (for generic weights).
    """

    mask: Mask
    n_layers: int
    d_model: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("n_layers", self.n_layers)
        check_positive_int("d_model", self.d_model)
        g = torch.Generator().manual_seed(self.seed)
        d = self.d_model
        self.weights = [torch.randn(3, d, d, generator=g, dtype=torch.float64) / d ** 0.5
                        for _ in range(self.n_layers)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d) -> (B, N, d)."""
        n = x.shape[1]
        dense = self.mask.to_dense(n, n)  # (N, N)
        h = x
        for w in self.weights:
            q, k, v = (h @ w[i] for i in range(3))  # (B, N, d) each
            out = attention_reference(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                                      mask=dense)  # (B, 1, N, d)
            h = h + out.squeeze(1)
        return h


def measured_reach(stack, seq_len: int, d_model: int, query: int | None = None,
                   seed: int = 0) -> torch.Tensor:
    """(N,) bool: inputs with a nonzero gradient into output `query` (default: last).

    `stack` maps (1, N, d_model) -> (1, N, d_model): a `RandomAttentionStack` or any
    callable (e.g. a list of `Attention` layers composed with residuals).
    """
    check_positive_int("seq_len", seq_len)
    query = seq_len - 1 if query is None else query
    if not 0 <= query < seq_len:
        raise ValueError(f"query ({query}) must be in [0, {seq_len})")
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if isinstance(stack, RandomAttentionStack) else torch.float32
    x = torch.randn(1, seq_len, d_model, generator=g, dtype=torch.float64).to(dtype)
    x.requires_grad_(True)
    y = stack(x)  # (1, N, d)
    probe = torch.randn(d_model, generator=g, dtype=torch.float64).to(y.dtype)
    (y[0, query] @ probe).backward()
    return x.grad[0].abs().sum(-1) > 0  # (N,)


def field_size(reach: torch.Tensor, query: int | None = None) -> int:
    """Positions from the farthest reached input up to the query, inclusive."""
    query = reach.shape[0] - 1 if query is None else query
    first = int(reach.nonzero().min())
    return query - first + 1


def measured_receptive_field(mask: Mask, n_layers: int, seq_len: int, *, d_model: int = 8,
                             seed: int = 0) -> int:
    """Field of the last output of a random L-layer stack of `mask`, measured by autograd."""
    reach = measured_reach(RandomAttentionStack(mask, n_layers, d_model, seed), seq_len,
                           d_model, seed=seed)
    return field_size(reach)


@torch.no_grad()
def perturbation_effect(stack, seq_len: int, d_model: int, position: int,
                        query: int | None = None, seed: int = 0) -> float:
    """max |Δ output[query]| when the input at `position` is replaced by fresh noise."""
    query = seq_len - 1 if query is None else query
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if isinstance(stack, RandomAttentionStack) else torch.float32
    x = torch.randn(1, seq_len, d_model, generator=g, dtype=torch.float64).to(dtype)
    x2 = x.clone()
    x2[0, position] = 10 * torch.randn(d_model, generator=g, dtype=torch.float64).to(dtype)
    return float((stack(x)[0, query] - stack(x2)[0, query]).abs().max())
