"""Softmax attention: the exact reference, merge, score modifiers, and the fast exact paths
(tiled FlashAttention-2, block-sparse executor, split-KV decoding) behind `attention()`."""
from .merge import merge, merge_many
from .reference import attention_reference, repeat_kv
from .score_mods import alibi, alibi_slopes, softcap

__all__ = ["attention_reference", "repeat_kv", "merge", "merge_many", "alibi",
           "alibi_slopes", "softcap"]
from .block_sparse import block_sparse_attention  # noqa: E402
from .decode import decode_attention  # noqa: E402
from .dispatch import BACKENDS, attention, register_backend  # noqa: E402
from .flash import flash_attention  # noqa: E402

__all__ += ["attention", "register_backend", "BACKENDS", "flash_attention",
            "block_sparse_attention", "decode_attention"]
