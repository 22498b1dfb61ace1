"""Attention over a paged KV pool read through block tables (vLLM PagedAttention)."""
from .attention import check_paged_inputs, paged_attention
from .reference import gather_sequence, paged_attention_reference

__all__ = ["paged_attention", "paged_attention_reference", "gather_sequence",
           "check_paged_inputs"]
