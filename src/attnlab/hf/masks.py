"""attnlab masks from what Hugging Face transformers passes (docs/conventions.md §2, §9).

transformers builds one mask per layer type with a function registered in its
`AttentionMaskInterface` (`sdpa_mask`, `eager_mask`, ...), called with the query/key
lengths, the cache's query offset and key offset, the 2-D padding mask and an opaque
predicate closure. attnlab registers `attnlab_mask`, which keeps the numbers and the padding
mask and returns an `HFMask`: a 4-D boolean tensor of shape (B, 1, Nq, Nk) that stores
nothing per entry (zero strides) but carries that description. The attention function
(`hf.backend`) then builds an attnlab `Mask` predicate from it plus what the layer passes
(`is_causal`, `sliding_window`, `position_ids`), so windows, padding and packed documents
reach the block-sparse executor as structure, never as an O(Nq·Nk) tensor.

Anything else that treats the `HFMask` as a tensor (slicing, arithmetic, printing) gets
the dense mask transformers itself would have built from its closure: correct everywhere,
fast where attnlab reads it. `.contiguous()` / `.clone()` / `.detach()` (which `generate()`
applies to precomputed static-cache masks) keep the description.

Also here: converting transformers' own mask objects (boolean or additive float tensors,
FlexAttention `BlockMask`s) for the attention function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import torch
from torch.utils._pytree import tree_map

from ..masks import Mask, and_masks, causal, document, sliding_window

Tensor = torch.Tensor


@dataclass(frozen=True)
class HFMaskInfo:
    """What transformers' mask builder knew: lengths, offsets, padding.

    Query row i sits at absolute position `q_offset + i`, key slot j at `kv_offset + j`
    (with a static cache the key length is the capacity; unwritten slots lie past the
    queries and causality hides them). `padding` is (B, ≥ kv_offset + kv_length) bool,
    True = a real token, indexed by absolute position; None = no padding mask was given.
    `local_size` is the window transformers built the mask for (None for full layers).
    `custom` marks masks with extra predicates (`or_mask_function` / `and_mask_function`)
    that only the dense closure describes. `may_pack` is False when transformers declared
    the mask plain (it allowed skipping it for `is_causal`), which it never does once it has
    found packed sequences in `position_ids`: packed documents are read only where
    transformers itself read them (models that pass `position_ids` to their mask builder,
    with no cache object).
    """

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int
    kv_offset: int
    padding: Tensor | None
    local_size: int | None
    custom: bool
    may_pack: bool


class HFMask(torch.Tensor):
    """A (B, 1, Nq, Nk) boolean mask that carries an `HFMaskInfo` instead of entries.

    Torch operations on it see `dense()`, the mask transformers' `sdpa_mask` builds from
    the same arguments; attnlab's attention function reads `info` and never materialises it.
    """

    info: HFMaskInfo
    _dense_fn: object

    @staticmethod
    def __new__(cls, info: HFMaskInfo, dense_fn, device="cpu") -> Self:
        shape = (info.batch_size, 1, info.q_length, info.kv_length)
        base = torch.ones((), dtype=torch.bool, device=device).expand(*shape)  # O(1) memory
        t = torch.Tensor._make_subclass(cls, base)
        t.info = info
        t._dense_fn = dense_fn
        return t

    def dense(self) -> Tensor:
        """The (B, 1, Nq, Nk) boolean mask transformers would have built."""
        return self._dense_fn()

    _KEEP = frozenset({Tensor.contiguous, Tensor.clone, Tensor.detach})
    _META = frozenset({Tensor.size, Tensor.dim, Tensor.stride, Tensor.numel, Tensor.element_size,
                       Tensor.is_contiguous})

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in cls._KEEP:
            return args[0]
        if func in cls._META or getattr(func, "__name__", "") == "__get__":  # shape, dtype...
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)

        def plain(a):
            return a.dense() if isinstance(a, HFMask) else a

        args, kwargs = tree_map(plain, args), tree_map(plain, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def attnlab_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                 mask_function=None, attention_mask: Tensor | None = None,
                 local_size: int | None = None, use_vmap: bool = False,
                 allow_is_causal_skip: bool = True, **kwargs) -> HFMask:
    """The `AttentionMaskInterface` entry registered as "attnlab" (same signature as
    transformers' `sdpa_mask`). Returns an `HFMask`; never None, so padding always reaches
    the attention function."""
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    mask_function = causal_mask_function if mask_function is None else mask_function
    q_offset = int(q_offset)  # a static cache hands a 0-d tensor
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is not None:  # predicates run on CPU position tensors (masks.layout)
        padding = padding.to(device="cpu", dtype=torch.bool)
    info = HFMaskInfo(batch_size, q_length, kv_length, q_offset, int(kv_offset), padding,
                      local_size, bool(use_vmap), not allow_is_causal_skip)
    device = kwargs.get("device", "cpu")

    def dense():
        m = sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                      q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                      attention_mask=attention_mask, allow_is_causal_skip=False,
                      use_vmap=use_vmap, device=device)
        return m.expand(batch_size, 1, q_length, kv_length)

    return HFMask(info, dense, device)


# ---- attnlab predicates for what HF describes ------------------------------------------

def key_padding(padding: Tensor) -> Mask:
    """Keys whose `padding[b, position]` is False are hidden from every query of row b."""
    if padding.ndim != 2 or padding.dtype != torch.bool:
        raise ValueError(f"padding must be a (B, N) bool tensor, got {tuple(padding.shape)} "
                         f"{padding.dtype}")
    n = padding.shape[1]

    def fn(b, h, q, k):
        if k.numel() and int(k.max()) >= n:
            raise ValueError(f"padding mask covers {n} positions but key position "
                             f"{int(k.max())} was evaluated")
        return padding[b, k]

    return Mask(fn, "key_padding", uses_batch=True)


def bidirectional_window(window: int) -> Mask:
    """Symmetric band |i - j| <= window: transformers' bidirectional sliding-window overlay
    (note: `window` keys on EACH side, unlike the causal window of conventions §2)."""
    return Mask(lambda b, h, q, k: (q - k).abs() <= window, f"bidirectional_window({window})",
                kv_bounds=lambda qp, nk: (qp - window, qp + window + 1))


def packed_documents(position_ids: Tensor | None) -> Tensor | None:
    """Document ids (B, N) when `position_ids` restart inside a row (packed sequences: a new
    document wherever the position does not step by +1), else None. transformers'
    `find_packed_sequence_indices` rule."""
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[1] < 2:
        return None
    position_ids = position_ids.cpu()  # predicates run on CPU position tensors
    step = torch.diff(position_ids, dim=-1)  # (B, N-1)
    if bool((step == 1).all()):
        return None
    starts = torch.cat([torch.zeros_like(position_ids[:, :1]), (step != 1).long()], dim=-1)
    return starts.cumsum(-1)  # (B, N)


def structural_mask(*, is_causal: bool, window: int | None, padding: Tensor | None,
                    doc_ids: Tensor | None) -> Mask | None:
    """causal, & window, & key padding, & documents (absolute positions); None when every
    query sees every key (bidirectional, no window, no padding)."""
    parts = []
    if is_causal:
        parts.append(sliding_window(window) if window is not None else causal())
    elif window is not None:
        parts.append(bidirectional_window(window))
    if padding is not None and not bool(padding.all()):
        parts.append(key_padding(padding))
    if doc_ids is not None:
        parts.append(document(doc_ids))
    return and_masks(*parts) if len(parts) > 1 else (parts[0] if parts else None)


# ---- transformers' own mask objects ----------------------------------------------------

def additive_to_bool(mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """An additive float mask (0 = attend, -inf or a large negative = masked) as
    (bool mask, remaining bias or None). Entries at or below half the dtype's most negative
    value count as masked (transformers fills with `finfo(dtype).min`); any other nonzero
    entry is a score bias, returned separately so it is added, not dropped."""
    if not mask.dtype.is_floating_point:
        raise TypeError(f"additive mask must be floating point, got {mask.dtype}")
    masked = mask <= torch.finfo(mask.dtype).min / 2  # includes -inf
    if bool(torch.isnan(mask).any()):
        raise ValueError("attention_mask (additive float mask) contains NaN")
    bias = torch.where(masked, torch.zeros_like(mask), mask)
    return ~masked, (bias if bool((bias != 0).any()) else None)


def block_mask_to_bool(block_mask, batch: int, nq: int, nk: int) -> Tensor:
    """A FlexAttention `BlockMask` as a dense (B, 1|H, Nq, Nk) bool mask, by evaluating its
    `mask_mod` on index grids (rows and columns are local indices, FlexAttention's rule)."""
    mod = block_mask.mask_mod
    b = torch.arange(batch).view(-1, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    q = torch.arange(nq).view(1, 1, -1, 1)
    k = torch.arange(nk).view(1, 1, 1, -1)
    out = mod(b, h, q, k)
    return torch.as_tensor(out, dtype=torch.bool).expand(batch, 1, nq, nk)
