"""Head detectors: offset (previous/next-token), duplicate-token, induction and sink scores.

A detector compares attention patterns (…, Nq, Nk) with a binary target D (which keys
each query "should" read) over a set of scored query rows, with one of three rules:
- "mass": mean over scored rows of Σ_j P_ij D_ij, the fraction of each row's attention
  mass that lands on the target (rows sum to 1). An ideal previous-token head over T
  tokens scores (T−1)/T: row 0 has no previous token (pass `target_rows_only=True` to
  score only rows that have a target, where the ideal is 1).
- "mul": TransformerLens `detect_head` (Nanda & Bloom 2022): Σ P∘D / Σ P over the scored
  rows, after zeroing column 0 (`exclude_bos`) and/or the diagonal (`exclude_current`).
- "abs": TransformerLens' error measure: 1 − (mean over scored rows of Σ_j |P_ij − D_ij|);
  1 for an exact match, down to −1.
Offset k (`offset_score`): query i reads key i − k (k = 1 previous token, k = −1 next
token). Induction (Olsson et al. 2022, "In-context Learning and Induction Heads"): query i
reads the token after the previous occurrence of its own token; duplicate-token heads
read that earlier occurrence. Both take either a `period` (a random sequence repeated:
targets i − T + 1 and i − T, rows i ≥ T) or the `tokens` themselves (natural text: every
earlier copy is a target; rows without one are not scored). Sink score: mass on a set of
keys (default key 0, Xiao et al. 2023 StreamingLLM; e.g. [CLS] and [SEP] for BERT) from
every query that is not itself one of those keys.

Layout: patterns (…, B, H, Nq, Nk) with Nq ≤ Nk; queries are the last Nq positions
(bottom-right alignment, conventions §2). Patterns come from attnlab (`run_with_cache`) or
from Hugging Face models (`hooks.hf_patterns`). `padding_mask` (B, Nk) marks real tokens
(True): padded queries are not scored and padded keys are never targets. Scores are one
per leading index (…, B, H); `pool_batch=True` pools the scored rows of all B sequences
instead (…, H), which is what `head_table` does. Cost O(numel(pattern)) per detector.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_positive_int, check_tensor
from ..models.data import repeated_random_tokens
from .copying import copying_score

__all__ = ["copying_score", "duplicate_token_score", "head_table", "induction_score",
           "next_token_score", "offset_score", "offset_target", "previous_token_score",
           "repeated_random_tokens", "score", "sink_score", "top_heads"]

RULES = ("mass", "mul", "abs")
CAUSAL_TOL = 1e-6


def check_pattern(pattern, causal: bool) -> torch.Tensor:
    """Patterns are (…, Nq, Nk) with 1 ≤ Nq ≤ Nk; with `causal`, no mass above the
    (bottom-right aligned) diagonal."""
    check_tensor("pattern", pattern)
    if pattern.ndim < 2 or pattern.shape[-2] > pattern.shape[-1] or pattern.shape[-2] < 1:
        raise ValueError(f"pattern must be (…, Nq, Nk) with 1 <= Nq <= Nk (queries are the "
                         f"last Nq positions), got shape {tuple(pattern.shape)}")
    if causal:
        nq, nk = pattern.shape[-2:]
        upper = pattern.float().triu(nk - nq + 1).abs().amax() if nk > 1 else 0.0
        if float(upper) > CAUSAL_TOL:
            raise ValueError(f"pattern has mass {float(upper):.3g} above the diagonal but this "
                             "detector needs a causal pattern; pass causal=False for "
                             "bidirectional models (e.g. BERT)")
    return pattern


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"rule ({rule!r}) must be one of {list(RULES)}")
    return rule


def _query_positions(nq: int, nk: int) -> torch.Tensor:
    return torch.arange(nk - nq, nk)  # (Nq,) absolute position of each query row


def offset_target(n: int, offset: int, first_row: int = 0,
                  n_keys: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(D (n, n_keys) with D[i, p_i − offset] = 1 where that key exists, rows (n,) of query
    positions ≥ first_row); p_i = i + n_keys − n is query i's position. Any offset ±k."""
    nk = n if n_keys is None else n_keys
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__} ({offset!r})")
    D = torch.zeros(n, nk)
    pos = _query_positions(n, nk)
    j = pos - offset
    ok = (j >= 0) & (j < nk)
    D[torch.arange(n)[ok], j[ok]] = 1.0
    return D, pos >= first_row


