"""attnlab as a Hugging Face transformers attention backend (docs/conventions.md §9).

`register()` adds `"attnlab"` to transformers' `AttentionInterface` (the attention
function) and `AttentionMaskInterface` (the mask builder, `hf.masks.attnlab_mask`), so

    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attnlab")
    model.set_attn_implementation("attnlab")

send every attention call through `attnlab.attention`. The function receives q/k/v as
(B, H, N, D) (§1's layout, GQA as Hkv < Hq) and returns (B, N, H, Dv).

The mask is rebuilt as attnlab predicates from the numbers transformers knew (query and
key offsets, padding) and what the layer passes (`is_causal`, `sliding_window`,
`position_ids`), evaluated on absolute positions: query row i at `q_offset + i`, key slot
j at `kv_offset + j`, passed as `q_pos` / `kv_pos`. With a static cache the key length is
the capacity, so bottom-right alignment alone would misplace the queries; the explicit
offset does not. `attention_mask=None` means the layer's `is_causal` decides
(bidirectional for encoders such as BERT). Tensors transformers built itself (boolean or
additive float, FlexAttention `BlockMask`) are converted. Softcap (Gemma-2), learned sinks
(gpt-oss `s_aux`), `scaling` and additive `position_bias` pass through.

Packed documents: `position_ids` that restart inside a row (no padding mask, a prefill
from position 0) are packed sequences and become a `document` mask, exactly where
transformers reads them as such: when the model hands `position_ids` to its mask builder
and no cache object is passed (transformers then refuses to skip the mask, and the mask
builder records that). Without a mask from transformers at all, restarting `position_ids`
always mean packed documents.

Attention dropout is not supported (a ValueError when a training model asks for it).
"""
from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask

from ..ops.softmax import attention
from ..ops.softmax.score_mods import softcap as softcap_mod
from .masks import (
    HFMask,
    additive_to_bool,
    block_mask_to_bool,
    packed_documents,
    structural_mask,
)

NAME = "attnlab"


def _bias_mod(bias: torch.Tensor, q0: int, k0: int, prev=None):
    """score_mod adding `bias[b, h, q - q0, k - k0]` (an additive mask or T5 position bias
    given per local row/column) after `prev`."""

    def mod(score, b, h, q, k):
        if prev is not None:
            score = prev(score, b, h, q, k)
        bi = b if bias.shape[0] != 1 else torch.zeros_like(b)  # broadcast dims read row 0
        hi = h if bias.shape[1] != 1 else torch.zeros_like(h)
        return score + bias[bi, hi, q - q0, k - k0].to(score.dtype)

    return mod


def _mask_and_positions(attention_mask, *, is_causal, window, position_ids, B, Nq, Nk):
    """(mask, q_pos, kv_pos, bias) for attnlab from whatever transformers handed over."""
    if isinstance(attention_mask, HFMask):
        info = attention_mask.info
        if (info.q_length, info.kv_length) != (Nq, Nk):
            raise ValueError(
                f"attention_mask was built for (Nq, Nk) = ({info.q_length}, {info.kv_length}) but "
                f"the layer passes q length {Nq} and k length {Nk}; expected equal")
        if info.custom:  # extra predicates only the closure knows: use its dense form
            return attention_mask.dense(), None, None, None
        if window is None:
            window = info.local_size
        elif info.local_size is not None and info.local_size != window:
            raise ValueError(f"sliding_window ({window}) differs from the window the mask was "
                             f"built for ({info.local_size})")
        docs = None
        if (is_causal and info.may_pack and info.padding is None and info.q_offset == 0
                and Nq == Nk):
            docs = packed_documents(_rows(position_ids, B))
        mask = structural_mask(is_causal=is_causal, window=window, padding=info.padding,
                               doc_ids=docs)
        q_pos = torch.arange(Nq) + info.q_offset
        kv_pos = torch.arange(Nk) + info.kv_offset
        if info.kv_offset == 0 and info.q_offset == Nk - Nq:
            q_pos = kv_pos = None  # the default bottom-right placement: say so (fast paths)
        return mask, q_pos, kv_pos, None
    if attention_mask is None:
        docs = packed_documents(_rows(position_ids, B)) if is_causal and Nq == Nk else None
        mask = structural_mask(is_causal=is_causal, window=window, padding=None, doc_ids=docs)
        return mask, None, None, None
    if isinstance(attention_mask, BlockMask):
        return block_mask_to_bool(attention_mask, B, Nq, Nk), None, None, None
    if isinstance(attention_mask, torch.Tensor):
        m = attention_mask
        if m.ndim != 4 or m.shape[-2:] != (Nq, Nk):
            raise ValueError(f"attention_mask must have shape (B|1, H|1, Nq, Nk) with (Nq, Nk) = "
                             f"({Nq}, {Nk}), got {tuple(m.shape)}")
        if m.dtype == torch.bool:
            return m, None, None, None
        bool_mask, bias = additive_to_bool(m)
        return bool_mask, None, None, bias
    raise TypeError(f"attention_mask must be None, a tensor or a BlockMask, got "
                    f"{type(attention_mask).__name__}")


def _rows(position_ids, B: int):
    if position_ids is None or not isinstance(position_ids, torch.Tensor) or position_ids.ndim != 2:
        return None
    return position_ids.expand(B, -1) if position_ids.shape[0] == 1 else position_ids


def attnlab_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None,
                              sliding_window: int | None = None, softcap: float | None = None,
                              s_aux: torch.Tensor | None = None,
                              position_bias: torch.Tensor | None = None,
                              position_ids: torch.Tensor | None = None,
                              **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. query (B, Hq, Nq, D), key (B, Hkv, Nk, D),
    value (B, Hkv, Nk, Dv) -> ((B, Nq, Hq, Dv), None)."""
    if dropout and dropout > 0:
        raise ValueError(f"dropout ({dropout}) is not supported by the attnlab backend; "
                         "expected 0 (call model.eval() or set the attention dropout to 0)")
    B, _, Nq, _ = query.shape
    Nk = key.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask, q_pos, kv_pos, bias = _mask_and_positions(
        attention_mask, is_causal=bool(is_causal), window=sliding_window,
        position_ids=position_ids, B=B, Nq=Nq, Nk=Nk)
    score_mod = softcap_mod(float(softcap)) if softcap is not None else None
    q0 = Nk - Nq if q_pos is None else int(q_pos[0]) if Nq else 0
    k0 = 0 if kv_pos is None else int(kv_pos[0]) if Nk else 0
    for extra in (bias, position_bias):
        if extra is not None:
            score_mod = _bias_mod(extra, q0, k0, prev=score_mod)
    sink = s_aux.to(query.dtype) if s_aux is not None else None
    out = attention(query, key, value, mask=mask, scale=scaling, score_mod=score_mod, sink=sink,
                    q_pos=q_pos, kv_pos=kv_pos)  # (B, Hq, Nq, Dv)
    return out.transpose(1, 2).contiguous(), None  # (B, Nq, Hq, Dv)


def register(name: str = NAME) -> str:
    """Register the attention function and the mask builder with transformers under `name`
    (idempotent). Returns the name to pass as `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from .masks import attnlab_mask

    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    AttentionInterface.register(name, attnlab_attention_forward)
    AttentionMaskInterface.register(name, attnlab_mask)
    return name
