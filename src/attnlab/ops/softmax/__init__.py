"""Softmax attention: the exact reference, merge, score modifiers, and the fast exact paths
(tiled FlashAttention-2, block-sparse executor, split-KV decoding) behind `attention()`."""
from .merge import merge, merge_many
from .reference import attention_reference, repeat_kv
from .score_mods import alibi, alibi_slopes, softcap

__all__ = [
           "alibi",
           "alibi_slopes",
           "attention_reference",
           "merge",
           "merge_many",
           "repeat_kv",
           "softcap",
]
from .backends import Backend
from .block_sparse import block_sparse_attention
from .decode import decode_attention
from .dispatch import BACKENDS, attention, register_backend
from .flash import flash_attention

__all__ += [
           "BACKENDS",
           "Backend",
           "attention",
           "block_sparse_attention",
           "decode_attention",
           "flash_attention",
           "register_backend",
]