def _padding(padding_mask, pattern: torch.Tensor) -> torch.Tensor | None:
    """(B, Nk) bool real-token mask → (B, 1, Nk) aligned with pattern (…, B, H, Nq, Nk)."""
    if padding_mask is None:
        return None
    check_tensor("padding_mask", padding_mask, 2)
    B, nk = padding_mask.shape
    if pattern.ndim < 4 or pattern.shape[-4] != B or nk != pattern.shape[-1]:
        raise ValueError(f"padding_mask {tuple(padding_mask.shape)} must be (B, Nk) for "
                         f"patterns (…, B, H, Nq, Nk), got pattern {tuple(pattern.shape)}")
    if padding_mask.dtype != torch.bool:
        padding_mask = padding_mask != 0
    return padding_mask.to(pattern.device)[:, None, :]  # (B, 1, Nk)


def _weights(rows: torch.Tensor, pad: torch.Tensor | None, nq: int) -> torch.Tensor:
    """Scored-row weights (Nq,) or (B, 1, Nq): `rows` and, with padding, real queries."""
    w = rows.float()
    return w if pad is None else w * pad[..., -nq:].float()


def score(pattern: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, rule: str = "mass",
          *, exclude_bos: bool = False, exclude_current: bool = False, causal: bool = True,
          padding_mask: torch.Tensor | None = None, pool_batch: bool = False) -> torch.Tensor:
    """Score patterns (…, Nq, Nk) against a target (Nq, Nk) or per sequence (B, 1, Nq, Nk)
    on the query rows where `rows` ((Nq,) or (B, 1, Nq)) is True; one score per leading
    index (…), e.g. (L, B, H), averaged over the scored rows.

    `pool_batch` (needs B, i.e. patterns (…, B, H, Nq, Nk)): pool the rows of all
    sequences, giving (…, H). Without it, every sequence needs a scored row.
    """
    check_pattern(pattern, causal)
    check_rule(rule)
    nq, nk = pattern.shape[-2:]
    if target.shape[-2:] != (nq, nk) or rows.shape[-1] != nq:
        raise ValueError(f"target {tuple(target.shape)} / rows {tuple(rows.shape)} must end "
                         f"in ({nq}, {nk}) / ({nq},)")
    if pool_batch and pattern.ndim < 4:
        raise ValueError(f"pool_batch needs patterns (…, B, H, Nq, Nk), got shape "
                         f"{tuple(pattern.shape)}")
    pad = _padding(padding_mask, pattern)
    P = pattern.float()  # (…, Nq, Nk)
    D = target.to(P.device, P.dtype)
    if pad is not None:
        D = D * pad[..., None, :].float()  # padded keys are never targets
    w = _weights(rows.to(P.device), pad, nq)  # (Nq,) or (B, 1, Nq)
    if rule != "mass":
        keep = torch.ones(nq, nk, device=P.device)
        if exclude_bos:
            keep[:, 0] = 0
        if exclude_current:
            keep[torch.arange(nq), _query_positions(nq, nk)] = 0
        P, D = P * keep, D * keep
    if rule == "mass":
        num, den = ((P * D).sum(-1) * w).sum(-1), w.sum(-1).expand(P.shape[:-2])
    elif rule == "mul":
        num, den = ((P * D).sum(-1) * w).sum(-1), (P.sum(-1) * w).sum(-1)
    else:
        num, den = ((1.0 - (P - D).abs().sum(-1)) * w).sum(-1), w.sum(-1).expand(P.shape[:-2])
    if pool_batch:
        num, den = num.sum(-2), den.sum(-2)  # (…, H)
    rows_scored = w.sum(-1)
    if not bool((rows_scored > 0).any()):
        raise ValueError(f"no query row is scored (sequence length {nk} too short, or no "
                         "row has a target, for this detector)")
    if not pool_batch and not bool((rows_scored > 0).all()):
        raise ValueError("some sequences have no scored row (no target in them); pass "
                         "pool_batch=True to pool rows over the batch")
    return num / den.clamp_min(1e-30)


