"""Head detectors: previous-token, duplicate-token, induction and sink scores per head.

A detector compares attention patterns (…, N, N) with a binary target matrix D (which
key each query "should" read) over a set of scored query rows, with one of three rules:
- "mass": mean over scored rows of Σ_j P_ij D_ij, the fraction of each row's attention
  mass that lands on the target (rows sum to 1). An ideal previous-token head over T
  tokens scores (T−1)/T: row 0 has no previous token.
- "mul": TransformerLens `detect_head` (Nanda & Bloom 2022): Σ P∘D / Σ P over the scored
  rows, after zeroing column 0 (`exclude_bos`) and/or the diagonal (`exclude_current`).
- "abs": TransformerLens' error measure: 1 − (mean over scored rows of Σ_j |P_ij − D_ij|);
  1 for an exact match, down to −1.
Induction (Olsson et al. 2022, "In-context Learning and Induction Heads"): on a random
sequence of period T repeated, query i ≥ T should read key i − T + 1 (the token after the
previous occurrence of the current token); duplicate-token heads read i − T. Both are
scored on the repeated rows i ≥ T only. Sink score: mass on key 0 over rows 1..N−1
(Xiao et al. 2023, StreamingLLM). Patterns may come from attnlab (`run_with_cache`) or
from Hugging Face models (`hooks.hf_patterns`). Cost O(numel(pattern)) per detector.
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from ..models.data import repeated_random_tokens

__all__ = ["copying_score", "duplicate_token_score", "head_table", "induction_score",
           "previous_token_score", "repeated_random_tokens", "score", "sink_score"]

RULES = ("mass", "mul", "abs")
CAUSAL_TOL = 1e-6


def check_pattern(pattern, causal: bool) -> torch.Tensor:
    """Patterns are (…, N, N) with N ≥ 1; with `causal`, no mass above the diagonal."""
    check_tensor("pattern", pattern)
    if pattern.ndim < 2 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must be square (…, N, N) (queries = keys), got shape "
                         f"{tuple(pattern.shape)}")
    if causal:
        upper = pattern.float().triu(1).abs().amax() if pattern.shape[-1] > 1 else 0.0
        if float(upper) > CAUSAL_TOL:
            raise ValueError(f"pattern has mass {float(upper):.3g} above the diagonal but this "
                             "detector needs a causal pattern; pass causal=False for "
                             "bidirectional models (e.g. BERT)")
    return pattern


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"rule ({rule!r}) must be one of {list(RULES)}")
    return rule


def offset_target(n: int, offset: int, first_row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(D (n, n) with D[i, i − offset] = 1 where 0 ≤ i − offset, rows mask (n,) of rows ≥ first_row)."""
    D = torch.zeros(n, n)
    rows = torch.arange(n)
    ok = rows - offset >= 0
    D[rows[ok], rows[ok] - offset] = 1.0
    return D, rows >= first_row


def score(pattern: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, rule: str = "mass",
          *, exclude_bos: bool = False, exclude_current: bool = False,
          causal: bool = True) -> torch.Tensor:
    """Score patterns (…, N, N) against target (N, N) on the query rows where `rows` (N,) is
    True; returns one score per leading index (…), e.g. (L, B, H), averaged over the rows.

    Average over the batch yourself (`.mean(dim)`) where wanted.
    """
    check_pattern(pattern, causal)
    check_rule(rule)
    N = pattern.shape[-1]
    if tuple(target.shape) != (N, N) or tuple(rows.shape) != (N,):
        raise ValueError(f"target {tuple(target.shape)} / rows {tuple(rows.shape)} must be "
                         f"({N}, {N}) / ({N},)")
    if not bool(rows.any()):
        raise ValueError(f"no query row is scored (sequence length {N} too short for this "
                         "detector)")
    P = pattern.float()[..., rows, :]  # (…, R, N)
    D = target.to(P.device, P.dtype)[rows]  # (R, N)
    if rule == "mass":
        return (P * D).sum(-1).mean(-1)
    keep = torch.ones_like(D)
    if exclude_bos:
        keep[:, 0] = 0
    if exclude_current:
        idx = torch.nonzero(rows).flatten().to(P.device)
        keep[torch.arange(len(idx)), idx] = 0
    P = P * keep
    if rule == "mul":
        return (P * D).sum((-1, -2)) / P.sum((-1, -2)).clamp_min(1e-30)
    return 1.0 - ((P - D * keep).abs().sum(-1)).mean(-1)


def previous_token_score(pattern: torch.Tensor, rule: str = "mass", **kw) -> torch.Tensor:
    """Attention to key i − 1, all rows scored (row 0 has no target)."""
    D, rows = offset_target(check_pattern(pattern, False).shape[-1], 1)
    return score(pattern, D, rows, rule, **kw)


def _period(period: int, n: int) -> int:
    check_positive_int("period", period)
    if 2 * period > n:
        raise ValueError(f"period ({period}) must be <= half the sequence length ({n}): the "
                         "detector needs at least one full repeat")
    return period


def induction_score(pattern: torch.Tensor, period: int, rule: str = "mass", **kw) -> torch.Tensor:
    """Attention from i ≥ period to i − period + 1 on a sequence repeating with `period`."""
    n = check_pattern(pattern, False).shape[-1]
    D, rows = offset_target(n, _period(period, n) - 1, first_row=period)
    return score(pattern, D, rows, rule, **kw)


def duplicate_token_score(pattern: torch.Tensor, period: int, rule: str = "mass",
                          **kw) -> torch.Tensor:
    """Attention from i ≥ period to its earlier copy i − period."""
    n = check_pattern(pattern, False).shape[-1]
    D, rows = offset_target(n, _period(period, n), first_row=period)
    return score(pattern, D, rows, rule, **kw)


def sink_score(pattern: torch.Tensor, rule: str = "mass", **kw) -> torch.Tensor:
    """Attention mass on key 0 from rows 1..N−1 (row 0 can only read key 0 under a causal mask)."""
    n = check_pattern(pattern, False).shape[-1]
    if n < 2:
        raise ValueError(f"sink_score needs at least 2 positions, got {n}")
    D = torch.zeros(n, n)
    D[:, 0] = 1.0
    rows = torch.arange(n) >= 1
    return score(pattern, D, rows, rule, **kw)


def head_table(patterns: torch.Tensor, period: int, rule: str = "mass",
               causal: bool = True) -> dict[str, torch.Tensor]:
    """All four scores per (layer, head) for patterns (L, B, H, N, N) of a repeated sequence
    with no BOS (batch-averaged): {"previous", "duplicate", "induction", "sink"} -> (L, H)."""
    check_tensor("patterns", patterns, 5)
    kw = {"causal": causal}
    return {
        "previous": previous_token_score(patterns, rule, **kw).mean(1),
        "duplicate": duplicate_token_score(patterns, period, rule, **kw).mean(1),
        "induction": induction_score(patterns, period, rule, **kw).mean(1),
        "sink": sink_score(patterns, rule, **kw).mean(1),
    }


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
