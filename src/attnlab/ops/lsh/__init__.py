"""Reformer LSH attention (Kitaev et al. 2020): chunked fast path and dense references."""
from .attention import lsh_attention
from .hashing import default_n_buckets, hash_buckets, random_rotations
from .reference import lsh_attention_reference, lsh_visible, shared_qk_attention

__all__ = ["default_n_buckets", "hash_buckets", "lsh_attention", "lsh_attention_reference",
           "lsh_visible", "random_rotations", "shared_qk_attention"]