def offset_score(pattern: torch.Tensor, offset: int, rule: str = "mass", *,
                 target_rows_only: bool = False, padding_mask: torch.Tensor | None = None,
                 **kw) -> torch.Tensor:
    """Attention from query i to key i − offset (offset 1: previous token, −1: next token).

    All rows are scored unless `target_rows_only` (then only rows whose key i − offset
    exists and is not padding, so an ideal head scores 1).
    """
    nq, nk = check_pattern(pattern, False).shape[-2:]
    D, rows = offset_target(nq, offset, n_keys=nk)
    if target_rows_only:
        has = D if padding_mask is None else D * _padding(padding_mask, pattern)[..., None, :]
        rows = rows & (has.sum(-1) > 0)  # (Nq,) or (B, 1, Nq)
    return score(pattern, D, rows, rule, padding_mask=padding_mask, **kw)


def previous_token_score(pattern: torch.Tensor, rule: str = "mass", **kw) -> torch.Tensor:
    """Attention to key i − 1; all rows scored (row 0 has no target) unless target_rows_only."""
    return offset_score(pattern, 1, rule, **kw)


def next_token_score(pattern: torch.Tensor, rule: str = "mass", **kw) -> torch.Tensor:
    """Attention to key i + 1 (bidirectional models: pass causal=False)."""
    return offset_score(pattern, -1, rule, **kw)


def _period(period: int, n: int) -> int:
    check_positive_int("period", period)
    if 2 * period > n:
        raise ValueError(f"period ({period}) must be <= half the sequence length ({n}): the "
                         "detector needs at least one full repeat")
    return period


