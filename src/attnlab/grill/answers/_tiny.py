"""A small randomly initialised TinyLM for grill evidence."""
from __future__ import annotations

import torch

from ...layers.attention import AttentionSpec
from ...models.config import ModelConfig
from ...models.lm import TinyLM


def tiny_lm(seed: int = 0, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
            n_kv_heads: int = 2, vocab: int = 101, max_seq_len: int = 512,
            init_std: float = 0.1) -> TinyLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers,
                      mixers=AttentionSpec(n_heads=n_heads, n_kv_heads=n_kv_heads),
                      max_seq_len=max_seq_len, init_std=init_std)
    return TinyLM(cfg).eval()
