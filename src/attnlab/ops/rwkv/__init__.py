"""RWKV WKV operators: RWKV-4 (scalar decay per channel) and RWKV-6 (matrix state)."""
from .implied import wkv4_matrix, wkv6_matrix
from .reference import wkv4_reference, wkv6_reference
from .wkv4 import WKV4State, wkv4
from .wkv6 import wkv6

__all__ = ["WKV4State", "wkv4", "wkv4_matrix", "wkv4_reference", "wkv6", "wkv6_matrix",
           "wkv6_reference"]