def _copy_target(pattern: torch.Tensor, tokens: torch.Tensor,
                 shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence target (B, 1, Nq, Nk): key j + shift where j < p_i holds query i's token
    (shift 0: duplicate-token, 1: induction); rows (B, 1, Nq) that have a target."""
    check_tensor("tokens", tokens, 2)
    nq, nk = pattern.shape[-2:]
    if pattern.ndim < 4 or tuple(tokens.shape) != (pattern.shape[-4], nk):
        raise ValueError(f"tokens {tuple(tokens.shape)} must be (B, Nk) for patterns "
                         f"(…, B, H, Nq, Nk), got pattern {tuple(pattern.shape)}")
    t = tokens.to(pattern.device)
    pos = _query_positions(nq, nk).to(pattern.device)
    same = t[:, pos, None] == t[:, None, :]  # (B, Nq, Nk): key j holds query i's token
    earlier = torch.arange(nk, device=t.device)[None, :] < pos[:, None]  # (Nq, Nk)
    D = (same & earlier).float()
    if shift:
        D = torch.nn.functional.pad(D, (shift, 0))[..., :nk]  # key j → j + shift
    return D[:, None], D[:, None].sum(-1) > 0  # (B, 1, Nq, Nk), (B, 1, Nq)


def _repeat_detector(pattern, period, tokens, shift: int, rule: str, kw) -> torch.Tensor:
    if (period is None) == (tokens is None):
        raise ValueError("pass exactly one of period (a repeated random sequence) or "
                         "tokens (B, N) ids of natural text")
    if tokens is not None:
        D, _ = _copy_target(check_pattern(pattern, False), tokens, shift)
        pad = _padding(kw.get("padding_mask"), pattern)
        if pad is not None:
            D = D * pad[..., None, :].float()  # a copy in the padding is no target
        return score(pattern, D, D.sum(-1) > 0, rule, **kw)
    nq, nk = check_pattern(pattern, False).shape[-2:]
    p = _period(period, nk)
    D, rows = offset_target(nq, p - shift, first_row=p, n_keys=nk)
    return score(pattern, D, rows, rule, **kw)


def induction_score(pattern: torch.Tensor, period: int | None = None, rule: str = "mass", *,
                    tokens: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """Attention to the token after the previous occurrence of the current token: i − T + 1
    for rows i ≥ T of a sequence repeating with `period` T, or from `tokens`."""
    return _repeat_detector(pattern, period, tokens, 1, rule, kw)


def duplicate_token_score(pattern: torch.Tensor, period: int | None = None,
                          rule: str = "mass", *, tokens: torch.Tensor | None = None,
                          **kw) -> torch.Tensor:
    """Attention to earlier copies of the current token (i − T with `period`, or every
    earlier copy in `tokens`; rows without one are not scored)."""
    return _repeat_detector(pattern, period, tokens, 0, rule, kw)


def _key_set(keys, pattern: torch.Tensor) -> torch.Tensor:
    """Sink keys as a bool mask (Nk,) or (B, 1, Nk): ints, or a bool tensor (Nk,) / (B, Nk)."""
    nk = pattern.shape[-1]
    if isinstance(keys, torch.Tensor) and keys.dtype == torch.bool:
        if keys.shape == (nk,):
            return keys.to(pattern.device)
        if keys.ndim == 2 and keys.shape[1] == nk and pattern.ndim >= 4 \
                and keys.shape[0] == pattern.shape[-4]:
            return keys.to(pattern.device)[:, None, :]
        raise ValueError(f"keys mask {tuple(keys.shape)} must be ({nk},) or (B, {nk}) for "
                         f"pattern {tuple(pattern.shape)}")
    idx = [int(k) for k in (keys.tolist() if isinstance(keys, torch.Tensor) else keys)]
    if not idx or any(not 0 <= k < nk for k in idx):
        raise ValueError(f"keys ({idx}) must be a non-empty set of key positions in [0, {nk})")
    m = torch.zeros(nk, dtype=torch.bool, device=pattern.device)
    m[idx] = True
    return m


def sink_score(pattern: torch.Tensor, rule: str = "mass", *,
               keys: Sequence[int] | torch.Tensor = (0,), **kw) -> torch.Tensor:
    """Attention mass on the sink `keys` from every query that is not itself a sink key.

    Default key 0 from rows 1..N−1 (row 0 can only read key 0 under a causal mask).
    `keys` may be positions or a bool mask (Nk,) / (B, Nk) (e.g. where each sequence's
    [SEP] sits).
    """
    nq, nk = check_pattern(pattern, False).shape[-2:]
    if nk < 2:
        raise ValueError(f"sink_score needs at least 2 positions, got {nk}")
    m = _key_set(keys, pattern)  # (Nk,) or (B, 1, Nk)
    D = m[..., None, :].float().expand(*m.shape[:-1], nq, nk)  # (…, Nq, Nk)
    rows = ~m[..., nk - nq:]  # (Nq,) or (B, 1, Nq): queries that are not sinks
    return score(pattern, D, rows, rule, **kw)


def head_table(patterns: torch.Tensor, period: int | None = None, rule: str = "mass",
               causal: bool = True, *, padding_mask: torch.Tensor | None = None,
               tokens: torch.Tensor | None = None, sinks: dict | None = None,
               target_rows_only: bool = False) -> dict[str, torch.Tensor]:
    """Scores per (layer, head) of patterns (L, B, H, N, N), or per head of (B, H, N, N),
    rows pooled over the batch: {name: (L, H) or (H,)}.

    Always "previous" and the sinks (`sinks` {name: keys}, default {"sink": (0,)});
    "next" when not `causal`; "duplicate" with a `period` or `tokens`; "induction" with a
    `period` (a repeated random sequence) or `tokens`.
    """
    check_tensor("patterns", patterns)
    if patterns.ndim not in (4, 5):
        raise ValueError(f"patterns must be (L, B, H, N, N) or (B, H, N, N), got shape "
                         f"{tuple(patterns.shape)}")
    kw = {"causal": causal, "padding_mask": padding_mask, "pool_batch": True}
    off = dict(kw, target_rows_only=target_rows_only)
    out = {"previous": previous_token_score(patterns, rule, **off)}
    if not causal:
        out["next"] = next_token_score(patterns, rule, **off)
    if period is not None or tokens is not None:
        out["duplicate"] = duplicate_token_score(patterns, period, rule, tokens=tokens, **kw)
        out["induction"] = induction_score(patterns, period, rule, tokens=tokens, **kw)
    for name, keys in (sinks or {"sink": (0,)}).items():
        out[name] = sink_score(patterns, rule, keys=keys, **kw)
    return out


def top_heads(table: dict[str, torch.Tensor], k: int = 3,
              layers: Sequence[int] | None = None) -> dict[str, list[tuple[int, int, float]]]:
    """The k strongest (layer, head, score) per detector of a (L, H) `head_table`,
    optionally among `layers` only; NaN scores (no rows to score) are never ranked."""
    check_positive_int("k", k)
    out = {}
    for name, s in table.items():
        check_tensor(name, s, 2)
        allowed = torch.zeros(s.shape[0], dtype=torch.bool)
        allowed[list(range(s.shape[0])) if layers is None else list(layers)] = True
        allowed = allowed[:, None] & ~torch.isnan(s)  # (L, H)
        masked = s.float().masked_fill(~allowed, float("-inf")).flatten()
        vals, idx = masked.topk(min(k, int(allowed.sum())))
        out[name] = [(int(i) // s.shape[1], int(i) % s.shape[1], float(v))
                     for v, i in zip(vals, idx, strict=True)]
    return out
