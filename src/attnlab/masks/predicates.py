"""Mask predicates: `mask(b, h, q_idx, kv_idx) -> bool` (True = attend).

Like FlexAttention's `mask_mod`, a predicate is evaluated on broadcast index tensors, so
one object lowers to a dense mask and to a block layout (`masks.layout`). attnlab passes
**absolute positions**: with `Nq` queries and `Nk` keys, query row `i` is at position
`i + Nk - Nq` (bottom-right causal alignment, conventions §2). FlexAttention passes row indices
instead; to port a FlexAttention mask_mod with `Nq != Nk`, subtract the offset.

A predicate may carry `kv_bounds(q_pos) -> (lo, hi)`: keys outside `[lo, hi)` are known to
be masked, and `classify_blocks(q_pos, kv_pos, q_block, kv_block) -> (full, empty)`: an exact
per-block classification computed without evaluating the predicate on every entry (used by
`global_tokens`, whose rows and columns are what make a mask dense). Lowering uses both to
skip work; they never change the answer. `|` and `&` keep their operands in `parts`.

Structure is data the factories set, never parsed from `name` (a label for printing):
`key` is a hashable description of the pattern (factory and parameters, e.g.
`("sliding_window", 512)`; None for a user predicate), so an identical mask built afresh
shares memoised layouts and schedules; `is_causal` marks the plain causal pattern `q >= k`
and `window` the W of a sliding window.
"""
from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Sequence

import torch

from .._checks import check_positive_int
from .memo import Memo

Tensor = torch.Tensor
MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
BoundsFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]
ClassifyFn = Callable[[Tensor, Tensor, int, int], tuple[Tensor, Tensor]]


