"""OV-circuit copying score of one attention head (Olsson et al. 2022; Elhage et al. 2021).

Split from `heads.py` (which re-exports it): the pattern detectors read attention
matrices, this reads the weights of a TinyLM head.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int

__all__ = ["copying_score"]


def copying_score(model, layer: int, head: int, tokens: torch.Tensor | None = None) -> float:
    """OV-circuit copying score of one head (Olsson et al. 2022; Elhage et al. 2021).

    Direct path (`tokens=None`): W_U · diag(g_f) · W_O^h · W_V^h · diag(g_1) · W_E (vocab ×
    vocab, rank ≤ head_dim) with the RMSNorm gains g_1 (block input) and g_f (final).
    Effective path (`tokens` given, (B, N) ids): the input side is what the head really
    reads, the normalised residual at the block input averaged per token id over `tokens`
    (earlier layers' outputs included, so V-composition counts); the matrix is restricted
    to the ids that occur. For layer 0 they differ only by each token's RMS scale.
    The score is Σ Re λ / Σ |λ| over the eigenvalues: +1 for a pure copier (attending to
    token t raises the logit of t), −1 for an anti-copier. Eigenvalues come from the head_dim × head_dim product (same
    nonzero spectrum), O(V·d·D) plus one forward pass for the effective path.
    """
    from .hooks import check_layers, mixers_of

    mixers = mixers_of(model)
    (layer,) = check_layers([layer], len(mixers))
    m = mixers[layer]
    for attr in ("v_proj", "o_proj", "n_heads", "n_kv_heads", "head_dim"):
        if not hasattr(m, attr):
            raise TypeError(f"layer {layer} mixer {type(m).__name__} has no {attr}; "
                            "copying_score needs a softmax Attention layer")
    check_positive_int("head", head, minimum=0)
    if head >= m.n_heads:
        raise ValueError(f"head ({head}) out of range for layer {layer} with {m.n_heads} heads")
    D, g = m.head_dim, head // (m.n_heads // m.n_kv_heads)
    with torch.no_grad():
        E = model.embed.weight.float()  # (V, d)
        U = E if model.head is None else model.head.weight.float()  # (V, d)
        if tokens is None:
            X = E * model.blocks[layer].norm1.weight.float()  # (V, d): diag(g_1) W_E
        else:
            X, seen = _mean_block_input(model, layer, tokens)  # (V', d), (V,) bool
            U = U[seen]  # (V', d)
        gf = model.norm.weight.float()  # (d,)
        Wv = m.v_proj.weight.float()[g * D:(g + 1) * D]  # (D, d)
        Wo = m.o_proj.weight.float()[:, head * D:(head + 1) * D]  # (d, D)
        left = U * gf @ Wo  # (V, D): W_U diag(g_f) W_O
        right = Wv @ X.T  # (D, V): W_V · (head input per token)
        lam = torch.linalg.eigvals(right @ left)  # (D,) nonzero spectrum of left @ right
    return float(lam.real.sum() / lam.abs().sum().clamp_min(1e-30))


def _mean_block_input(model, layer: int, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-id mean of block `layer`'s normalised input over `tokens` (B, N):
    ((V', d) means for the V' ids that occur, (V,) mask of those ids). The model's forward
    validates `tokens` (shape, dtype, range) and raises on bad ones."""
    V = model.embed.weight.shape[0]
    got = {}
    hook = model.blocks[layer].norm1.register_forward_hook(
        lambda mod, inp, out: got.__setitem__("x", out.detach().float()))
    try:
        model(tokens)
    finally:
        hook.remove()
    x = got["x"].reshape(-1, got["x"].shape[-1])  # (B·N, d)
    ids = tokens.reshape(-1).long()  # (B·N,)
    sums = torch.zeros(V, x.shape[-1]).index_add_(0, ids, x)  # (V, d)
    count = torch.zeros(V).index_add_(0, ids, torch.ones(ids.numel()))  # (V,)
    seen = count > 0
    return sums[seen] / count[seen, None], seen
