"""Attention over a paged KV pool read through block tables (vLLM PagedAttention)."""
from .attention import check_paged_inputs, paged_attention
from .decode import paged_decode
from .reference import gather_sequence, paged_attention_reference

__all__ = [
           "check_paged_inputs",
           "gather_sequence",
           "paged_attention",
           "paged_attention_reference",
           "paged_decode",
]