class Mask:
    """A composable attention mask predicate.

    Combine with `&`, `|`, `~` (or `and_masks` / `or_masks`). `uses_batch` /
    `uses_head` say whether the predicate reads `b` / `h` (then lowering needs `batch` /
    `heads`).
    """

    def __init__(self, fn: MaskFn, name: str, *, uses_batch: bool = False,
                 uses_head: bool = False, kv_bounds: BoundsFn | None = None,
                 classify_blocks: ClassifyFn | None = None, key: tuple | None = None,
                 is_causal: bool = False, window: int | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name
        self.uses_batch = uses_batch
        self.uses_head = uses_head
        self._kv_bounds = kv_bounds
        self.classify_blocks = classify_blocks
        self.parts: tuple[Mask, ...] = ()  # operands of `|` / `&` (empty for a leaf)
        self.op: str | None = None  # "|" or "&" when parts are set
        self.key = key  # structural identity (factory + parameters), None: this object only
        self.is_causal = is_causal  # exactly the plain causal pattern q >= k
        self.window = window  # W of a sliding window (0 <= q - k < W), else None
        self._layouts = Memo(max_entries=16)  # memo for masks without a key

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"Mask({self.name})"

    # ---- combinators -------------------------------------------------------------
    def __and__(self, other: Mask) -> Mask:
        return and_masks(self, other)

    def __or__(self, other: Mask) -> Mask:
        return or_masks(self, other)

    def __invert__(self) -> Mask:
        return Mask(lambda b, h, q, k: ~self.fn(b, h, q, k), f"~{self.name}",
                    uses_batch=self.uses_batch, uses_head=self.uses_head,
                    key=None if self.key is None else ("~", self.key))

    def kv_bounds(self, q_pos: Tensor, nk: int) -> tuple[Tensor, Tensor]:
        """Per query position, a key range `[lo, hi)` outside which every key is masked."""
        if self._kv_bounds is None:
            return torch.zeros_like(q_pos), torch.full_like(q_pos, nk)
        lo, hi = self._kv_bounds(q_pos, nk)
        return lo.clamp(0, nk), hi.clamp(0, nk)

    # ---- lowering (implemented in masks.layout; thin wrappers here) --------------
    def to_dense(self, nq: int, nk: int, **kw) -> Tensor:
        from .layout import to_dense

        return to_dense(self, nq, nk, **kw)

    def block_layout(self, nq: int, nk: int, q_block: int, kv_block: int | None = None, **kw):
        from .layout import block_layout

        return block_layout(self, nq, nk, q_block, kv_block, **kw)

    def describe(self, nq: int, nk: int | None = None, **kw) -> str:
        from .layout import describe

        return describe(self, nq, nk if nk is not None else nq, **kw)


def _check_masks(masks: Sequence[Mask]) -> None:
    if not masks:
        raise ValueError("masks must contain at least one Mask")
    for i, m in enumerate(masks):
        if not isinstance(m, Mask):
            raise TypeError(f"masks[{i}] must be a Mask, got {type(m).__name__}")


def _combine(masks: Sequence[Mask], op: str) -> Mask:
    """`op` "&" (attend where every mask attends; key bounds intersect) or "|" (attend
    where any mask attends; key bounds take the hull)."""
    _check_masks(masks)
    join = operator.and_ if op == "&" else operator.or_
    lo_of, hi_of = (torch.amax, torch.amin) if op == "&" else (torch.amin, torch.amax)

    def fn(b, h, q, k):
        out = masks[0].fn(b, h, q, k)
        for m in masks[1:]:
            out = join(out, m.fn(b, h, q, k))
        return out

    def bounds(q_pos, nk):
        los, his = zip(*(m.kv_bounds(q_pos, nk) for m in masks))
        return lo_of(torch.stack(los), 0), hi_of(torch.stack(his), 0)

    mask = Mask(fn, "(" + f" {op} ".join(m.name for m in masks) + ")",
                uses_batch=any(m.uses_batch for m in masks),
                uses_head=any(m.uses_head for m in masks), kv_bounds=bounds,
                key=None if any(m.key is None for m in masks)
                else (op, tuple(m.key for m in masks)))
    mask.parts, mask.op = tuple(masks), op
    return mask


def and_masks(*masks: Mask) -> Mask:
    """Attend where every mask attends; key bounds intersect."""
    return _combine(masks, "&")


def or_masks(*masks: Mask) -> Mask:
    """Attend where any mask attends; key bounds take the hull."""
    return _combine(masks, "|")


def _block_any_all(flags: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Per block of `flags` (N,) bool: (any, all) over its valid entries (ragged last)."""
    n_blocks = -(-flags.numel() // block)
    pad = n_blocks * block - flags.numel()
    any_b = torch.nn.functional.pad(flags, (0, pad), value=False).view(n_blocks, block).any(1)
    all_b = torch.nn.functional.pad(flags, (0, pad), value=True).view(n_blocks, block).all(1)
    return any_b, all_b


# ---- factories --------------------------------------------------------------------

def full() -> Mask:
    """Every query sees every key."""
    return Mask(lambda b, h, q, k: torch.ones_like(q - k, dtype=torch.bool), "full",
                key=("full",))


def causal() -> Mask:
    """Query at position i sees keys j <= i (bottom-right aligned, conventions §2)."""
    return Mask(lambda b, h, q, k: q >= k, "causal",
                kv_bounds=lambda qp, nk: (torch.zeros_like(qp), qp + 1), key=("causal",),
                is_causal=True)


def sliding_window(window: int) -> Mask:
    """Causal band: query i sees keys j with 0 <= i - j < W (W keys including itself).

    FlashAttention's `window_size=(W-1, 0)`; FlexAttention-style `q_idx - kv_idx <= W-1`.
    Mistral 7B uses W = 4096 (docs/sources.md, Mistral paper §2).
    """
    check_positive_int("window", window)
    return Mask(lambda b, h, q, k: (q >= k) & (q - k < window), f"sliding_window({window})",
                kv_bounds=lambda qp, nk: (qp - window + 1, qp + 1),
                key=("sliding_window", window), window=window)


def global_tokens(indices: Sequence[int] | Tensor, seq_len: int | None = None) -> Mask:
    """Longformer globals: positions in `indices` see every key and are seen by every query.

    Combine with a local pattern: `sliding_window(W) | global_tokens([0])`.
    """
    idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices)
    if idx.ndim != 1 or idx.numel() == 0:
        raise ValueError(f"indices must be a non-empty 1-D list of positions, got {idx.tolist()}")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if int(idx.min()) < 0:
        raise ValueError(f"indices must be >= 0, got {int(idx.min())}")
    if seq_len is not None and int(idx.max()) >= seq_len:
        raise ValueError(f"indices must be < seq_len ({seq_len}), got {int(idx.max())}")
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"indices must not repeat, got {idx.tolist()}")
    idx = idx.long()

    def fn(b, h, q, k):
        is_g_q = torch.isin(q, idx)
        is_g_k = torch.isin(k, idx)
        return is_g_q | is_g_k

    def classify(q_pos, kv_pos, q_block, kv_block):
        # a block is FULL when all its queries or all its keys are global, EMPTY when none
        # of either is; O(Nq + Nk) instead of O(Nq·Nk) predicate evaluations
        any_q, all_q = _block_any_all(torch.isin(q_pos, idx), q_block)
        any_k, all_k = _block_any_all(torch.isin(kv_pos, idx), kv_block)
        full = all_q[:, None] | all_k[None, :]  # (n_q_blocks, n_kv_blocks)
        empty = ~any_q[:, None] & ~any_k[None, :]
        return full, empty

    return Mask(fn, f"global_tokens({idx.tolist()})", classify_blocks=classify,
                key=("global_tokens", tuple(idx.tolist())))


def prefix_lm(prefix_len: int) -> Mask:
    """Prefix-LM: keys in the first `prefix_len` positions are visible to all queries,
    the rest causally (T5/UL2 prefix LM). Equals `causal() | (kv < prefix_len)`."""
    check_positive_int("prefix_len", prefix_len, minimum=0)
    return Mask(lambda b, h, q, k: (k < prefix_len) | (q >= k), f"prefix_lm({prefix_len})",
                kv_bounds=lambda qp, nk: (torch.zeros_like(qp),
                                          torch.maximum(qp + 1, torch.full_like(qp, prefix_len))),
                key=("prefix_lm", prefix_len))


def document(doc_ids: Tensor) -> Mask:
    """Packed sequences: attend only within the same document.

    `doc_ids` is `(N,)` or `(B, N)` giving the document of each absolute position; pair
    with `causal()` for packed causal training.
    """
    if not isinstance(doc_ids, Tensor):
        doc_ids = torch.as_tensor(doc_ids)
    if doc_ids.ndim not in (1, 2) or doc_ids.dtype.is_floating_point:
        raise ValueError(
            f"doc_ids must be an integer tensor of shape (N,) or (B, N), got {tuple(doc_ids.shape)} "
            f"{doc_ids.dtype}")
    ids = doc_ids.long().cpu()
    n = ids.shape[-1]

    def fn(b, h, q, k):
        if q.numel() and k.numel() and (int(q.max()) >= n or int(k.max()) >= n):
            raise ValueError(f"document mask covers {n} positions but was evaluated beyond it")
        # a negative position (a query before the keys under bottom-right alignment, or a
        # negative q_pos) belongs to no document: it sees nothing and nothing sees it
        inside = (q >= 0) & (k >= 0)
        qc, kc = q.clamp(min=0), k.clamp(min=0)
        same = ids[qc] == ids[kc] if ids.ndim == 1 else ids[b, qc] == ids[b, kc]
        return same & inside

    digest = hashlib.sha1(ids.numpy().tobytes()).hexdigest()
    return Mask(fn, "document", uses_batch=ids.ndim == 2,
                key=("document", tuple(ids.shape), digest))
