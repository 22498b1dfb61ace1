"""Softmax attention: the exact reference, merge, score modifiers (fast paths join here)."""
from .merge import merge, merge_many
from .reference import attention_reference, repeat_kv
from .score_mods import alibi, alibi_slopes, softcap

__all__ = ["attention_reference", "repeat_kv", "merge", "merge_many", "alibi",
           "alibi_slopes", "softcap"]
from .dispatch import BACKENDS, attention, register_backend  # noqa: E402

__all__ += ["attention", "register_backend", "BACKENDS"]
