"""Built-in tiny models of every mixer kind the engine serves (`attnlab generate --model`).

Each kind is a stack of mixer specs (`ModelConfig.mixers`); sizes scale with `d_model`
(4 query heads of d_model/4 dims). Hybrids follow the published patterns: three
sliding-window layers to one global layer (Gemma-2 alternates 1:1, Gemma-3 uses 5:1;
Mistral-style windows everywhere is the "window" kind), and an SSD (Mamba-2) layer next
to attention (Jamba/Zamba-style).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int
from ..layers.attention import AttentionSpec
from ..layers.linear_attention import LinearAttentionSpec
from ..layers.mla import MLASpec
from ..layers.rwkv import RWKVSpec
from ..layers.ssd import SSDSpec
from ..models.config import ModelConfig
from ..models.lm import TinyLM

MODEL_KINDS = ("mha", "gqa", "mqa", "window", "mla", "linear", "ssd", "rwkv",
               "hybrid-window", "hybrid-ssd")


def mixer_specs(kind: str, d_model: int = 64, window: int = 16) -> list:
    """The per-layer mixer specs of a built-in kind."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind ({kind!r}) must be one of {list(MODEL_KINDS)}")
    check_positive_int("d_model", d_model)
    check_positive_int("window", window)
    if d_model % 16:
        raise ValueError(f"d_model ({d_model}) must be a multiple of 16")
    gqa = AttentionSpec(n_heads=4, n_kv_heads=2)
    win = AttentionSpec(n_heads=4, n_kv_heads=2, window=window)
    ssd = SSDSpec(d_state=8, head_dim=16, chunk_size=8)
    hd = d_model // 4
    one = {
        "mha": AttentionSpec(n_heads=4),
        "gqa": gqa,
        "mqa": AttentionSpec(n_heads=4, n_kv_heads=1),
        "window": win,
        "mla": MLASpec(n_heads=4, kv_lora_rank=d_model // 2, qk_nope_head_dim=hd // 2,
                       qk_rope_head_dim=max(2, hd // 8) // 2 * 2, v_head_dim=hd // 2,
                       absorb=True),
        "linear": LinearAttentionSpec(n_heads=4),
        "ssd": ssd,
        "rwkv": RWKVSpec(n_heads=4, chunk_size=8),
    }
    if kind in one:
        return [one[kind]] * 2
    if kind == "hybrid-window":
        return [win, win, win, gqa]  # 3 local : 1 global
    return [ssd, win, gqa]  # hybrid-ssd


def serving_model(kind: str, *, d_model: int = 64, window: int = 16, vocab: int = 101,
                  max_seq_len: int = 512, seed: int = 0, init_std: float = 0.1,
                  dtype: torch.dtype = torch.float32) -> TinyLM:
    """A seeded TinyLM of the given kind, in eval mode."""
    specs = mixer_specs(kind, d_model, window)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=len(specs), mixers=specs,
                      max_seq_len=max_seq_len, init_std=init_std)
    return TinyLM(cfg).to(dtype).eval()
